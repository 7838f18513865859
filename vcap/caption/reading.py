"""Reading ahead of the model: what each worker reads (a whole video, or a batch of its windows),
the worker processes, and the queue that keeps them up to two batches ahead.

Memory follows the batch size, never a video's length: a video's windows are split into tasks of
at most a batch, and the queue is counted in windows. One bad video is a failed result, never an
exception that stops the run.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
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

    from ..video import Frames, VideoReadError, probe, read_frames, sample_indices, sampling_plan

    t0 = time.perf_counter()
    result = ReadResult(task.index, last=task.last, duration=task.duration)
    try:
        if task.windows is not None:
            for start, end in task.windows:
                result.units.append(Unit(read_frames(path, start=start, end=end, **frames_cfg), window=(start, end)))
        else:
            features = None
            if cache is not None:
                from ..features import FeatureCache

                features = FeatureCache(cache[0], cache[1]).get(Path(path))
            if features is not None:  # no decoding: the frames' metadata from the header
                info = probe(path)
                sampling = {k: frames_cfg[k] for k in ("num_frames", "strategy", "fps", "max_frames", "min_frames",
                                                       "frame_limit")}
                indices = sample_indices(info, **sampling)
                clip = Frames(np.zeros((len(indices), 1, 1, 3), np.uint8), indices,
                              [i / info.fps for i in indices], info, "feature-cache", path,
                              plan=sampling_plan(info, **sampling))
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
    from ..video import probe, segment_windows

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
    from .. import video  # noqa: F401  (the imports a read needs, done before the first video arrives)


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


def read_ahead(pool, tasks: Iterator[Task | ReadResult], todo: list[Path], *, frames: dict[str, Any], cache,
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
