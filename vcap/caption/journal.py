"""The caption journal: ``vcap caption``'s output, one JSON record per video, and what makes a
record current.

A record's identity is (path, model, settings): the video, the captioner it was made with
(:func:`model_id`) and the options (:meth:`BatchSettings.key`). A video is done when the journal
holds a record with its identity whose ``size`` and ``mtime_ns`` still match the file; a newer
record of the same identity replaces an older one. The journal owns its file: it is opened only
if it is a caption output vcap wrote (else OutputError, the file untouched), a line torn by a kill
is cut on opening, records are appended and synced, and the whole file is rewritten atomically in
input order at the end. ``--format csv`` writes the same records as a table.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..generation import GenerationOptions
from ..outputs import escape_surrogates, json_line, read_jsonl, write_jsonl, write_text

Record = dict[str, Any]


@dataclass(frozen=True)
class BatchSettings:
    """What a caption depends on besides the model: the generation options and the frame sampling."""

    options: GenerationOptions = field(default_factory=GenerationOptions)
    num_frames: int | None = None  # None: the captioner's own frames config
    strategy: str | None = None
    fps: float | None = None
    segments: float | None = None  # seconds per captioned window (None: whole videos)

    def __post_init__(self) -> None:
        from ..errors import UsageError

        if self.num_frames is not None and self.num_frames < 1:
            raise UsageError("frames must be >= 1")
        if self.strategy not in (None, "uniform", "fps"):
            raise UsageError(f"strategy must be uniform or fps, got {self.strategy!r}")
        if (self.fps is not None and self.fps <= 0) or (self.segments is not None and self.segments <= 0):
            raise UsageError("fps and segments must be > 0")

    def key(self) -> str:
        """A short hash of every setting: part of each record's identity."""
        flat = {**self.options.identity(), "num_frames": self.num_frames, "strategy": self.strategy, "fps": self.fps,
                "segments": self.segments}
        return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:12]


def model_id(captioner, name: str | os.PathLike = "captioner") -> str:
    """``name@hash``: the hash covers every file the captioner was built from (path, size and
    modification time, wherever the file lives) and its config, so a changed weight file anywhere
    means new captions."""
    from ..config_io import identity_dict

    digest = hashlib.sha256(json.dumps(identity_dict(captioner.config), sort_keys=True).encode())
    for path in sorted(captioner.sources):
        stat = path.stat()
        digest.update(os.fsencode(str(path)) + f"|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return f"{escape_surrogates(Path(name).name)}@{digest.hexdigest()[:12]}"


def file_identity(path: Path) -> tuple[int | None, int | None]:
    """A video file's size and modification time (None, None if it cannot be read)."""
    try:
        stat = path.stat()
        return stat.st_size, stat.st_mtime_ns
    except OSError:
        return None, None


def identity(record: Record) -> tuple[str, str, str]:
    """The one identity of a record: (path, model, settings)."""
    return record["path"], record["model"], record["settings"]


def is_current(record: Record, video: Path) -> bool:
    """Whether ``record`` was made from the file as it is now."""
    return (record.get("size"), record.get("mtime_ns")) == file_identity(video)


def is_caption_record(record: Any) -> bool:
    return isinstance(record, dict) and {"path", "status", "model", "settings"} <= record.keys()


def read_records(path: Path) -> list[Record]:
    """The records of a ``vcap caption`` JSONL output (a torn last line is ignored); OutputError
    if the file is not one."""
    return read_jsonl(Path(path), is_caption_record, "path", "caption output")


def latest(records: Iterable[Record]) -> dict[tuple[str, str, str], Record]:
    """The newest record of each identity (later records replace earlier ones)."""
    return {identity(r): r for r in records}


def done_record(index: dict[tuple[str, str, str], Record], video: Path, model: str, settings: str,
                retry_failed: bool) -> Record | None:
    """The current record of ``video`` in ``index`` (from :func:`latest`) that makes captioning it
    again unnecessary, if any (with ``retry_failed``, only a success counts)."""
    record = index.get((os.path.abspath(video), model, settings))
    if record is None or not is_current(record, video) or (retry_failed and record["status"] != "ok"):
        return None
    return record


class Journal:
    """Append-only JSONL with whole lines only (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.records = read_jsonl(path, is_caption_record, "path", "caption output", repair=True)
        self._file = open(path, "a", encoding="utf-8")

    def drop_failures(self, model: str, settings: str) -> None:
        """Forget the failures of this model and settings (--retry-failed), so a retried video never
        has two records."""
        kept = [r for r in self.records if r["status"] == "ok" or (r["model"], r["settings"]) != (model, settings)]
        if len(kept) != len(self.records):
            self.rewrite(kept)

    def append(self, records: Sequence[Record]) -> None:
        self._file.write("".join(json_line(r) for r in records))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.extend(records)

    def rewrite(self, records: Sequence[Record]) -> None:
        """Replace the whole file atomically."""
        self._file.close()
        write_jsonl(self.path, records)
        self.records = list(records)
        self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        self._file.close()


# -- the CSV table ---------------------------------------------------------------------------------------

CSV_COLUMNS = ["path", "status", "lang", "caption", "thinking", "duration", "frames", "error_type", "error", "model",
               "prompt", "srt", "vtt"]


def is_caption_csv(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.readline().rstrip("\r\n") == ",".join(CSV_COLUMNS)
    except (OSError, UnicodeDecodeError):
        return False


def write_csv(path: Path, records: Sequence[Record]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for record in records:
        writer.writerow({k: record.get(k, "") for k in CSV_COLUMNS})
    write_text(path, escape_surrogates(buffer.getvalue()))
