"""``vcap caption CAPTIONER_DIR INPUT... --out captions.jsonl``: caption folders of videos.

INPUT is any mix of video files, folders (searched recursively, symlink loops skipped), glob
patterns (quote them: ``'clips/**/*.mp4'``) and manifests (``.jsonl`` with a ``video`` key per
line). Videos are deduplicated by their real path and taken in a stable order (inputs in the
order given, each folder sorted).

How it runs: worker processes (``--workers``) decode and resize the sampled frames (or load the
vision features from ``--feature-cache``) ahead of the model, which encodes and captions them in
batches (``--batch-size``); the main process only runs the model and writes. With ``--segments``
every window of a video is its own unit of work, so memory depends on the batch size, never on
a video's length.

Output: one JSON object per video, appended and flushed as soon as its batch is done, so after a
crash or ``kill -9`` the file holds whole lines only. Rerunning the same command skips the videos
already done (same path, size, modification time, model files and settings), retries the failed
ones with ``--retry-failed``, and never writes a duplicate. ``--format csv`` keeps that JSON-lines
journal at OUT.journal.jsonl and writes the table to OUT. ``--segments SECONDS`` captions each
window of every video and writes SRT and WebVTT subtitles into OUT's folder (``<out stem>.subtitles/``).
``--dense`` asks the model for the video's timed events instead (the captioner's dense
instruction), puts them in the record (``events``, and ``unreadable_lines`` for lines that are not
events) and writes subtitles at the model's own times into the same folder.

OUT is written only if it is new or an earlier output of ``vcap caption``; any other file is left
untouched and the command stops (exit 2). Two runs on one OUT are refused: the second stops at
once, naming the first. A file name that is not valid UTF-8 is recorded with each undecodable
byte as a ``\\udcXX`` escape (``os.fsencode(record["path"])`` gives the bytes back). Names derived
from long video names (subtitles) are shortened with a hash.

Exit codes: 0 every video captioned; 1 some videos failed (their records say why); 2 usage error
(bad arguments, no videos found, captioner folder missing, an output vcap may not write); 130
interrupted by Ctrl-C (the batch in progress is finished and written first).

Several processes or GPUs: ``accelerate launch -m vcap caption ...`` gives each process every
N-th video; each writes OUT.part-RANK.jsonl and the first merges them into OUT in input order.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..cli import add_captioner_options, non_negative_int, open_captioner, positive_float, positive_int, probability
from ..errors import UsageError
from ..generation import GenerationOptions
from .discovery import VIDEO_EXTENSIONS, collect_videos
from .journal import BatchSettings
from .pipeline import BatchOptions, caption_videos, check_output
from .reading import start_workers

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("captioner", help="a captioner folder (from vcap export or make quickstart)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="video files, folders, glob patterns or .jsonl manifests")
    parser.add_argument("--out", required=True, help="output file (JSON lines; CSV with --format csv)")
    parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", dest="out_format")
    parser.add_argument("--ext", action="append", metavar="EXT",
                        help=f"video extensions to pick up in folders and globs (repeatable; default: {' '.join(VIDEO_EXTENSIONS)})")
    parser.add_argument("--lang", choices=["ko", "en"], default="ko", help="caption language (default ko)")
    parser.add_argument("--prompt", help="instruction instead of the captioner's default for the language")
    parser.add_argument("--thinking", action="store_true", help="let the model think first (Qwen3 thinking mode)")
    parser.add_argument("--thinking-budget", type=non_negative_int, metavar="TOKENS",
                        help="close the thinking after this many tokens")
    parser.add_argument("--sampling", choices=["greedy", "thinking", "non-thinking"], default="greedy",
                        help="decoding: greedy (default) or a Qwen3 sampling preset")
    parser.add_argument("--temperature", type=positive_float, help="sampling temperature (> 0)")
    parser.add_argument("--top-p", type=probability, help="nucleus sampling mass, in (0, 1]")
    parser.add_argument("--top-k", type=non_negative_int, help="sample among the k likeliest tokens (0: off)")
    parser.add_argument("--seed", type=int, help="random seed for sampling")
    parser.add_argument("--max-new-tokens", type=positive_int)
    parser.add_argument("--frames", type=positive_int, help="frames per video (default: the captioner's)")
    parser.add_argument("--strategy", choices=["uniform", "fps"])
    parser.add_argument("--fps", type=positive_float, help="frames per second for --strategy fps")
    parser.add_argument("--segments", type=positive_float, metavar="SECONDS",
                        help="caption each window of this many seconds; writes SRT and WebVTT files")
    parser.add_argument("--dense", action="store_true",
                        help="ask the model for the video's timed events (its dense instruction) and write them to "
                             "the record and, at the model's own times, to SRT and WebVTT files")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="videos (or windows) per model batch (default 4)")
    parser.add_argument("--workers", type=non_negative_int, default=2,
                        help="decoding worker processes; 0 decodes in the main process")
    add_captioner_options(parser)
    parser.add_argument("--feature-cache", help="a vision feature cache folder from vcap train, used where it has the video")
    parser.add_argument("--retry-failed", action="store_true", help="caption again the videos recorded as failed")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar, and no decoder log lines (failures are still reported)")


def run(args: argparse.Namespace) -> int:
    if args.strategy == "fps" and args.fps is None:
        raise UsageError("--strategy fps needs --fps (frames per second, > 0)")
    if args.dense and args.segments:
        raise UsageError("--dense and --segments exclude each other: --dense takes the times from the model, "
                         "--segments captions fixed windows")
    options = GenerationOptions(
        lang=args.lang, prompt=args.prompt, thinking=args.thinking, thinking_budget=args.thinking_budget,
        sampling=None if args.sampling == "greedy" else args.sampling, temperature=args.temperature,
        top_p=args.top_p, top_k=args.top_k, seed=args.seed, max_new_tokens=args.max_new_tokens, dense=args.dense)
    settings = BatchSettings(options, num_frames=args.frames, strategy=args.strategy, fps=args.fps,
                             segments=args.segments)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    batch = BatchOptions(batch_size=args.batch_size, workers=args.workers, retry_failed=args.retry_failed,
                         out_format=args.out_format, feature_cache=args.feature_cache, progress=not args.quiet,
                         quiet=args.quiet, rank=rank, world=world)
    videos = collect_videos(args.inputs, args.ext or VIDEO_EXTENSIONS)
    if not videos:
        raise UsageError(f"no videos found in {' '.join(args.inputs)}")
    check_output(Path(args.out), args.out_format)  # before the model loads: a refused output costs nothing
    pool = start_workers(args.workers, args.quiet) if args.workers > 0 else None  # they start while the model loads
    try:
        captioner = open_captioner(args)
        summary = caption_videos(captioner, videos, args.out, settings, batch, name=args.captioner, pool=pool)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    print(summary.line(), file=sys.stderr)
    if rank == 0:
        print(f"captions: {args.out}", file=sys.stderr)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if summary.failed or summary.failed_before else EXIT_OK
