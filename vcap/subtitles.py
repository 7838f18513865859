"""SRT and WebVTT subtitles from timed captions (``{"start", "end", "caption"}`` in seconds).

Used by ``vcap caption --segments`` and by the demo's timestamped captions. A caption's line breaks
become spaces, and an empty caption is shown as ``...`` (both formats need text in every cue).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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
