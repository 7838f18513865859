"""Reading sampled frames from video files.

``read_frames(path, num_frames=8, strategy="uniform")`` returns uint8 frames (T, H, W, 3) with the
timestamp of each frame, the video's duration and native fps, and which backend read it. decord
is the default (it resizes at decode time); PyAV is the fallback when decord is not installed or
cannot open a file, and can be chosen explicitly. Decoders are imported inside functions.

Only the sampled frames are kept in memory: decord seeks to each requested frame, PyAV seeks to
the keyframe before each one and decodes forward, so a 4K or hour-long file costs T frames.

Every failure is a :class:`VideoReadError` naming the file and the reason (missing, unreadable,
empty, not a video, no video stream, truncated, corrupt, no frames), whatever the decoder raised
(decord's ``DECORDError`` is not a ``RuntimeError``; PyAV raises a dozen types on fuzzed input).

Frame i of a video is at time i / fps. Sampling strategies, within an optional window [t0, t1):
- ``uniform``: ``num_frames`` frames at the centres of equal parts of the window (repeated
  frames when the window holds fewer), so T is always ``num_frames``;
- ``fps``: frames every 1/``fps`` seconds, at most ``max_frames`` (evenly thinned if more).
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BACKENDS = ("auto", "decord", "pyav")
STRATEGIES = ("uniform", "fps")


class VideoReadError(Exception):
    """A video that cannot be read: ``path`` and a human ``reason``."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class VideoInfo:
    num_frames: int  # frames in the video (as its container reports them)
    fps: float  # native frames per second
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


@dataclass
class Frames:
    """Sampled frames and where they came from."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    indices: list[int]  # frame index of each sampled frame
    timestamps: list[float]  # seconds, index / fps
    info: VideoInfo
    backend: str
    path: str = ""
    window: tuple[float, float] = field(default=(0.0, 0.0))  # the [t0, t1) it was sampled from
    time_source: str = "decoder"  # where ``timestamps`` come from: "decoder", or "frame index" (raw frames)
    plan: dict = field(default_factory=dict)  # how the frames were chosen (see sampling_plan)

    @property
    def duration(self) -> float:
        return self.info.duration

    @property
    def end(self) -> float:
        """Where the span the frames were sampled from stops, in seconds (in frame indices for raw
        frames): the window's end within the video, or the video's duration."""
        t0, t1 = self.window
        return min(t1, self.duration) if t1 > t0 else self.duration

    @property
    def fps(self) -> float:
        return self.info.fps

    def __len__(self) -> int:
        return len(self.indices)


def read_frames(
    path: str | os.PathLike,
    num_frames: int = 8,
    strategy: str = "uniform",
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    min_frames: int | None = None,
    frame_limit: int | None = None,
    size: int | tuple[int, int] | None = None,
    backend: str = "auto",
    start: float = 0.0,
    end: float | None = None,
) -> Frames:
    """Sample frames from a video file.

    size: None keeps the native size; an int resizes so the shorter side is ``size`` (aspect kept,
        even dimensions); a (width, height) pair resizes to exactly that.
    start/end: the window [start, end) in seconds to sample from (end None: to the end).
    Raises VideoReadError for any file that cannot be read.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if strategy == "uniform" and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if strategy == "fps" and not (fps and fps > 0):
        raise ValueError("strategy='fps' needs fps > 0")
    if end is not None and end <= start:
        raise ValueError(f"empty window: start={start} >= end={end}")
    path = Path(path)
    _check_file(path)

    options = dict(num_frames=num_frames, strategy=strategy, fps=fps, max_frames=max_frames, min_frames=min_frames,
                   frame_limit=frame_limit, start=start, end=end)
    clip = _read(path, lambda info: sample_indices(info, **options), size, backend, start, end)
    clip.plan = sampling_plan(clip.info, **options)
    return clip


def sampling_plan(info: VideoInfo, *, num_frames: int = 8, strategy: str = "uniform", fps: float | None = None,
                  max_frames: int | None = None, min_frames: int | None = None, frame_limit: int | None = None,
                  start: float = 0.0, end: float | None = None) -> dict:
    """How a clip's frames were chosen, for the output record: the strategy, the frames taken, what
    was asked (``num_frames``, or for ``fps`` how many frames the rate gave), and what limited it:
    ``max_frames``, ``min_frames`` or the captioner's ``token_budget`` (``frame_limit``), or None."""
    taken = len(sample_indices(info, num_frames, strategy, fps=fps, max_frames=max_frames, min_frames=min_frames,
                               frame_limit=frame_limit, start=start, end=end))
    if strategy == "uniform":
        limit = "token_budget" if taken < num_frames else None
        return {"strategy": "uniform", "frames": taken, "num_frames": num_frames, "limited_by": limit}
    at_fps = len(sample_indices(info, 1, "fps", fps=fps, start=start, end=end))
    cap = min(max_frames or at_fps, frame_limit or at_fps)
    limit = None
    if at_fps > cap:
        limit = "token_budget" if frame_limit is not None and frame_limit < (max_frames or at_fps) else "max_frames"
    elif min_frames and at_fps < min_frames and taken > at_fps:
        limit = "min_frames"
    return {"strategy": "fps", "fps": fps, "frames": taken, "frames_at_fps": at_fps, "min_frames": min_frames,
            "max_frames": max_frames, "limited_by": limit}


def _read(path: Path, sampler, size, backend: str, start: float, end: float | None) -> Frames:
    if backend in ("auto", "decord"):
        try:
            import decord  # noqa: F401
        except ImportError:
            if backend == "decord":
                raise VideoReadError(path, "decord is not installed (pip install decord, or use backend='pyav')") from None
        else:
            try:
                reader = _DecordReader(path, size)
            except _CannotOpen as e:
                if backend == "decord":
                    raise VideoReadError(path, _explain_open_failure(path, e.reason)) from None
            else:
                try:
                    return reader.read(sampler, (start, end))
                except VideoReadError:
                    if backend == "decord":
                        raise
                    # decord fails on some streams that decode fine (e.g. 48x48 frames: "size must
                    # exactly match"); PyAV decides whether the file is really unreadable
                    log.info("decord could not decode %s; reading it with PyAV", path)
    return _PyAVReader(path, size).read(sampler, (start, end))


def segment_windows(duration: float, seconds: float) -> list[tuple[float, float]]:
    """[t0, t1) windows of ``seconds`` covering a video of ``duration`` (the last one shorter)."""
    if seconds <= 0:
        raise ValueError(f"window length must be > 0 seconds, got {seconds}")
    count = max(1, math.ceil(duration / seconds - 1e-9))
    return [(i * seconds, min((i + 1) * seconds, duration)) for i in range(count)]


def probe(path: str | os.PathLike) -> VideoInfo:
    """Frame count, fps and size from the container header (PyAV), without decoding frames."""
    path = Path(path)
    _check_file(path)
    return _PyAVReader(path, None).info


def sample_indices(
    info: VideoInfo,
    num_frames: int = 8,
    strategy: str = "uniform",
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    min_frames: int | None = None,
    frame_limit: int | None = None,
    start: float = 0.0,
    end: float | None = None,
) -> list[int]:
    """Which frame indices to read for a strategy within the window [start, end) seconds. With
    ``fps``: one frame every 1/fps seconds, then at most ``max_frames`` (spread evenly over those)
    and at least ``min_frames`` (spread evenly over the window, as far as the window has frames).
    ``frame_limit`` (a token budget's) caps either strategy's count."""
    if frame_limit is not None:
        num_frames = min(num_frames, frame_limit)
        max_frames = min(max_frames or frame_limit, frame_limit)
        min_frames = min(min_frames, frame_limit) if min_frames else None
    n, native = info.num_frames, info.fps
    first = min(max(0, math.ceil(start * native - 1e-6)), n - 1)
    last = n if end is None else min(n, max(first + 1, math.ceil(end * native - 1e-6)))
    span = last - first
    if strategy == "uniform":
        return [first + min(span - 1, int((k + 0.5) * span / num_frames)) for k in range(num_frames)]
    step = native / fps
    indices = []
    k = 0
    while True:
        i = first + int(round(k * step))
        if i >= last:
            break
        indices.append(i)
        k += 1
    indices = indices or [first]
    if max_frames and len(indices) > max_frames:
        indices = [indices[int((k + 0.5) * len(indices) / max_frames)] for k in range(max_frames)]
    if min_frames and len(indices) < min_frames:
        want = min(min_frames, span)
        indices = [first + min(span - 1, int((k + 0.5) * span / want)) for k in range(want)]
    return indices


def output_size(width: int, height: int, size: int | tuple[int, int] | None) -> tuple[int, int]:
    """The (width, height) frames are resized to."""
    if size is None:
        return width, height
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[1])
    scale = size / min(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


# -- file checks -------------------------------------------------------------------------------------

def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoReadError(path, "file not found")
    if not path.is_file():
        raise VideoReadError(path, "not a regular file")
    if not os.access(path, os.R_OK):
        raise VideoReadError(path, "permission denied (the file is not readable)")
    if path.stat().st_size == 0:
        raise VideoReadError(path, "file is empty (0 bytes)")


class _CannotOpen(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _finish(path: Path, frames: list[np.ndarray], indices: list[int], info: VideoInfo, backend: str,
            window: tuple[float, float | None]) -> Frames:
    if not frames:
        raise VideoReadError(path, "no decodable video frames")
    end = window[1] if window[1] is not None else info.duration
    return Frames(np.stack(frames), list(indices), [i / info.fps for i in indices], info, backend, str(path),
                  (window[0], end))


# -- decord ------------------------------------------------------------------------------------------

class _DecordReader:
    def __init__(self, path: Path, size: int | tuple[int, int] | None) -> None:
        import decord

        self.path = path
        width = height = -1
        if size is not None:
            native = _header_size(path)
            if native is not None:
                width, height = output_size(*native, size)
        self.resize_after = size if size is not None and width < 0 else None
        name, fd = str(path), None
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # a name that is not UTF-8: decord cannot take it, so open it by descriptor
            fd = os.open(path, os.O_RDONLY)
            name = f"/proc/self/fd/{fd}"
        try:
            self.reader = decord.VideoReader(name, ctx=decord.cpu(0), width=width, height=height, num_threads=1)
            n = len(self.reader)
            fps = float(self.reader.get_avg_fps())
        except Exception as e:  # RuntimeError, DECORDError, AssertionError (zero frames)
            raise _CannotOpen(_reason(e)) from None
        finally:
            if fd is not None:
                os.close(fd)  # decord opened the file itself
        if n <= 0 or not fps > 0:
            raise _CannotOpen("no video frames")
        self.info = VideoInfo(n, fps, width, height)

    def read(self, sampler, window) -> Frames:
        indices = sampler(self.info)
        unique = sorted(set(indices))
        try:
            batch = self.reader.get_batch(unique).asnumpy()  # (U, H, W, 3)
        except Exception as e:  # DECORDError (a plain Exception) on a missing or corrupt packet
            raise VideoReadError(self.path, f"truncated or corrupt video data ({_reason(e)})") from None
        by_index = dict(zip(unique, batch))
        frames = [by_index[i] for i in indices]
        if self.resize_after is not None:
            frames = list(_resize(np.stack(frames), self.resize_after))
        h, w = frames[0].shape[:2]
        self.info.width, self.info.height = w, h
        return _finish(self.path, frames, indices, self.info, "decord", window)


def _explain_open_failure(path: Path, decord_reason: str) -> str:
    """decord's open errors are terse; the container header often says what is wrong."""
    try:
        import av

        with av.open(str(path)) as container:
            if not container.streams.video:
                return "no video stream (audio-only, or not a video)"
    except Exception:
        return f"not a readable video ({decord_reason})"
    return f"truncated or corrupt video data (a video stream is there, but: {decord_reason})"


def _header_size(path: Path) -> tuple[int, int] | None:
    try:
        import av

        with av.open(str(path)) as container:
            if container.streams.video:
                ctx = container.streams.video[0].codec_context
                if ctx.width and ctx.height:
                    return ctx.width, ctx.height
    except Exception:
        return None
    return None


# -- PyAV --------------------------------------------------------------------------------------------

class _PyAVReader:
    def __init__(self, path: Path, size: int | tuple[int, int] | None) -> None:
        import av

        self.path, self.size = path, size
        try:
            self.container = av.open(str(path))
        except Exception as e:  # InvalidDataError, FileNotFoundError, IndexError, EOFError, MemoryError, ...
            raise VideoReadError(path, f"not a readable video ({_reason(e)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoReadError(path, "no video stream (audio-only, or not a video)")
        stream = self.container.streams.video[0]
        self.stream = stream
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        n = int(stream.frames or 0)
        if n <= 0 and fps > 0:
            seconds = (float(stream.duration * stream.time_base) if stream.duration
                       else (self.container.duration or 0) / 1e6)
            n = int(round(seconds * fps))
        if n <= 0 or not fps > 0:
            self.container.close()
            raise VideoReadError(path, "no video frames (the stream reports none)")
        ctx = stream.codec_context
        self.info = VideoInfo(n, fps, ctx.width or 0, ctx.height or 0)
        self.start_pts = stream.start_time or 0

    def _index_of(self, frame) -> int:
        seconds = float((frame.pts - self.start_pts) * self.stream.time_base) if frame.pts is not None else 0.0
        return int(round(seconds * self.info.fps))

    def read(self, sampler, window) -> Frames:
        indices = sampler(self.info)
        wanted = sorted(set(indices))
        found: dict[int, np.ndarray] = {}
        width, height = output_size(self.info.width, self.info.height, self.size)
        seek_gap = max(1, int(2 * self.info.fps))  # decode forward within ~2 s, seek beyond
        try:
            with self.container:
                position = -1  # index of the last decoded frame
                for target in wanted:
                    if target in found:
                        continue
                    if position < 0 or target - position > seek_gap or target <= position:
                        offset = int(target / self.info.fps / self.stream.time_base) + self.start_pts
                        self.container.seek(offset, stream=self.stream, backward=True, any_frame=False)
                        position = -1
                    for frame in self.container.decode(self.stream):
                        position = self._index_of(frame)
                        if position in wanted and position not in found and position >= target:
                            found[position] = frame.to_ndarray(format="rgb24", width=width, height=height)
                        if position >= target:
                            break
        except VideoReadError:
            raise
        except Exception as e:  # corrupt data: InvalidDataError, IndexError, EOFError, MemoryError, ...
            raise VideoReadError(self.path, f"truncated or corrupt video data ({_reason(e)})") from None
        missing = [i for i in wanted if i not in found]
        if missing:
            if not found:
                raise VideoReadError(self.path, "no decodable video frames")
            raise VideoReadError(
                self.path,
                f"truncated or corrupt: frame {missing[0]} of {self.info.num_frames} could not be decoded "
                f"({len(missing)} of {len(wanted)} sampled frames missing)",
            )
        self.info.width, self.info.height = width, height
        return _finish(self.path, [found[i] for i in indices], indices, self.info, "pyav", window)


def _resize(frames: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize (T, H, W, 3) uint8 frames with bilinear interpolation (only when decode-time resizing
    was impossible)."""
    import torch
    import torch.nn.functional as F

    T, H, W, _ = frames.shape
    width, height = output_size(W, H, size)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


_DECORD_NOISE = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")  # "[08:41:27] /src/video/x.cc:218: "


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = _DECORD_NOISE.sub("", text)[:200]  # decord's log prefixes carry the time of day
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
