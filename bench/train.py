"""LoRA training speed and memory: this project vs transformers' Qwen3ForCausalLM + peft, one run.

Both train the quickstart's LoRA stage on the same batches: the "mini" Qwen3 (4 layers, 128 wide,
the real 151,936-token vocabulary; the same random weights on both sides, via save/load), LoRA
r=32 on q,k,v,o,gate,up,down_proj, and the mlp2x_gelu projector, on synthetic clips whose vision
features are computed once. Each side runs in its own fresh process (so peak memory is its own):
- vcap: ``VideoCaptioner.forward`` (logits only where there is a target token);
- transformers: the same projector and splice, then ``Qwen3ForCausalLM(inputs_embeds=..., labels=...)``
  with peft's ``get_peft_model``.
Reports samples/s over the timed steps and the peak resident memory during training above the
process's memory after building the model (VmHWM reset through /proc/self/clear_refs), and the ratios.

    .venv/bin/python bench/train.py [--steps 10] [--batch-size 16] [--threads 2]

``--real``: the real shape, Qwen3-0.6B (random weights, bf16 base) with the mlp2x_gelu projector
from ViT-B-32 features (8 frames x 49 tokens of width 768, random: the tower is frozen and its
features cached in training), LoRA r=16 on the seven projections, batch 4, gradient checkpointing
and bf16 autocast on both sides; vcap's captioner is built by ``vcap.stages.build_for_training``,
as ``vcap train`` builds it.

    .venv/bin/python bench/train.py --real [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VISION = {"model_name": "ViT-B-32", "feature_layer": -1, "model_overrides": {
    "vision_cfg": {"width": 128, "layers": 1, "head_width": 32, "patch_size": 16, "image_size": 64},
    "text_cfg": {"width": 64, "heads": 2, "layers": 1}, "embed_dim": 32}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="timed steps (default 10; --real: 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 2; --real: 1)")
    parser.add_argument("--batch-size", type=int, help="samples per step (default 16; --real: 4)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--real", action="store_true", help="Qwen3-0.6B, batch 4, gradient checkpointing")
    parser.add_argument("--side", choices=["vcap", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    defaults = (3, 1, 4) if args.real else (10, 2, 16)
    args.steps, args.warmup, args.batch_size = (given if given is not None else default for given, default in
                                                zip((args.steps, args.warmup, args.batch_size), defaults))
    if args.side:
        print(json.dumps(measure(args)))
        return

    work = Path(tempfile.mkdtemp(prefix="vcap-bench-train-"))
    (prepare_real if args.real else prepare)(work, args)
    results = {}
    for side in ("vcap", "transformers"):
        out = subprocess.run([sys.executable, __file__, "--side", side, "--work", str(work), "--steps", str(args.steps),
                              "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
                              "--threads", str(args.threads)] + (["--real"] if args.real else []),
                             capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{side} failed:\n{out.stderr[-3000:]}")
        results[side] = json.loads(out.stdout.strip().splitlines()[-1])
    ours, theirs = results["vcap"], results["transformers"]
    if args.real:
        print(f"LoRA stage at the real shape: Qwen3-0.6B (bf16 base, random weights), {ours['tokens']} tokens per "
              f"sample ({REAL_FRAMES * 49} visual), LoRA r=16 on the seven projections, batch {args.batch_size}, "
              f"gradient checkpointing, bf16 autocast, {args.steps} timed steps after {args.warmup}, {args.threads} threads\n")
    else:
        print(f"LoRA stage, mini Qwen3 (4x128, vocab 151,936), batch {args.batch_size}, {args.steps} timed steps, "
              f"{args.threads} threads\n")
    print("| | samples/s | peak memory above the built model (MB) | first-step loss |")
    print("|---|---|---|---|")
    for name, r in (("vcap", ours), ("transformers + peft", theirs)):
        print(f"| {name} | {r['samples_per_s']:.3g} | {r['peak_mb']:.0f} | {r['first_loss']:.4f} |")
    print(f"| vcap / transformers | {ours['samples_per_s'] / theirs['samples_per_s']:.2f}x | "
          f"{ours['peak_mb'] / max(theirs['peak_mb'], 1e-9):.2f}x | |")


def prepare(work: Path, args) -> None:
    """Synthetic clips, their features, a saved language model both sides load."""
    import torch

    import vcap  # noqa: F401
    from qwen3_backbone import save_pretrained
    from vcap.config import CaptionerConfig
    from vcap.config_io import config_from_dict
    from vcap.data import read_manifest
    from vcap.features import FeatureCache, extract_features
    from vcap.builder import build_captioner
    from vcap.recipes.synthetic import make_dataset

    manifests = make_dataset(work / "data", n_train=args.batch_size * (args.steps + args.warmup) // 2, n_val=1,
                             n_test=1, size=64, num_frames=16, progress=False)
    torch.manual_seed(0)
    captioner = build_captioner(config_from_dict(CaptionerConfig, {"language_model": "preset:mini", "vision": VISION,
                                                                   "frames": {"num_frames": 4, "size": 64}}))
    save_pretrained(captioner.backbone, work / "lm")
    samples = read_manifest(manifests["train"])
    extract_features(captioner, [s.video for s in samples], FeatureCache(work / "cache", CACHE_KEY, torch.float32),
                     progress=False)


REAL_FRAMES = 8
CACHE_KEY = "bench"  # both sides read the same stored features
REAL_VISION = {"model_name": "ViT-B-32", "feature_layer": -2}


def prepare_real(work: Path, args) -> None:
    """Captions from synthetic clips, random ViT-B-32-shaped features, a random Qwen3-0.6B in bf16."""
    import torch

    import vcap  # noqa: F401
    from qwen3_backbone import Qwen3Config, Qwen3ForCausalLM, save_pretrained
    from vcap.data import read_manifest
    from vcap.features import FeatureCache
    from vcap.recipes.synthetic import make_dataset

    make_dataset(work / "data", n_train=args.batch_size * (args.steps + args.warmup), n_val=1, n_test=1, size=32,
                 num_frames=2, progress=False)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(Qwen3Config.from_name("Qwen3-0.6B"))
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    save_pretrained(model, work / "lm")
    cache = FeatureCache(work / "cache", CACHE_KEY, torch.float32)
    for sample in read_manifest(work / "data" / "train.jsonl"):
        cache.put(sample.video, torch.randn(REAL_FRAMES, 49, 768), [k * 0.5 for k in range(REAL_FRAMES)],
                  REAL_FRAMES * 0.5)


def real_captioner(work: Path, args):
    """The LoRA stage's captioner as `vcap train` builds it (bf16 frozen base, fp32 adapters)."""
    from vcap.config import RunConfig
    from vcap.config_io import config_from_dict
    from vcap.stages import build_for_training

    cfg = config_from_dict(RunConfig, {
        "model": {"language_model": str(work / "lm"), "vision": REAL_VISION, "dtype": "bfloat16",
                  "frames": {"num_frames": REAL_FRAMES, "size": 224}},
        "data": {"train": str(work / "data" / "train.jsonl")},
        "train": {"out_dir": str(work / "run"), "stage": "lora", "batch_size": args.batch_size, "precision": "bf16",
                  "gradient_checkpointing": True, "lora": {"r": 16, "alpha": 32, "dropout": 0.0}}})
    return build_for_training(cfg)


def measure(args) -> dict:
    import torch

    import vcap  # noqa: F401
    from vcap.config import CaptionerConfig
    from vcap.config_io import config_from_dict
    from vcap.data import CaptionDataset, collate, read_manifest
    from vcap.builder import build_captioner
    from vcap.features import FeatureCache

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    torch.manual_seed(0)  # the same projector initialisation on both sides
    if args.real and args.side == "vcap":
        captioner = real_captioner(work, args)
    else:
        captioner = build_captioner(config_from_dict(CaptionerConfig, {
            "language_model": str(work / "lm"), "vision": REAL_VISION if args.real else VISION,
            "frames": {"num_frames": REAL_FRAMES if args.real else 4, "size": 224 if args.real else 64},
            "dtype": "bfloat16" if args.real else "float32"}))
    samples = read_manifest(work / "data" / "train.jsonl")
    dataset = CaptionDataset(samples, FeatureCache(work / "cache", CACHE_KEY, torch.float32), captioner)
    projector = captioner.projector.train().requires_grad_(True)

    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=16 if args.real else 32, lora_alpha=32 if args.real else 64, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    if args.side == "vcap" and args.real:
        projector = captioner.projector
        model = captioner

        def loss_of(batch):
            return model(batch["video_features"], batch["input_ids"], batch["attention_mask"], batch["labels"])
    elif args.side == "vcap":
        captioner.requires_grad_(False)
        projector.requires_grad_(True)
        captioner.language_model = get_peft_model(captioner.language_model, lora)
        model = captioner.train()

        def loss_of(batch):
            return model(batch["video_features"], batch["input_ids"], batch["attention_mask"], batch["labels"])
    else:
        from transformers import Qwen3ForCausalLM

        lm = Qwen3ForCausalLM.from_pretrained(work / "lm", dtype=torch.bfloat16 if args.real else torch.float32)
        if args.real:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            projector.float()
        hf = get_peft_model(lm, lora).train()
        embed = hf.get_input_embeddings()

        def loss_of(batch):
            ids = batch["input_ids"]
            embeds = embed(ids)
            videos = [projector(f[None])[0] for f in batch["video_features"]]
            embeds = embeds.masked_scatter((ids == 151656)[..., None], torch.cat(videos))
            labels = torch.full_like(ids, -100)
            labels[:, 1:] = batch["labels"][:, :-1]  # transformers shifts labels itself
            return hf(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=labels).loss

    params = [p for p in list(projector.parameters()) + list(
        (captioner.language_model if args.side == "vcap" else hf).parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    base = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
        f.write("5")
    batches = [collate([dataset[i] for i in range(s, s + args.batch_size)], captioner.tokenizer.pad_id)
               for s in range(0, args.batch_size * (args.steps + args.warmup), args.batch_size)
               if s + args.batch_size <= len(dataset)]
    first_loss, start = None, None
    for step, batch in enumerate(batches):
        if step == args.warmup:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.real):
            loss = loss_of(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        first_loss = first_loss if first_loss is not None else float(loss)
    elapsed = time.perf_counter() - start
    timed = len(batches) - args.warmup
    return {"samples_per_s": timed * args.batch_size / elapsed, "peak_mb": _status_mb("VmHWM") - base, "first_loss": first_loss,
            "tokens": batches[0]["input_ids"].shape[1]}


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


if __name__ == "__main__":
    main()
