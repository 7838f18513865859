"""The batch captioning run: what is left to do, the read-caption-record loop, and the end.

:func:`caption_videos` checks and locks the output, opens the journal, leaves out the videos it
already holds, feeds the rest through the reading workers (``vcap/caption/reading.py``) to the
model a batch at a time, turns each finished video into a record (with subtitles for windows) and
appends it, then rewrites the journal in input order (or, with several processes, merges the
parts). Ctrl-C finishes the batch in progress first; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qwen3_backbone.files import short_name

from ..errors import UsageError
from ..outputs import OutputLock, check_output_file, recognises, write_jsonl, write_text
from ..processor import read_options
from ..subtitles import to_srt, to_vtt
from .journal import (BatchSettings, Journal, Record, done_record, file_identity, is_caption_csv, latest, model_id,
                      read_records, write_csv)
from .reading import ReadResult, plan_tasks, read_ahead, start_workers


@dataclass(frozen=True)
class BatchOptions:
    """How a batch run works (none of this changes a caption)."""

    batch_size: int = 4  # videos (or windows) per model batch
    workers: int = 2  # reading worker processes; 0 reads in the main process
    retry_failed: bool = False  # caption again the videos recorded as failed
    out_format: str = "jsonl"  # jsonl | csv (the JSONL journal then sits beside it)
    feature_cache: str | None = None  # a vision feature cache folder from vcap train
    progress: bool = True  # a progress bar
    quiet: bool = False  # silence the decoders' own log lines (failures are still reported)
    rank: int = 0  # this process among ``world`` (several processes or GPUs)
    world: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.workers < 0:
            raise UsageError("batch_size must be >= 1 and workers >= 0")
        if self.out_format not in ("jsonl", "csv"):
            raise UsageError(f"out_format must be jsonl or csv, got {self.out_format!r}")


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


def check_output(out: Path, out_format: str) -> None:
    """Refuse, before any work, an output that is not vcap's own caption output (or table)."""
    if out_format == "csv":
        check_output_file(out, "caption table (CSV)", "--out", is_ours=is_caption_csv)
    else:
        check_output_file(out, "caption output", "--out", is_ours=recognises(read_records))


def journal_path(out: Path, run: BatchOptions) -> Path:
    if run.world > 1:
        return out.with_name(short_name(f"{out.name}.part-{run.rank}.jsonl"))
    return out.with_name(short_name(out.name + ".journal.jsonl")) if run.out_format == "csv" else out


def caption_videos(captioner, videos: list[Path], out: str | os.PathLike, settings: BatchSettings | None = None,
                   run: BatchOptions | None = None, *, name: str | os.PathLike = "captioner", pool=None) -> Summary:
    """Caption ``videos`` (from :func:`~vcap.caption.collect_videos`) into ``out``, resuming; see the
    module docstring. ``name`` names the captioner in records (its folder); ``pool``: reading
    workers from :func:`~vcap.caption.start_workers`, started early so that they import while the
    model loads (the command does this)."""
    settings, run, out = settings or BatchSettings(), run or BatchOptions(), Path(out)
    check_output(out, run.out_format)
    journal_file = journal_path(out, run)
    with OutputLock(out, shared=run.world > 1), (OutputLock(journal_file) if run.world > 1 else contextlib.nullcontext()):
        journal = Journal(journal_file)
        try:
            return _run(captioner, [Path(v) for v in videos], out, journal, settings, run, model_id(captioner, name),
                        pool)
        finally:
            journal.close()


def _run(captioner, videos: list[Path], out: Path, journal: Journal, settings: BatchSettings, run: BatchOptions,
         mid: str, pool) -> Summary:
    key = settings.key()
    if run.retry_failed:
        journal.drop_failures(mid, key)
    todo, summary = _left_to_do(videos[run.rank::run.world], journal, out, mid, key, run)
    frames = _frames(captioner, settings)
    cache = _feature_cache(captioner, settings, frames, run.feature_cache)
    with _interruptible() as interrupted:
        started = time.perf_counter()
        own_pool = pool is None and run.workers > 0 and bool(todo)
        pool = start_workers(run.workers, run.quiet) if own_pool else pool
        try:
            _loop(captioner, todo, journal, _Records(todo, settings, key, mid, out), summary, run,
                  read_ahead(pool, plan_tasks(todo, settings.segments, run.batch_size), todo, frames=frames,
                             cache=cache, batch_size=run.batch_size, interrupted=interrupted, quiet=run.quiet))
        finally:
            if own_pool:
                pool.shutdown(wait=True, cancel_futures=True)
        summary.seconds = time.perf_counter() - started
        summary.interrupted = interrupted["flag"]
    order = {os.path.abspath(v): i for i, v in enumerate(videos)}
    position = lambda record: order.get(record["path"], len(order))  # noqa: E731
    if run.world == 1:
        journal.rewrite(sorted(latest(journal.records).values(), key=position))  # input order, one per identity
        if run.out_format == "csv":
            write_csv(out, journal.records)
    else:
        journal.close()
        _merge_parts(out, run, position)
    return summary


def _left_to_do(mine: list[Path], journal: Journal, out: Path, mid: str, key: str,
                run: BatchOptions) -> tuple[list[Path], Summary]:
    """The videos without a current record, and a summary counting the ones skipped."""
    known = journal.records
    if run.world > 1 and out.exists():  # the merged output of an earlier run counts as done too
        known = read_records(out) + known
    index, todo, summary = latest(known), [], Summary()
    for video in mine:
        earlier = done_record(index, video, mid, key, run.retry_failed)
        if earlier is None:
            todo.append(video)
        else:
            summary.skipped += 1
            summary.failed_before += earlier["status"] != "ok"
    return todo, summary


def _frames(captioner, settings: BatchSettings) -> dict[str, Any]:
    """read_frames' options: the captioner's frames config, with the batch's changes."""
    cfg = captioner.config.frames
    changed = replace(cfg, num_frames=settings.num_frames or cfg.num_frames,
                      strategy=settings.strategy or cfg.strategy, fps=settings.fps or cfg.fps)
    return read_options(changed, captioner.frame_limit(changed))


def _feature_cache(captioner, settings: BatchSettings, frames: dict[str, Any], folder: str | None):
    """(folder, encoder key) of a feature cache that matches how this run samples frames, or None."""
    cfg = captioner.config.frames
    if not folder or settings.segments or not Path(folder).is_dir() \
            or (frames["num_frames"], frames["strategy"]) != (cfg.num_frames, cfg.strategy):
        return None
    from ..features import encoder_fingerprint

    return str(folder), encoder_fingerprint(captioner)


@contextlib.contextmanager
def _interruptible():
    """A flag the first Ctrl-C sets (the batch in progress is finished); a second one stops at once."""
    interrupted = {"flag": False}

    def on_sigint(signum, frame):  # noqa: ARG001
        if interrupted["flag"]:
            raise KeyboardInterrupt
        interrupted["flag"] = True
        print("\ninterrupted: finishing the current batch (Ctrl-C again to stop now)", file=sys.stderr)

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main else None
    try:
        yield interrupted
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _loop(captioner, todo: list[Path], journal: Journal, records: _Records, summary: Summary, run: BatchOptions,
          batches) -> None:
    from ..progress import progress_bar

    bar = progress_bar(len(todo), "caption", "video", enabled=run.progress)
    try:
        for batch in batches:
            finished = records.add(captioner, batch, run.batch_size)
            journal.append(finished)
            for record in finished:
                if record["status"] == "ok":
                    summary.done += 1
                else:
                    summary.failed += 1
                    message = f"failed: {record['path']}: {record['error']}"
                    bar.write(message, file=sys.stderr) if run.progress else print(message, file=sys.stderr)
            bar.update(len(finished))
    finally:
        bar.close()


@dataclass
class _Records:
    """Captions the units of each batch and turns finished videos into records; a video whose
    windows span several batches is held until its last one is done."""

    todo: list[Path]
    settings: BatchSettings
    key: str
    model: str
    out: Path
    parts: dict[int, dict[str, Any]] = field(default_factory=dict)  # video index -> results so far

    def add(self, captioner, batch: list[ReadResult], batch_size: int) -> list[Record]:
        for read in batch:
            part = self.parts.setdefault(read.index, {"pairs": [], "seconds": 0.0, "error": None, "duration": 0.0})
            part["seconds"] += read.seconds
            part["duration"] = read.duration or part["duration"]
            part["error"] = part["error"] or read.error
        units = [(read, u) for read in batch for u in read.units if self.parts[read.index]["error"] is None]
        for start in range(0, len(units), batch_size):  # never more than a batch through the model at once
            chunk = units[start:start + batch_size]
            try:
                results = captioner.caption_frames([u.frames for _, u in chunk], self.settings.options,
                                                   features=[u.features for _, u in chunk])
            except Exception as e:  # noqa: BLE001 - e.g. out of memory: record it, keep going
                for read, _ in chunk:
                    self.parts[read.index]["error"] = (type(e).__name__, str(e))
                continue
            for (read, unit), result in zip(chunk, results):
                self.parts[read.index]["pairs"].append((unit, result))
        return [self._record(read.index) for read in batch if read.last]

    def _record(self, index: int) -> Record:
        part = self.parts.pop(index)
        video = self.todo[index]
        size, mtime = file_identity(video)
        record: Record = {"path": os.path.abspath(video), "status": "ok", "lang": self.settings.options.lang,
                          "model": self.model, "settings": self.key, "size": size, "mtime_ns": mtime}
        if part["error"] or not part["pairs"]:
            error = part["error"] or ("VideoReadError", "no frames")
            record.update(status="error", error_type=error[0], error=error[1], timings={"read": round(part["seconds"], 4)})
            return record
        pairs = part["pairs"]
        first = pairs[0][1]
        record.update(prompt=first.prompt, duration=round(part["duration"], 3))
        if self.settings.segments:
            record.update(self._segments(video, pairs))
        else:
            record.update(caption=first.caption, frames=first.num_frames,
                          timestamps=[round(t, 3) for t in first.timestamps], sampling=first.sampling)
            if self.settings.options.thinking:
                record["thinking"] = first.thinking
            if self.settings.options.dense:
                record.update(self._events(video, first))
        record["timings"] = {"read": round(part["seconds"], 4),
                             "encode": round(sum(r.timings["encode"] for _, r in pairs), 4),
                             "generate": round(sum(r.timings["generate"] for _, r in pairs), 4)}
        return record

    def _segments(self, video: Path, pairs: list) -> Record:
        """The windows' captions, written as SRT and WebVTT beside the output."""
        thinking = self.settings.options.thinking
        segments = [{"start": round(u.window[0], 3), "end": round(u.window[1], 3), "caption": r.caption,
                     **({"thinking": r.thinking} if thinking else {})} for u, r in pairs]
        srt_path, vtt_path = subtitle_paths(self.out, video)
        write_text(srt_path, to_srt(segments))
        write_text(vtt_path, to_vtt(segments))
        return {"caption": " ".join(s["caption"] for s in segments), "segments": segments,
                "frames": sum(r.num_frames for _, r in pairs), "srt": str(srt_path), "vtt": str(vtt_path)}


    def _events(self, video: Path, result) -> Record:
        """A dense caption's events, written as SRT and WebVTT at the model's own times."""
        srt_path, vtt_path = subtitle_paths(self.out, video)
        write_text(srt_path, to_srt(result.events))
        write_text(vtt_path, to_vtt(result.events))
        return {"events": result.events, "unreadable_lines": result.unreadable_lines, "srt": str(srt_path),
                "vtt": str(vtt_path)}


def subtitle_paths(out: Path, video: Path) -> tuple[Path, Path]:
    """Where a video's SRT and WebVTT go: names from the video's, shortened with a hash if long."""
    folder = out.parent / short_name(f"{out.stem}.subtitles")
    tag = hashlib.sha256(os.fsencode(os.path.realpath(video))).hexdigest()[:8]
    return folder / short_name(f"{video.stem}.{tag}.srt"), folder / short_name(f"{video.stem}.{tag}.vtt")


def _merge_parts(out: Path, run: BatchOptions, position) -> None:
    """Several processes: after a barrier, the first process merges every part into ``out``."""
    from accelerate import PartialState

    state = PartialState()
    state.wait_for_everyone()
    if run.rank == 0:
        earlier = read_records(out) if out.exists() and run.out_format != "csv" else []
        parts = [out.with_name(short_name(f"{out.name}.part-{r}.jsonl")) for r in range(run.world)]
        merged = latest(earlier + [r for part in parts for r in read_records(part)])  # a retry replaces its failure
        records = sorted(merged.values(), key=position)
        if run.out_format == "csv":
            write_csv(out, records)
        else:
            write_jsonl(out, records)
        for part in parts:
            part.unlink(missing_ok=True)
    state.wait_for_everyone()
