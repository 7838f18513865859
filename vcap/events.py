"""Timed events of a video (dense captions): validation and the text a model is trained to write.

An event is ``{"start": seconds, "end": seconds, "caption": text}`` (the ActivityNet Captions
layout, as manifests store it). The target text lists the events one per line,
``m:ss.s - m:ss.s: caption``, in order of start time:

    0:02.5 - 0:05.0: 빨간 원이 왼쪽으로 움직입니다.
    0:05.0 - 0:09.2: 파란 사각형 두 개가 나타납니다.

:func:`parse_events` reads that layout back, strictly, and reports the lines it could not read.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any


def check_events(events: Any, duration: float | None = None, tolerance: float = 0.5) -> list[dict[str, Any]]:
    """Validated events, sorted by start: each needs a finite ``start`` >= 0 below its ``end`` and a
    non-empty ``caption``; with a known ``duration``, no event may end more than ``tolerance``
    seconds after it (ends are clipped to it). Other keys of an event (``attributes``, ...) are kept.
    Raises ValueError naming the event."""
    if not isinstance(events, list) or not events:
        raise ValueError("'events' must be a non-empty list of {start, end, caption}")
    checked = []
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            raise ValueError(f"events[{i}] must be an object with start, end and caption")
        start, end, caption = event.get("start"), event.get("end"), event.get("caption")
        if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in (start, end)):
            raise ValueError(f"events[{i}]: 'start' and 'end' must be numbers of seconds")
        if not 0 <= start < end:
            raise ValueError(f"events[{i}]: needs 0 <= start < end, got {start} - {end}")
        if duration is not None and end > duration + tolerance:
            raise ValueError(f"events[{i}]: ends at {end} s, after the video's {duration:g} s")
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"events[{i}]: 'caption' must be non-empty text")
        end = min(end, duration) if duration is not None else end
        checked.append({**event, "start": float(start), "end": float(end), "caption": " ".join(caption.split())})
    return sorted(checked, key=lambda e: (e["start"], e["end"]))


def clock(seconds: float) -> str:
    """``m:ss.s``: 2.5 -> '0:02.5', 61.25 -> '1:01.2' (tenths, rounded half to even)."""
    tenths = round(seconds * 10)
    minutes, rest = divmod(tenths, 600)
    return f"{minutes}:{rest // 10:02d}.{rest % 10}"


def events_text(events: list[dict[str, Any]]) -> str:
    """The target text: one ``m:ss.s - m:ss.s: caption`` line per event."""
    return "\n".join(f"{clock(e['start'])} - {clock(e['end'])}: {e['caption']}" for e in events)


_TIME = r"(\d+):([0-5]\d\.\d)"  # 'm:ss.s'
_TIMES = rf"{_TIME} - {_TIME}:"  # a line's 'm:ss.s - m:ss.s:'
_LINE = re.compile(rf"^{_TIMES} (\S.*)$")
_HEAD = re.compile(rf"^{_TIME}(?: - {_TIME}:)?")  # a line's start, then (once written) its end


def _seconds(minutes: str, seconds: str) -> float:
    return int(minutes) * 60 + float(seconds)


def line_head(line: str) -> tuple[float | None, tuple[float, float] | None]:
    """What a line being written opens with: (its start in seconds once complete (``0:03.4``, its
    tenths written), else None; its (start, end) once both are (``0:03.4 - 0:06.2:``) and
    start < end, else None). Both None when the line does not open with a time."""
    match = _HEAD.match(line.lstrip())
    if match is None:
        return None, None
    m0, s0, m1, s1 = match.groups()
    start = _seconds(m0, s0)
    if m1 is None:
        return start, None
    end = _seconds(m1, s1)
    return start, ((start, end) if start < end else None)


@dataclass
class ParsedEvents:
    """What :func:`parse_events` read: the events, and the lines it could not read (number, text)."""

    events: list[dict[str, Any]]
    unreadable: list[tuple[int, str]]


def parse_events(text: str) -> ParsedEvents:
    """The events of a model's (or a reference's) text, strictly in the :func:`events_text` layout.

    A line is read only when it is exactly ``m:ss.s - m:ss.s: caption`` with start < end; any
    other non-blank line is reported in ``unreadable`` with its 1-based number. The events keep
    the order of the text (overlapping and out-of-order events are returned as written)."""
    events, unreadable = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.match(line.strip())
        if match is None:
            unreadable.append((number, line))
            continue
        m0, s0, m1, s1, caption = match.groups()
        start, end = _seconds(m0, s0), _seconds(m1, s1)
        if not start < end:
            unreadable.append((number, line))
            continue
        events.append({"start": round(start, 1), "end": round(end, 1), "caption": caption.strip()})
    return ParsedEvents(events, unreadable)
