"""Event windows: while a dense caption writes an event, each token sees only the frames it needs.

A dense caption lists events one per line, ``m:ss.s - m:ss.s: caption`` (vcap/events.py), in
order of start. With ``event_windows: true`` in the captioner's config:

- the tokens of an event's caption (from the colon after its times to the end of its line)
  attend to the video tokens of the frames within those times and to no other video token;
- once a line's start is written, the tokens that write the times (its end, the next line's
  start) attend only to the frames after that start's first frame: nothing written after a start
  begins before it, and what they look for is the next change. The start's own first frame is
  left out too, since its difference to the frame before it (the projector's
  ``frame_difference``) shows the change just passed. That frame is the first at or after the
  start + 0.05 s: a start written as 0:04.0 may be a change at 4.04 s, which the frame at 5 s
  shows (and the quickstart's model, unsure of a change, writes the time of the frame before it);
- a line's end (its newline), which decides whether another event follows, and the text before
  the first start see the whole video.

Training takes the windows from the reference text, captioning from the text the model has just
written, by the one rule of :class:`LineWindows`, so the two agree token for token.

A caption's last token sees only its event, so it cannot know whether another event follows:
every line of a dense answer therefore ends with a newline, the last one too (vcap/data.py), and
the model says on that newline whether to write another event or stop.

Why: written against every frame, an event's caption reads the next event's look into its own,
and a time finds the first change of the clip more easily than the one after it
(docs/benchmarks.md, "Event windows" and "Times that look forward").

Shapes: N video tokens in a prompt, S prompt (or sample) length, B rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .events import line_head
from .processor import VIDEO_PAD_ID

_EPS = 1e-6  # a frame exactly on an event's edge is inside it
_WRITTEN = 0.05  # times are written to a tenth of a second: a start stands for a change up to 0.05 s after it


@dataclass(frozen=True)
class VideoKeys:
    """Where one prompt's video tokens are (positions (N,)) and the time of each (times (N,), seconds)."""

    positions: np.ndarray
    times: np.ndarray

    @classmethod
    def of(cls, input_ids: Sequence[int] | np.ndarray, group_times: Sequence[float]) -> VideoKeys:
        """The <|video_pad|> positions of ``input_ids``, split evenly into the temporal groups whose
        times (the mean time of each group's frames) are ``group_times``, in order."""
        positions = np.flatnonzero(np.asarray(input_ids) == VIDEO_PAD_ID)
        if not group_times or len(positions) % len(group_times):
            raise ValueError(f"{len(positions)} video tokens cannot be split into {len(group_times)} groups")
        times = np.repeat(np.asarray(group_times, dtype=np.float64), len(positions) // len(group_times))
        return cls(positions, times)

    def hidden(self, window: tuple[float, float]) -> np.ndarray:
        """The positions of the video tokens a ``window`` (start, end) does not see.

        An event's window (finite end) sees the groups whose time is within it or, when none is,
        the group nearest its middle (a window shorter than the gap between two frames still sees
        one). A time's window, (start, inf), sees the groups after the start's own: the first one
        at or after start + 0.05 s, since a time written to a tenth of a second may stand for a
        change up to 0.05 s after it (or that one, when it is the last; or the last group, when
        none is after the start)."""
        start, end = window
        inside = (self.times >= start - _EPS) & (self.times <= end + _EPS)
        if math.isinf(end):  # a time's window: the frames after the start's own
            own = self.times >= start + _WRITTEN - _EPS  # written 0:04.0, a start may be a change at 4.04 s
            if own.any():
                later = self.times > self.times[own].min() + _EPS
                inside = later if later.any() else own  # the start's own frame is the last: that one
        if not inside.any():
            distance = np.abs(self.times - (start if math.isinf(end) else (start + end) / 2))
            inside = distance <= distance.min() + _EPS
        return self.positions[~inside]


class LineWindows:
    """Token by token, the window of the text being written (the rule of the module docstring):
    an event's caption, from the token that completes its line's ``m:ss.s - m:ss.s:`` until the
    line ends, gets (start, end); once a line's start is written, the other tokens of the answer
    get (that start, inf), a line's end excepted; the rest (a newline, text before the first start
    or that is not an event) gets None, the whole video."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.line = b""  # the line so far, as bytes (a character may still be incomplete)
        self.caption: tuple[float, float] | None = None  # the line's (start, end), once read
        self.times: tuple[float, float] | None = None  # (the latest start written, inf)

    def push(self, token: int) -> tuple[float, float] | None:
        piece = self.tokenizer.token_bytes(token)  # cached per id: no decoding on the decode path
        if b"\n" in piece:  # a line's end decides whether another event follows: the whole video
            self.line, self.caption = b"", None
            return None
        if self.caption is None:  # once a line's times are read, its window holds until its end
            self.line += piece
            start, self.caption = line_head(self.line.decode("utf-8", errors="replace"))
            if start is not None:
                self.times = (start, math.inf)
        return self.caption or self.times


def caption_runs(tokenizer, input_ids: Sequence[int], trained: Sequence[bool]) -> list[tuple[np.ndarray, tuple[float, float]]]:
    """The windows of a tokenized sample's trained text: (query positions, (start, end)) per run
    of tokens with one window (:class:`LineWindows`; an event's caption, or the times after a
    start with end inf), the query at position j being the token ``input_ids[j]``."""
    lines = LineWindows(tokenizer)
    runs: list[tuple[list[int], tuple[float, float]]] = []
    for j, (token, is_trained) in enumerate(zip(input_ids, trained)):
        window = lines.push(token) if is_trained else None
        if window is not None:
            if not runs or runs[-1][1] != window or runs[-1][0][-1] != j - 1:
                runs.append(([], window))
            runs[-1][0].append(j)
    return [(np.asarray(queries), window) for queries, window in runs]


def training_windows(runs: Sequence[tuple[np.ndarray, tuple[float, float]]], input_ids: Sequence[int],
                     group_times: Sequence[float], jitter: float = 0.0,
                     rng: np.random.Generator | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(query positions, hidden key positions) per run of :func:`caption_runs`. ``jitter``
    (seconds): each caption's window edges are moved by up to that much at random (``rng``), so
    that the model learns to caption from windows as far off as its own times will be; the times'
    windows are not moved."""
    if not group_times or not runs:
        return []
    keys = VideoKeys.of(input_ids, group_times)
    rng = rng if rng is not None else np.random.default_rng()
    out = []
    for queries, (start, end) in runs:
        if jitter > 0 and math.isfinite(end):  # a caption's window
            moved = start + rng.uniform(-jitter, jitter), end + rng.uniform(-jitter, jitter)
            start, end = moved if moved[0] < moved[1] else (start, end)
        out.append((queries, keys.hidden((start, end))))
    return out


def event_time_queries(labels: Sequence[int], runs: Sequence[tuple[np.ndarray, tuple[float, float]]],
                       ignore_index: int = -100) -> np.ndarray:
    """The query positions of a dense sample whose target is not caption text: each line's times
    and, on the token after a caption, whether another event follows (``train.event_time_weight``
    weighs their loss)."""
    captions = np.zeros(len(labels), dtype=bool)
    for queries, (_, end) in runs:
        captions[queries] = math.isfinite(end)
    return np.flatnonzero((np.asarray(labels) != ignore_index) & ~captions)


def visibility(windows: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], S: int) -> torch.Tensor | None:
    """A batch's (B, S, S) bool mask of the keys each query may see (True: not hidden by a window),
    from each row's :func:`training_windows`; None when no row has a window."""
    if not any(windows):
        return None
    visible = torch.ones(len(windows), S, S, dtype=torch.bool)
    for row, runs in enumerate(windows):
        for queries, hidden in runs:
            visible[row, torch.from_numpy(queries)[:, None], torch.from_numpy(hidden)[None, :]] = False
    return visible


class WindowedDecoding:
    """``qwen3_backbone.generate``'s ``visible``: for each new token of each row, the prompt
    positions it may see, its row's event window hiding the video tokens outside it."""

    def __init__(self, tokenizer, keys: Sequence[VideoKeys], prompt_length: int) -> None:
        self.keys = list(keys)
        self.lines = [LineWindows(tokenizer) for _ in self.keys]
        self.S = prompt_length
        self._windows: list[tuple[float, float] | None] = [None] * len(self.keys)
        self._visible: torch.Tensor | None = None  # the mask of the windows above

    def __call__(self, next_ids: torch.Tensor) -> torch.Tensor | None:
        windows = [lines.push(int(t)) for lines, t in zip(self.lines, next_ids.tolist())]
        if windows == self._windows:  # most steps: every row still in the same line
            return self._visible
        self._windows = windows
        self._visible = None
        if any(w is not None for w in windows):
            self._visible = torch.ones(len(windows), self.S, dtype=torch.bool)
            for row, window in enumerate(windows):
                if window is not None:
                    self._visible[row, torch.from_numpy(self.keys[row].hidden(window))] = False
        return self._visible
