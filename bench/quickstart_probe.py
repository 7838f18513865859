"""What can be read from the quickstart's vision features: held-out probes, one per attribute.

The quickstart's captions must state six attributes of each clip. This script asks, for each
attribute, how well a small supervised reader trained on the same 400 training clips can recover
it from the frozen vision features the captioner is given, on the held-out test clips, for two
towers of the quickstart's architecture (vcap/recipes/configs/quickstart-2-lora.yaml): the tower at its random
initial weights, and the tower after the quickstart's caption-word pre-training (the run's
vision/vision.safetensors). The reader is stronger than what the projector + LoRA learn in the
quickstart (a per-token MLP, one transformer layer over all the video's tokens, mean pool,
linear; 30 epochs), so it bounds what the captioner can state. Next to it, for shape, a
three-layer CNN trained on the frames' pixels (same clips, same frames) shows whether the
information is in the video at all.

    .venv/bin/python bench/quickstart_probe.py [--run runs/quickstart] [--epochs 30]

--run is a folder `vcap quickstart` has written (its data/ and vision/ are read).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/quickstart", help="a `vcap quickstart` output folder (default runs/quickstart)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import dataclasses

    import torch

    from vcap.recipes.quickstart import configs_dir, stage_config

    torch.set_num_threads(args.threads)
    run = Path(args.run)
    cfg = stage_config(configs_dir() / "quickstart-2-lora.yaml", run).model
    if not (run / "data" / "test.jsonl").exists() or not Path(cfg.vision_weights).exists():
        sys.exit(f"{run}: no quickstart data or pre-trained tower here; run `vcap quickstart --out {run}` first")
    frames_tr, labels_tr, _ = load_split(run / "data" / "train.jsonl", cfg.frames)
    frames_te, labels_te, unseen = load_split(run / "data" / "test.jsonl", cfg.frames)
    towers = {"random tower": dataclasses.replace(cfg, vision_weights=None), "pre-trained tower": cfg}
    features = {name: (encode(frames_tr, tower), encode(frames_te, tower)) for name, tower in towers.items()}
    shapes = {name: tuple(test.shape) for name, (_, test) in features.items()}
    print(f"test features (clips, frames, tokens, width): {shapes}")
    pixels_tr, pixels_te = (torch.from_numpy(f).permute(0, 1, 4, 2, 3).float() / 255 - 0.5 for f in (frames_tr, frames_te))
    columns = " | ".join(f"{name}: test | seen | unseen" for name in towers)
    print(f"\n| attribute | chance | {columns} | CNN on pixels: test |")
    print("|---|---|" + "---|---|---|" * len(towers) + "---|")
    for name in labels_tr:
        values = sorted(set(labels_tr[name]) | set(labels_te[name]))
        y_tr = torch.tensor([values.index(v) for v in labels_tr[name]])
        y_te = torch.tensor([values.index(v) for v in labels_te[name]])
        cells = []
        for feats_tr, feats_te in features.values():
            ok = probe_features(feats_tr, y_tr, feats_te, y_te, len(values), args.epochs)
            cells.append(f"{ok.mean():.0%} | {ok[~unseen].mean():.0%} | {ok[unseen].mean():.0%}")
        cnn = f"{probe_pixels(pixels_tr, y_tr, pixels_te, y_te, len(values)):.0%}" if name == "shape" else ""
        print(f"| {name} | {1 / len(values):.0%} | {' | '.join(cells)} | {cnn} |", flush=True)


def load_split(manifest: Path, frames_cfg):
    """The frames (clips, T, S, S, 3) uint8, sampled as the captioner samples them, the attribute
    labels, and which clips show a combination training never shows."""
    import dataclasses

    import numpy as np
    import torch

    from vcap.data import read_manifest
    from vcap.recipes.synthetic import ClipAttributes
    from vcap.processor import read_options
    from vcap.video import read_frames

    samples = [s for s in read_manifest(manifest) if s.lang == "en"]
    started = time.perf_counter()
    frames = np.stack([read_frames(s.video, **read_options(frames_cfg)).frames for s in samples])
    print(f"{manifest.name}: {len(samples)} clips read in {time.perf_counter() - started:.1f} s")
    labels = {f.name: [str(s.extra["attributes"][f.name]) for s in samples] for f in dataclasses.fields(ClipAttributes)}
    unseen = torch.tensor([bool(s.extra.get("unseen_combination")) for s in samples])
    return frames, labels, unseen


def encode(frames, model_cfg):
    """The frozen tower's tokens (clips, T, P, Dv) for uint8 frames (clips, T, S, S, 3)."""
    import torch

    from vcap.vision import VisionEncoder

    encoder = VisionEncoder(model_cfg.vision)
    if model_cfg.vision_weights:
        encoder.load_weights(model_cfg.vision_weights)
    with torch.no_grad():
        return encoder.encode_frames(torch.from_numpy(frames))


def probe_features(x_tr, y_tr, x_te, y_te, classes: int, epochs: int):
    """Per-token MLP, one transformer layer over the video's T*P tokens, mean pool, linear."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    mean, std = x_tr.mean(dim=(0, 1, 2)), x_tr.std(dim=(0, 1, 2)) + 1e-5
    B, T, P, Dv = x_tr.shape
    token = nn.Sequential(nn.Linear(Dv, 128), nn.GELU(), nn.Linear(128, 128))
    position = nn.Parameter(torch.zeros(T * P, 128))
    mix = nn.TransformerEncoderLayer(128, 4, 256, dropout=0.0, batch_first=True)
    head = nn.Linear(128, classes)
    params = [*token.parameters(), position, *mix.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)

    def reader(x):
        h = token((x - mean) / std).reshape(x.shape[0], T * P, 128) + position  # (B, T*P, 128)
        return head(mix(h).mean(dim=1))  # (B, classes)

    for _ in range(epochs):
        for batch in torch.randperm(B).split(32):
            loss = nn.functional.cross_entropy(reader(x_tr[batch]), y_tr[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return (reader(x_te).argmax(-1) == y_te).float()


def probe_pixels(frames_tr, y_tr, frames_te, y_te, classes: int, epochs: int = 6) -> float:
    """A three-layer CNN on single frames (each frame carries its clip's label); clip accuracy by mean logits."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    T = frames_tr.shape[1]
    x, y = frames_tr.flatten(0, 1), y_tr.repeat_interleave(T)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                        nn.Linear(64, classes))
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(y)).split(64):
            loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        logits = net(frames_te.flatten(0, 1)).reshape(len(y_te), T, classes).mean(dim=1)
    return (logits.argmax(-1) == y_te).float().mean().item()


if __name__ == "__main__":
    main()
