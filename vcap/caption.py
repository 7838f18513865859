"""``vcap caption CAPTIONER_DIR INPUT... --out captions.jsonl``: caption folders of videos.

INPUT is any mix of video files, folders (searched recursively, symlink loops skipped), glob
patterns (quote them: ``'clips/**/*.mp4'``) and manifests (``.jsonl`` with a ``video`` key per
line). Videos are deduplicated by their real path and taken in a stable order (inputs in the
order given, each folder sorted).

How it runs: worker processes (``--workers``) decode and resize the sampled frames (or load the
vision features from ``--feature-cache``) ahead of the model, which encodes and captions them in
batches (``--batch-size``); the main process only runs the model and writes.

Output: one JSON object per video, appended and flushed as soon as its batch is done, so after a
crash or ``kill -9`` the file holds whole lines only. Rerunning the same command skips the videos
already done (same path, size, modification time, model and settings), retries the failed ones
with ``--retry-failed``, and never writes a duplicate. ``--format csv`` keeps that JSON-lines
journal at OUT.journal.jsonl and writes the table to OUT. ``--segments SECONDS`` captions each
window of every video and writes SRT and WebVTT subtitles into OUT's folder (``<out stem>.subtitles/``).

Exit codes: 0 every video captioned; 1 some videos failed (their records say why); 2 usage error
(bad arguments, no videos found, captioner folder missing); 130 interrupted by Ctrl-C (the batch
in progress is finished and written first).

Several processes or GPUs: ``accelerate launch -m vcap caption ...`` gives each process every
N-th video; each writes OUT.part-RANK.jsonl and the first merges them into OUT in input order.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import csv
import glob
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import write_jsonl, write_text

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# -- finding the videos ----------------------------------------------------------------------------

def collect_videos(inputs: Sequence[str], extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[Path]:
    """Files, folders (recursive), glob patterns and .jsonl manifests -> unique video paths, in order.

    A path named directly (or in a manifest) is kept whatever its extension, even if it does not
    exist (it is reported as failed); folder and glob matches are filtered by ``extensions``.
    """
    exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    found: list[Path] = []
    seen: set[str] = set()

    def add(path: Path) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            found.append(path)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for video in _walk(path, exts):
                add(video)
        elif path.suffix == ".jsonl" and path.is_file():
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    video = json.loads(line)["video"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ValueError(f"{path}:{number}: expected a JSON object with a 'video' key") from None
                add(Path(video) if os.path.isabs(video) else path.parent / video)
        elif glob.has_magic(item):
            for match in sorted(glob.glob(item, recursive=True)):
                if Path(match).is_file() and Path(match).suffix.lower() in exts:
                    add(Path(match))
        else:
            add(path)  # a file, or a missing path that becomes an error record
    return found


def _walk(root: Path, exts: tuple[str, ...]) -> Iterator[Path]:
    """Videos under ``root``, sorted, following symlinked folders once (loops skipped)."""
    visited: set[str] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in visited:
            continue
        visited.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        subfolders = []
        for entry in entries:
            try:
                if entry.is_dir():
                    subfolders.append(Path(entry.path))
                elif entry.is_file() and Path(entry.name).suffix.lower() in exts:
                    yield Path(entry.path)
            except OSError:
                continue
        stack.extend(reversed(subfolders))


# -- settings, identity, records -----------------------------------------------------------------------

@dataclass
class Settings:
    lang: str = "ko"
    prompt: str | None = None
    thinking: bool = False
    thinking_budget: int | None = None
    sampling: str | None = None  # None: greedy; or a preset name
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    max_new_tokens: int | None = None
    num_frames: int | None = None
    strategy: str | None = None
    fps: float | None = None
    segments: float | None = None  # seconds per captioned window

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:12]

    def sampling_overrides(self) -> dict[str, Any]:
        return {k: v for k, v in (("temperature", self.temperature), ("top_p", self.top_p), ("top_k", self.top_k))
                if v is not None}


def model_id(captioner_dir: str | os.PathLike) -> str:
    """The folder's name plus a hash of its files' names, sizes and modification times."""
    folder = Path(captioner_dir).resolve()
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return f"{folder.name}@{digest.hexdigest()[:12]}"


def file_identity(path: Path) -> tuple[int | None, int | None]:
    try:
        stat = path.stat()
        return stat.st_size, stat.st_mtime_ns
    except OSError:
        return None, None


def record_key(record: dict[str, Any]) -> tuple:
    return (record["path"], record.get("size"), record.get("mtime_ns"), record["model"], record["settings"])


# -- the journal: JSON lines, appended and flushed --------------------------------------------------------

class Journal:
    """Append-only JSONL with whole lines only: a torn last line (from a kill) is cut off on open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.records = self._read()
        self._file = open(path, "a", encoding="utf-8")

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records, whole = read_records(self.path, with_length=True)
        if whole != self.path.stat().st_size:
            with open(self.path, "r+b") as f:  # drop the torn tail
                f.truncate(whole)
        return records

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self._file.flush()
        os.fsync(self._file.fileno())

    def rewrite(self, records: Sequence[dict[str, Any]]) -> None:
        """Replace the whole file atomically (used to drop retried failures and to order the output)."""
        self._file.close()
        write_jsonl(self.path, records)
        self.records = list(records)
        self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        self._file.close()


def read_records(path: Path, with_length: bool = False):
    """The whole lines of a JSONL output (a torn last line is ignored)."""
    data = path.read_bytes() if path.exists() else b""
    whole = data[: data.rfind(b"\n") + 1]
    records = []
    for number, line in enumerate(whole.decode("utf-8").splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{number}: not a JSON line; is this a vcap caption output?") from None
    return (records, len(whole)) if with_length else records


# -- subtitles --------------------------------------------------------------------------------------------

def _timestamp(seconds: float, separator: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def to_srt(segments: Sequence[dict[str, Any]]) -> str:
    blocks = []
    for i, seg in enumerate(segments, 1):
        text = " ".join(seg["caption"].split()) or "..."
        blocks.append(f"{i}\n{_timestamp(seg['start'], ',')} --> {_timestamp(seg['end'], ',')}\n{text}\n")
    return "\n".join(blocks)


def to_vtt(segments: Sequence[dict[str, Any]]) -> str:
    blocks = ["WEBVTT\n"]
    for seg in segments:
        text = " ".join(seg["caption"].split()).replace("-->", "->") or "..."
        blocks.append(f"{_timestamp(seg['start'], '.')} --> {_timestamp(seg['end'], '.')}\n{text}\n")
    return "\n".join(blocks)


def subtitle_paths(out: Path, video: Path) -> tuple[Path, Path]:
    folder = out.parent / f"{out.stem}.subtitles"
    tag = hashlib.sha256(os.path.realpath(video).encode()).hexdigest()[:8]
    return folder / f"{video.stem}.{tag}.srt", folder / f"{video.stem}.{tag}.vtt"


# -- reading in worker processes ---------------------------------------------------------------------------

@dataclass
class Unit:
    """One thing to caption: a whole video, or one window of it."""

    frames: Any  # vcap.video.Frames
    features: Any = None  # cached vision features (T, P, Dv), or None
    window: tuple[float, float] | None = None


@dataclass
class ReadResult:
    index: int
    units: list[Unit] = field(default_factory=list)
    error: tuple[str, str] | None = None  # (type, message)
    seconds: float = 0.0
    duration: float = 0.0


def read_video(index: int, path: str, frames_cfg: dict[str, Any], segments: float | None,
               cache: tuple[str, str] | None) -> ReadResult:
    """Runs in a worker: sample (and resize) the frames of one video, or of each of its windows."""
    import numpy as np

    from .video import Frames, VideoReadError, probe, read_frames, sample_indices, segment_windows

    t0 = time.perf_counter()
    result = ReadResult(index)
    try:
        if segments:
            info = probe(path)
            for start, end in segment_windows(info.duration, segments):
                clip = read_frames(path, start=start, end=end, **frames_cfg)
                result.units.append(Unit(clip, window=(start, end)))
            result.duration = info.duration
        else:
            features = None
            if cache is not None:
                from .data import FeatureCache

                features = FeatureCache(cache[0], cache[1]).get(Path(path))
            if features is not None:  # no decoding: the frames' metadata from the header
                info = probe(path)
                indices = sample_indices(info, frames_cfg["num_frames"], frames_cfg["strategy"], frames_cfg["fps"],
                                         frames_cfg["max_frames"])
                clip = Frames(np.zeros((len(indices), 1, 1, 3), np.uint8), indices,
                              [i / info.fps for i in indices], info, "feature-cache", path)
                result.units.append(Unit(clip, features))
            else:
                clip = read_frames(path, **frames_cfg)
                result.units.append(Unit(clip))
            result.duration = result.units[0].frames.duration
    except VideoReadError as e:
        result.error = ("VideoReadError", e.reason)
        result.units = []
    except Exception as e:  # noqa: BLE001 - one bad video must never stop the run
        result.error = (type(e).__name__, str(e) or type(e).__name__)
        result.units = []
    result.seconds = time.perf_counter() - t0
    return result


# -- the run -----------------------------------------------------------------------------------------------

@dataclass
class Summary:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    failed_before: int = 0  # skipped videos whose earlier record is a failure
    seconds: float = 0.0
    interrupted: bool = False

    def line(self) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        before = f", {self.failed_before} of them failed (--retry-failed retries)" if self.failed_before else ""
        text = (f"done {self.done}, failed {self.failed}, skipped {self.skipped} (recorded earlier{before}), "
                f"{rate:.2f} videos/s over {self.seconds:.1f}s")
        return text + (" - interrupted" if self.interrupted else "")


def caption_videos(
    captioner,
    captioner_dir: str | os.PathLike,
    videos: Sequence[Path],
    out: str | os.PathLike,
    settings: Settings | None = None,
    batch_size: int = 4,
    workers: int = 2,
    retry_failed: bool = False,
    out_format: str = "jsonl",
    feature_cache: str | None = None,
    progress: bool = True,
    rank: int = 0,
    world: int = 1,
    pool: futures.ProcessPoolExecutor | None = None,
) -> Summary:
    """Caption ``videos`` (from :func:`collect_videos`) into ``out`` (resuming); see the module docstring.

    ``pool``: reading workers from :func:`start_workers`, started early so that they import while
    the model loads (the command does this); otherwise ``workers`` processes are started here."""
    from tqdm import tqdm

    settings = settings or Settings()
    out = Path(out)
    journal_path = out.with_name(out.name + ".journal.jsonl") if out_format == "csv" else out
    if world > 1:
        journal_path = out.with_name(f"{out.name}.part-{rank}.jsonl")
    videos = [Path(v) for v in videos]
    order = {os.path.abspath(v): i for i, v in enumerate(videos)}
    mine = videos[rank::world]
    mid = model_id(captioner_dir)
    settings_key = settings.key()

    journal = Journal(journal_path)
    if retry_failed:  # drop the failures to redo first, so a retried video never has two records
        kept = [r for r in journal.records if r.get("status") == "ok" or r.get("model") != mid
                or r.get("settings") != settings_key]
        if len(kept) != len(journal.records):
            journal.rewrite(kept)
    previous_records = journal.records
    if world > 1 and out.exists():  # the merged output of an earlier run counts as done too
        previous_records = read_records(out) + journal.records
    done = {record_key(r): r for r in previous_records if r.get("status") == "ok" or not retry_failed}

    todo: list[Path] = []
    summary = Summary()
    for video in mine:
        size, mtime = file_identity(video)
        earlier = done.get((os.path.abspath(video), size, mtime, mid, settings_key))
        if earlier is not None:
            summary.skipped += 1
            summary.failed_before += earlier.get("status") != "ok"
        else:
            todo.append(video)

    frames_cfg = captioner.config.frames
    frames = dict(num_frames=settings.num_frames or frames_cfg.num_frames, strategy=settings.strategy or frames_cfg.strategy,
                  fps=settings.fps or frames_cfg.fps, max_frames=frames_cfg.max_frames, size=frames_cfg.size,
                  backend=frames_cfg.backend)
    cache = None
    if feature_cache and not settings.segments and Path(feature_cache).is_dir() \
            and frames["num_frames"] == frames_cfg.num_frames and frames["strategy"] == frames_cfg.strategy:
        from .data import encoder_fingerprint

        cache = (str(feature_cache), encoder_fingerprint(captioner))

    interrupted = {"flag": False}

    def on_sigint(signum, frame):  # noqa: ARG001
        if interrupted["flag"]:
            raise KeyboardInterrupt
        interrupted["flag"] = True
        print("\ninterrupted: finishing the current batch (Ctrl-C again to stop now)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    bar = tqdm(total=len(todo), desc="caption", unit="video", disable=not progress, dynamic_ncols=True)
    started = time.perf_counter()
    own_pool = pool is None and workers > 0 and bool(todo)
    try:
        if own_pool:
            pool = start_workers(workers)
        for batch in _read_ahead(pool, todo, frames, settings.segments, cache, batch_size, interrupted):
            records = _caption_batch(captioner, batch, todo, settings, settings_key, mid, out)
            journal.append(records)
            journal.records.extend(records)
            for record in records:
                if record["status"] == "ok":
                    summary.done += 1
                else:
                    summary.failed += 1
                    if progress:
                        tqdm.write(f"failed: {record['path']}: {record['error']}", file=sys.stderr)
            bar.update(len(records))
            if interrupted["flag"]:
                summary.interrupted = True
                break
    finally:
        bar.close()
        if own_pool:
            pool.shutdown(wait=True, cancel_futures=True)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    summary.seconds = time.perf_counter() - started

    def position(record: dict[str, Any]) -> int:
        return order.get(record["path"], len(order))

    if world == 1:
        latest: dict[tuple, dict[str, Any]] = {}
        for record in journal.records:
            latest[(record["path"], record["model"], record["settings"])] = record  # a changed file's new record wins
        journal.rewrite(sorted(latest.values(), key=position))  # input order
        journal.close()
        if out_format == "csv":
            write_csv(out, journal.records)
    else:
        journal.close()
        _merge_parts(out, world, rank, position, out_format)
    return summary


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def start_workers(workers: int) -> futures.ProcessPoolExecutor:
    """Reading worker processes, already importing what they need when this returns."""
    pool = futures.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_worker_init)
    for _ in range(workers):
        pool.submit(time.sleep, 0)  # makes the executor start every worker now
    return pool


def _worker_init() -> None:
    """In each reading worker: Ctrl-C is the main process's business, and a worker whose main
    process is gone (kill -9) exits instead of lingering."""
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    from . import video  # noqa: F401  (the imports a read needs, done before the first video arrives)


def _read_ahead(pool, todo: list[Path], frames: dict[str, Any], segments: float | None, cache, batch_size: int,
                interrupted: dict[str, bool]) -> Iterator[list[ReadResult]]:
    """ReadResults in input order, grouped into batches of about ``batch_size`` units, with the
    workers reading up to two batches ahead."""
    pending: deque = deque()
    next_index = 0

    def submit() -> None:
        nonlocal next_index
        while next_index < len(todo) and len(pending) < 2 * batch_size + 2:
            args = (next_index, str(todo[next_index]), frames, segments, cache)
            pending.append(pool.submit(read_video, *args) if pool is not None else args)
            next_index += 1

    batch: list[ReadResult] = []
    units = 0
    submit()
    while pending:
        item = pending.popleft()
        result = item.result() if pool is not None else read_video(*item)
        submit()
        batch.append(result)
        units += len(result.units)
        if units >= batch_size or not pending:
            yield batch
            batch, units = [], 0
            if interrupted["flag"]:
                return


def _caption_batch(captioner, batch: list[ReadResult], todo: list[Path], settings: Settings, settings_key: str,
                   mid: str, out: Path) -> list[dict[str, Any]]:
    units = [(r, u) for r in batch for u in r.units]
    results = []
    generate_error = None
    if units:
        try:
            results = captioner.caption_frames(
                [u.frames for _, u in units], None, settings.prompt, settings.lang, settings.thinking,
                settings.thinking_budget, settings.max_new_tokens, settings.sampling, settings.seed,
                features=[u.features for _, u in units], **settings.sampling_overrides())
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: record it, keep going
            generate_error = (type(e).__name__, str(e))
    by_read: dict[int, list] = {}
    for (read, unit), result in zip(units, results):
        by_read.setdefault(read.index, []).append((unit, result))

    records = []
    for read in batch:
        video = todo[read.index]
        size, mtime = file_identity(video)
        record: dict[str, Any] = {
            "path": os.path.abspath(video), "status": "ok", "lang": settings.lang, "model": mid,
            "settings": settings_key, "size": size, "mtime_ns": mtime,
        }
        error = read.error or (generate_error if read.units else None)
        if error:
            record.update(status="error", error_type=error[0], error=error[1], timings={"read": round(read.seconds, 4)})
            records.append(record)
            continue
        pairs = by_read[read.index]
        first = pairs[0][1]
        record.update(prompt=first.prompt, duration=round(read.duration, 3))
        generate_seconds = sum(r.timings["generate"] / len(units) for _, r in pairs)
        encode_seconds = sum(r.timings["encode"] for _, r in pairs)
        if settings.segments:
            segments = [{"start": round(u.window[0], 3), "end": round(u.window[1], 3), "caption": r.caption,
                         **({"thinking": r.thinking} if settings.thinking else {})} for u, r in pairs]
            srt_path, vtt_path = subtitle_paths(out, video)
            srt_path.parent.mkdir(parents=True, exist_ok=True)
            write_text(srt_path, to_srt(segments))
            write_text(vtt_path, to_vtt(segments))
            record.update(caption=" ".join(s["caption"] for s in segments), segments=segments,
                          frames=sum(r.num_frames for _, r in pairs), srt=str(srt_path), vtt=str(vtt_path))
        else:
            record.update(caption=first.caption, frames=first.num_frames,
                          timestamps=[round(t, 3) for t in first.timestamps])
            if settings.thinking:
                record["thinking"] = first.thinking
        record["timings"] = {"read": round(read.seconds, 4), "encode": round(encode_seconds, 4),
                             "generate": round(generate_seconds, 4)}
        records.append(record)
    return records


CSV_COLUMNS = ["path", "status", "lang", "caption", "thinking", "duration", "frames", "error_type", "error", "model",
               "prompt", "srt", "vtt"]


def write_csv(path: Path, records: Sequence[dict[str, Any]]) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for record in records:
        writer.writerow({k: record.get(k, "") for k in CSV_COLUMNS})
    write_text(path, buffer.getvalue())


def _merge_parts(out: Path, world: int, rank: int, position, out_format: str) -> None:
    """Multi-process runs: after a barrier, the first process merges every part into ``out``."""
    from accelerate import PartialState

    state = PartialState()
    state.wait_for_everyone()
    if rank == 0:
        merged: dict[tuple, dict[str, Any]] = {}
        earlier = read_records(out) if out.exists() and out_format != "csv" else []
        parts = [out.with_name(f"{out.name}.part-{r}.jsonl") for r in range(world)]
        for record in earlier + [r for part in parts for r in read_records(part)]:
            merged[record_key(record)] = record  # a retried video's new record replaces its failure
        records = sorted(merged.values(), key=position)
        if out_format == "csv":
            write_csv(out, records)
        else:
            write_jsonl(out, records)
        for part in parts:
            part.unlink(missing_ok=True)
    state.wait_for_everyone()


# -- the `vcap caption` command -------------------------------------------------------------------------------

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
    parser.add_argument("--thinking-budget", type=int, metavar="TOKENS", help="close the thinking after this many tokens")
    parser.add_argument("--sampling", choices=["greedy", "thinking", "non-thinking"], default="greedy",
                        help="decoding: greedy (default) or a Qwen3 sampling preset")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--seed", type=int, help="random seed for sampling")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--frames", type=int, help="frames per video (default: the captioner's)")
    parser.add_argument("--strategy", choices=["uniform", "fps"])
    parser.add_argument("--fps", type=float, help="frames per second for --strategy fps")
    parser.add_argument("--segments", type=float, metavar="SECONDS",
                        help="caption each window of this many seconds; writes SRT and WebVTT files")
    parser.add_argument("--batch-size", type=int, default=4, help="videos (or windows) per model batch (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="decoding worker processes; 0 decodes in the main process")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--load-in-4bit", action="store_true", help="language model in 4-bit NF4 (CUDA, bitsandbytes)")
    parser.add_argument("--feature-cache", help="a vision feature cache folder from vcap train, used where it has the video")
    parser.add_argument("--retry-failed", action="store_true", help="caption again the videos recorded as failed")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from .model import load_captioner

    if args.batch_size < 1 or args.workers < 0 or (args.segments is not None and args.segments <= 0):
        print("vcap caption: --batch-size must be >= 1, --workers >= 0 and --segments > 0", file=sys.stderr)
        return EXIT_USAGE
    if args.load_in_4bit and not str(args.device).startswith("cuda"):
        print("vcap caption: --load-in-4bit needs a CUDA device (--device cuda)", file=sys.stderr)
        return EXIT_USAGE
    try:
        videos = collect_videos(args.inputs, args.ext or VIDEO_EXTENSIONS)
    except ValueError as e:
        print(f"vcap caption: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not videos:
        print(f"vcap caption: no videos found in {' '.join(args.inputs)}", file=sys.stderr)
        return EXIT_USAGE
    pool = start_workers(args.workers) if args.workers > 0 else None  # they start while the model loads
    try:
        captioner = load_captioner(args.captioner, device=args.device, dtype=args.dtype)
    except FileNotFoundError as e:
        print(f"vcap caption: {e}", file=sys.stderr)
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        return EXIT_USAGE
    if args.load_in_4bit:
        from .train import quantize_4bit

        quantize_4bit(captioner.lm, compute_dtype=getattr(torch, args.dtype))
    settings = Settings(
        lang=args.lang, prompt=args.prompt, thinking=args.thinking, thinking_budget=args.thinking_budget,
        sampling=None if args.sampling == "greedy" else args.sampling, temperature=args.temperature,
        top_p=args.top_p, top_k=args.top_k, seed=args.seed, max_new_tokens=args.max_new_tokens,
        num_frames=args.frames, strategy=args.strategy, fps=args.fps, segments=args.segments)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        summary = caption_videos(
            captioner, args.captioner, videos, args.out, settings, batch_size=args.batch_size,
            workers=args.workers, retry_failed=args.retry_failed, out_format=args.out_format,
            feature_cache=args.feature_cache, progress=not args.quiet,
            rank=rank, world=world, pool=pool)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    print(summary.line(), file=sys.stderr)
    if rank == 0:
        print(f"captions: {args.out}", file=sys.stderr)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if summary.failed or summary.failed_before else EXIT_OK
