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
import concurrent.futures as futures
import contextlib
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

from qwen3_backbone.files import short_name

from .cli import non_negative_int, positive_float, positive_int, probability
from .errors import UsageError
from .outputs import OutputLock, check_output_file, escape_surrogates, json_line, read_jsonl, recognises, write_jsonl, \
    write_text
from .subtitles import to_srt, to_vtt

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

__all__ = ["collect_videos", "caption_videos", "read_records", "Settings", "start_workers", "to_srt", "to_vtt"]


# -- finding the videos ----------------------------------------------------------------------------

def collect_videos(inputs: Sequence[str], extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[Path]:
    """Files, folders (recursive), glob patterns and .jsonl manifests -> unique video paths, in order.

    A path named directly (or in a manifest) is kept whatever its extension, even if it does not
    exist (it is reported as failed); folder and glob matches are filtered by ``extensions``.
    """
    from .data import ManifestError

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
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as e:
                raise ManifestError(path, [(0, f"not UTF-8 text ({e.reason})")]) from None
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    video = json.loads(line)["video"]
                    video = Path(video) if os.path.isabs(video) else path.parent / video
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ManifestError(path, [(number, "expected a JSON object with a 'video' key")]) from None
                add(video)
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

    def __post_init__(self) -> None:
        checks = [
            (self.lang in ("ko", "en"), f"lang must be ko or en, got {self.lang!r}"),
            (self.thinking_budget is None or self.thinking_budget >= 0, "thinking_budget must be >= 0"),
            (self.temperature is None or self.temperature > 0, "temperature must be > 0 (greedy: no sampling)"),
            (self.top_p is None or 0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k is None or self.top_k >= 0, "top_k must be >= 0"),
            (self.max_new_tokens is None or self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.num_frames is None or self.num_frames >= 1, "frames must be >= 1"),
            (self.strategy in (None, "uniform", "fps"), f"strategy must be uniform or fps, got {self.strategy!r}"),
            (self.fps is None or self.fps > 0, "fps must be > 0"),
            (self.segments is None or self.segments > 0, "segments must be > 0 seconds"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:12]

    def sampling_overrides(self) -> dict[str, Any]:
        return {k: v for k, v in (("temperature", self.temperature), ("top_p", self.top_p), ("top_k", self.top_k))
                if v is not None}


def model_id(captioner, name: str | os.PathLike = "captioner") -> str:
    """``name@hash``: the hash covers every file the captioner was built from (path, size and
    modification time, wherever the file lives) and its config, so a changed weight file anywhere
    means new captions."""
    from .config import config_to_dict

    digest = hashlib.sha256(json.dumps(config_to_dict(captioner.config), sort_keys=True).encode())
    for path in sorted(captioner.sources):
        stat = path.stat()
        digest.update(os.fsencode(str(path)) + f"|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return f"{escape_surrogates(Path(name).name)}@{digest.hexdigest()[:12]}"


def file_identity(path: Path) -> tuple[int | None, int | None]:
    try:
        stat = path.stat()
        return stat.st_size, stat.st_mtime_ns
    except OSError:
        return None, None


def record_key(record: dict[str, Any]) -> tuple:
    return (record["path"], record.get("size"), record.get("mtime_ns"), record["model"], record["settings"])


def is_caption_record(record: Any) -> bool:
    return isinstance(record, dict) and {"path", "status", "model", "settings"} <= record.keys()


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``vcap caption`` JSONL output (a torn last line is ignored); OutputError
    if the file is not one."""
    return read_jsonl(Path(path), is_caption_record, "path", "caption output")


# -- the journal: JSON lines, appended and flushed --------------------------------------------------------

class Journal:
    """Append-only JSONL with whole lines only. Opening it checks that the file is a caption output
    vcap wrote (else OutputError, the file untouched) and cuts a line torn by a kill."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.records = read_jsonl(path, is_caption_record, "path", "caption output", repair=True)
        self._file = open(path, "a", encoding="utf-8")

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        self._file.write("".join(json_line(r) for r in records))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.extend(records)

    def rewrite(self, records: Sequence[dict[str, Any]]) -> None:
        """Replace the whole file atomically (used to drop retried failures and to order the output)."""
        self._file.close()
        write_jsonl(self.path, records)
        self.records = list(records)
        self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        self._file.close()


def subtitle_paths(out: Path, video: Path) -> tuple[Path, Path]:
    """Where a video's SRT and WebVTT go: names from the video's, shortened with a hash if long."""
    folder = out.parent / short_name(f"{out.stem}.subtitles")
    tag = hashlib.sha256(os.fsencode(os.path.realpath(video))).hexdigest()[:8]
    return folder / short_name(f"{video.stem}.{tag}.srt"), folder / short_name(f"{video.stem}.{tag}.vtt")


# -- reading in worker processes ---------------------------------------------------------------------------

@dataclass
class Task:
    """What one worker call reads: a whole video, or up to a batch of its windows."""

    index: int  # the video's position in the list being captioned
    windows: list[tuple[float, float]] | None = None  # None: the whole video
    last: bool = True  # the video's last task
    duration: float = 0.0


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
    last: bool = True


def read_task(task: Task, path: str, frames_cfg: dict[str, Any], cache: tuple[str, str] | None) -> ReadResult:
    """Runs in a worker: sample (and resize) the frames of one video, or of some of its windows."""
    import numpy as np

    from .video import Frames, VideoReadError, probe, read_frames, sample_indices

    t0 = time.perf_counter()
    result = ReadResult(task.index, last=task.last, duration=task.duration)
    try:
        if task.windows is not None:
            for start, end in task.windows:
                result.units.append(Unit(read_frames(path, start=start, end=end, **frames_cfg), window=(start, end)))
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
                result.units.append(Unit(read_frames(path, **frames_cfg)))
            result.duration = result.units[0].frames.duration
    except VideoReadError as e:
        result.error = ("VideoReadError", e.reason)
        result.units = []
    except Exception as e:  # noqa: BLE001 - one bad video must never stop the run
        result.error = (type(e).__name__, str(e) or type(e).__name__)
        result.units = []
    result.seconds = time.perf_counter() - t0
    return result


def plan_tasks(todo: Sequence[Path], segments: float | None, batch_size: int) -> Iterator[Task | ReadResult]:
    """The tasks for ``todo`` in order; with ``segments`` a video's windows come in tasks of at most
    ``batch_size`` (its header is read here to know its length). A video whose header cannot be
    read becomes a finished, failed ReadResult."""
    from .video import probe, segment_windows

    for index, video in enumerate(todo):
        if not segments:
            yield Task(index)
            continue
        t0 = time.perf_counter()
        try:
            duration = probe(video).duration
        except Exception as e:  # noqa: BLE001 - VideoReadError and whatever a decoder raises
            reason = getattr(e, "reason", None) or str(e) or type(e).__name__
            yield ReadResult(index, error=(type(e).__name__, reason), seconds=time.perf_counter() - t0)
            continue
        windows = segment_windows(duration, segments)
        for start in range(0, len(windows), batch_size):
            yield Task(index, windows[start:start + batch_size], last=start + batch_size >= len(windows),
                       duration=duration)


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
    quiet: bool = False,
) -> Summary:
    """Caption ``videos`` (from :func:`collect_videos`) into ``out`` (resuming); see the module docstring.

    ``pool``: reading workers from :func:`start_workers`, started early so that they import while
    the model loads (the command does this); otherwise ``workers`` processes are started here.
    ``quiet``: the decoders' own log lines are silenced (vcap's failure lines still show)."""
    if batch_size < 1 or workers < 0:
        raise UsageError("batch_size must be >= 1 and workers >= 0")
    settings = settings or Settings()
    out = Path(out)
    if out_format == "csv":
        check_output_file(out, "caption table (CSV)", "--out", is_ours=_is_caption_csv)
        journal_path = out.with_name(short_name(out.name + ".journal.jsonl"))
    else:
        check_output_file(out, "caption output", "--out", is_ours=recognises(read_records))
        journal_path = out
    if world > 1:
        journal_path = out.with_name(short_name(f"{out.name}.part-{rank}.jsonl"))
    with OutputLock(out, shared=world > 1), (OutputLock(journal_path) if world > 1 else contextlib.nullcontext()):
        return _caption_locked(captioner, captioner_dir, [Path(v) for v in videos], out, journal_path, settings,
                               batch_size, workers, retry_failed, out_format, feature_cache, progress, rank, world,
                               pool, quiet)


def _caption_locked(captioner, captioner_dir, videos, out, journal_path, settings, batch_size, workers, retry_failed,
                    out_format, feature_cache, progress, rank, world, pool, quiet) -> Summary:
    from .progress import progress_bar

    order = {os.path.abspath(v): i for i, v in enumerate(videos)}
    mine = videos[rank::world]
    mid = model_id(captioner, captioner_dir)
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
    bar = progress_bar(len(todo), "caption", "video", enabled=progress)
    started = time.perf_counter()
    own_pool = pool is None and workers > 0 and bool(todo)
    assembler = _Assembler(todo, settings, settings_key, mid, out)
    try:
        if own_pool:
            pool = start_workers(workers, quiet)
        tasks = plan_tasks(todo, settings.segments, batch_size)
        for batch in _read_ahead(pool, tasks, todo, frames, cache, batch_size, interrupted, quiet):
            records = assembler.add(captioner, batch, batch_size)
            journal.append(records)
            for record in records:
                if record["status"] == "ok":
                    summary.done += 1
                else:
                    summary.failed += 1
                    message = f"failed: {record['path']}: {record['error']}"
                    bar.write(message, file=sys.stderr) if progress else print(message, file=sys.stderr)
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


def start_workers(workers: int, quiet: bool = False) -> futures.ProcessPoolExecutor:
    """Reading worker processes, already importing what they need when this returns."""
    pool = futures.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_worker_init, initargs=(quiet,))
    for _ in range(workers):
        pool.submit(time.sleep, 0)  # makes the executor start every worker now
    return pool


def _worker_init(quiet: bool = False) -> None:
    """In each reading worker: Ctrl-C is the main process's business, a worker whose main process
    is gone (kill -9) exits instead of lingering, and with ``quiet`` the decoders' log lines
    (written by C code straight to the stderr file descriptor) go nowhere."""
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    if quiet:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    from . import video  # noqa: F401  (the imports a read needs, done before the first video arrives)


@contextlib.contextmanager
def _decoders_silenced(quiet: bool) -> Iterator[None]:
    """For reads in the main process: the stderr file descriptor points nowhere for the duration."""
    if not quiet:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _read_ahead(pool, tasks: Iterator[Task | ReadResult], todo: list[Path], frames: dict[str, Any], cache,
                batch_size: int, interrupted: dict[str, bool], quiet: bool) -> Iterator[list[ReadResult]]:
    """ReadResults in order, grouped into batches of about ``batch_size`` units, with the workers
    reading up to two batches ahead (counted in units, so memory follows the batch size)."""
    pending: deque = deque()  # (future or ready ReadResult or task, units it will hold)
    in_flight = 0
    exhausted = False

    def submit() -> None:
        nonlocal in_flight, exhausted
        while not exhausted and in_flight < 2 * batch_size + 2:
            with _decoders_silenced(quiet):  # plan_tasks may read a header here
                task = next(tasks, None)
            if task is None:
                exhausted = True
                return
            if isinstance(task, ReadResult):
                pending.append((task, 0))
                continue
            size = len(task.windows) if task.windows is not None else 1
            args = (task, str(todo[task.index]), frames, cache)
            pending.append((pool.submit(read_task, *args) if pool is not None else args, size))
            in_flight += size

    batch: list[ReadResult] = []
    units = 0
    submit()
    while pending:
        item, size = pending.popleft()
        if isinstance(item, ReadResult):
            result = item
        elif pool is not None:
            result = item.result()
        else:
            with _decoders_silenced(quiet):
                result = read_task(*item)
        in_flight -= size
        submit()
        batch.append(result)
        units += len(result.units)
        if units >= batch_size or not pending:
            yield batch
            batch, units = [], 0
            if interrupted["flag"]:
                return


class _Assembler:
    """Captions the units of each batch and turns finished videos into records; a video whose
    windows span several batches is held until its last one is done."""

    def __init__(self, todo: list[Path], settings: Settings, settings_key: str, mid: str, out: Path) -> None:
        self.todo, self.settings, self.settings_key, self.mid, self.out = todo, settings, settings_key, mid, out
        self.parts: dict[int, dict[str, Any]] = {}  # video index -> pairs, seconds, error so far

    def add(self, captioner, batch: list[ReadResult], batch_size: int) -> list[dict[str, Any]]:
        for read in batch:
            part = self.parts.setdefault(read.index, {"pairs": [], "seconds": 0.0, "error": None, "duration": 0.0})
            part["seconds"] += read.seconds
            part["duration"] = read.duration or part["duration"]
            part["error"] = part["error"] or read.error
        units = [(read, u) for read in batch for u in read.units if self.parts[read.index]["error"] is None]
        for start in range(0, len(units), batch_size):  # never more than a batch through the model at once
            chunk = units[start:start + batch_size]
            try:
                results = captioner.caption_frames(
                    [u.frames for _, u in chunk], None, self.settings.prompt, self.settings.lang, self.settings.thinking,
                    self.settings.thinking_budget, self.settings.max_new_tokens, self.settings.sampling,
                    self.settings.seed, features=[u.features for _, u in chunk], **self.settings.sampling_overrides())
            except Exception as e:  # noqa: BLE001 - e.g. out of memory: record it, keep going
                for read, _ in chunk:
                    self.parts[read.index]["error"] = (type(e).__name__, str(e))
                continue
            for (read, unit), result in zip(chunk, results):
                result.timings["generate"] /= len(chunk)  # the batch's generate time, shared per clip
                self.parts[read.index]["pairs"].append((unit, result))
        return [self._record(read.index) for read in batch if read.last]

    def _record(self, index: int) -> dict[str, Any]:
        part = self.parts.pop(index)
        video, settings = self.todo[index], self.settings
        size, mtime = file_identity(video)
        record: dict[str, Any] = {
            "path": os.path.abspath(video), "status": "ok", "lang": settings.lang, "model": self.mid,
            "settings": self.settings_key, "size": size, "mtime_ns": mtime,
        }
        if part["error"] or not part["pairs"]:
            error = part["error"] or ("VideoReadError", "no frames")
            record.update(status="error", error_type=error[0], error=error[1], timings={"read": round(part["seconds"], 4)})
            return record
        pairs = part["pairs"]
        first = pairs[0][1]
        record.update(prompt=first.prompt, duration=round(part["duration"], 3))
        if settings.segments:
            segments = [{"start": round(u.window[0], 3), "end": round(u.window[1], 3), "caption": r.caption,
                         **({"thinking": r.thinking} if settings.thinking else {})} for u, r in pairs]
            srt_path, vtt_path = subtitle_paths(self.out, video)
            write_text(srt_path, to_srt(segments))
            write_text(vtt_path, to_vtt(segments))
            record.update(caption=" ".join(s["caption"] for s in segments), segments=segments,
                          frames=sum(r.num_frames for _, r in pairs), srt=str(srt_path), vtt=str(vtt_path))
        else:
            record.update(caption=first.caption, frames=first.num_frames,
                          timestamps=[round(t, 3) for t in first.timestamps])
            if settings.thinking:
                record["thinking"] = first.thinking
        record["timings"] = {"read": round(part["seconds"], 4),
                             "encode": round(sum(r.timings["encode"] for _, r in pairs), 4),
                             "generate": round(sum(r.timings["generate"] for _, r in pairs), 4)}
        return record


CSV_COLUMNS = ["path", "status", "lang", "caption", "thinking", "duration", "frames", "error_type", "error", "model",
               "prompt", "srt", "vtt"]


def _is_caption_csv(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.readline().rstrip("\r\n") == ",".join(CSV_COLUMNS)
    except (OSError, UnicodeDecodeError):
        return False


def write_csv(path: Path, records: Sequence[dict[str, Any]]) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for record in records:
        writer.writerow({k: record.get(k, "") for k in CSV_COLUMNS})
    write_text(path, escape_surrogates(buffer.getvalue()))


def _merge_parts(out: Path, world: int, rank: int, position, out_format: str) -> None:
    """Multi-process runs: after a barrier, the first process merges every part into ``out``."""
    from accelerate import PartialState

    state = PartialState()
    state.wait_for_everyone()
    if rank == 0:
        merged: dict[tuple, dict[str, Any]] = {}
        earlier = read_records(out) if out.exists() and out_format != "csv" else []
        parts = [out.with_name(short_name(f"{out.name}.part-{r}.jsonl")) for r in range(world)]
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
    parser.add_argument("--batch-size", type=positive_int, default=4, help="videos (or windows) per model batch (default 4)")
    parser.add_argument("--workers", type=non_negative_int, default=2,
                        help="decoding worker processes; 0 decodes in the main process")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--load-in-4bit", action="store_true", help="language model in 4-bit NF4 (CUDA, bitsandbytes)")
    parser.add_argument("--feature-cache", help="a vision feature cache folder from vcap train, used where it has the video")
    parser.add_argument("--retry-failed", action="store_true", help="caption again the videos recorded as failed")
    parser.add_argument("--allow-downloads", action="store_true",
                        help="let the captioner fetch hub weights that are not in the local cache (off: offline)")
    parser.add_argument("--allow-external-paths", action="store_true",
                        help="let the captioner folder name files outside itself (off by default)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar, and no decoder log lines (failures are still reported)")


def run(args: argparse.Namespace) -> int:
    import torch

    from .model import load_captioner

    if args.load_in_4bit and not str(args.device).startswith("cuda"):
        raise UsageError("--load-in-4bit needs a CUDA device (--device cuda)")
    if args.strategy == "fps" and args.fps is None:
        raise UsageError("--strategy fps needs --fps (frames per second, > 0)")
    settings = Settings(
        lang=args.lang, prompt=args.prompt, thinking=args.thinking, thinking_budget=args.thinking_budget,
        sampling=None if args.sampling == "greedy" else args.sampling, temperature=args.temperature,
        top_p=args.top_p, top_k=args.top_k, seed=args.seed, max_new_tokens=args.max_new_tokens,
        num_frames=args.frames, strategy=args.strategy, fps=args.fps, segments=args.segments)
    videos = collect_videos(args.inputs, args.ext or VIDEO_EXTENSIONS)
    if not videos:
        raise UsageError(f"no videos found in {' '.join(args.inputs)}")
    out = Path(args.out)
    if args.out_format == "csv":  # checked before the model loads: a refused output costs nothing
        check_output_file(out, "caption table (CSV)", "--out", is_ours=_is_caption_csv)
    else:
        check_output_file(out, "caption output", "--out", is_ours=recognises(read_records))
    pool = start_workers(args.workers, args.quiet) if args.workers > 0 else None  # they start while the model loads
    try:
        captioner = load_captioner(args.captioner, device=args.device, dtype=args.dtype,
                                   allow_downloads=args.allow_downloads,
                                   allow_external_paths=args.allow_external_paths)
        if args.load_in_4bit:
            from .train import quantize_4bit

            quantize_4bit(captioner.lm, compute_dtype=getattr(torch, args.dtype))
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        summary = caption_videos(
            captioner, args.captioner, videos, args.out, settings, batch_size=args.batch_size,
            workers=args.workers, retry_failed=args.retry_failed, out_format=args.out_format,
            feature_cache=args.feature_cache, progress=not args.quiet,
            rank=rank, world=world, pool=pool, quiet=args.quiet)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    print(summary.line(), file=sys.stderr)
    if rank == 0:
        print(f"captions: {args.out}", file=sys.stderr)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if summary.failed or summary.failed_before else EXIT_OK
