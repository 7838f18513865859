"""Progress bars for long work: live on a terminal, a few whole lines anywhere else.

On a terminal this is tqdm's usual bar. When stderr is a file or a pipe (a log, CI, ``nohup``),
tqdm would write a carriage-return update per item, which makes one unreadable line; instead the
bar prints a plain line at every tenth of the work (and at the end), so a log shows progress as
it goes and stays short.
"""

from __future__ import annotations

import math
import re
import sys
from typing import Any

_COUNT = re.compile(r"\b\d+/\d+\b")  # tqdm's "done/total"


class _Lines:
    """A stream wrapper that turns tqdm's carriage-return refreshes into whole lines, one per count."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        text = text.replace("\r", "").replace("\x1b[A", "").strip()
        count = _COUNT.search(text)
        key = count.group() if count else text
        if text and key != self.last:
            self.stream.write(text + "\n")
            self.last = key

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True, **kwargs: Any):
    """A tqdm bar over ``total`` items (disabled when ``enabled`` is false)."""
    from tqdm import tqdm

    stream = kwargs.pop("file", sys.stderr)
    if not enabled or stream.isatty():
        return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=stream, dynamic_ncols=True, **kwargs)
    step = max(1, math.ceil((total or 10) / 10))
    return tqdm(total=total, desc=desc, unit=unit, file=_Lines(stream), ascii=True, ncols=100,
                mininterval=0, miniters=step, maxinterval=float("inf"), **kwargs)
