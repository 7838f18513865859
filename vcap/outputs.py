"""Where vcap writes, and the promise it keeps there: a user's file is never lost.

- Files are written whole or not at all (``qwen3_backbone.files``: a temporary file beside the
  target, synced, renamed), with the mode the umask gives a new file.
- An output that already exists is touched only once it is recognised as vcap's own output of
  the same kind (:func:`check_output_file`, :func:`read_jsonl`); otherwise the command stops with
  an :class:`~vcap.errors.OutputError` naming the file, and the file is left as it was.
- Output files appended to line by line (the caption journal, ``metrics.jsonl``) may end in a
  line torn by a kill; :func:`read_jsonl` cuts only such a tail, and only when it is the start of
  one of vcap's lines.
- Two processes never write one output at once: :class:`OutputLock` is an advisory lock beside it.
- File names that are not valid UTF-8 (Linux allows any bytes but ``/``) are written in JSON with
  each undecodable byte as a ``\\udcXX`` escape, Python's ``surrogateescape`` convention:
  ``os.fsencode(json.loads(line)["path"])`` gives the name's original bytes back.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from qwen3_backbone.files import short_name, umask, write_bytes, write_text

from .errors import OutputError

__all__ = ["OutputError", "OutputLock", "check_output_file", "escape_surrogates", "json_line", "read_jsonl",
           "recognises", "write_bytes", "write_json", "write_jsonl", "write_text"]

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def escape_surrogates(text: str) -> str:
    """``text`` with each lone surrogate (an undecodable byte of a file name) as a ``\\udcXX`` escape."""
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def json_line(record: Any) -> str:
    """One JSON line (UTF-8 text kept readable); a lone surrogate becomes a ``\\udcXX`` escape."""
    return escape_surrogates(json.dumps(record, ensure_ascii=False)) + "\n"


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON atomically."""
    return write_text(path, escape_surrogates(json.dumps(data, indent=2, ensure_ascii=False)) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> Path:
    """Write JSON lines atomically, one object per line."""
    return write_text(path, "".join(json_line(r) for r in records))


# -- reading back what vcap wrote ------------------------------------------------------------------

def read_jsonl(path: Path, is_record: Callable[[Any], bool], first_key: str, what: str,
               repair: bool = False) -> list[Any]:
    """The records of a JSON-lines output vcap wrote (a missing or empty file has none).

    Every whole line must be one of vcap's records (``is_record``), and an unterminated last line
    (a kill in the middle of a write) must start like one (``{"<first_key>": ``); otherwise the
    file is someone else's and OutputError is raised with the file untouched. With ``repair``
    the torn tail is cut off, as the next append would otherwise glue onto it.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    whole, tail = data[:end], data[end:]
    start = f'{{"{first_key}": '.encode()
    records = []
    for number, line in enumerate(whole.split(b"\n")[:-1], 1):
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if record is None or not is_record(record):
            raise OutputError(f"{path}:{number}: not a line of a {what} vcap wrote; vcap leaves this file untouched. "
                              f"Choose another output file (or move this one away).")
        records.append(record)
    if tail and not (tail.startswith(start) or start.startswith(tail)):
        raise OutputError(f"{path}: its last line is not part of a {what} vcap wrote; vcap leaves this file "
                          f"untouched. Choose another output file (or move this one away).")
    if tail and repair:
        with open(path, "r+b") as f:  # drop the line a kill tore (never more)
            f.truncate(len(whole))
    return records


def check_output_file(path: str | os.PathLike, what: str, option: str,
                      is_ours: Callable[[Path], bool] | None = None) -> Path:
    """Check, before any work, that ``path`` can be written and may be: not a folder, in a folder
    vcap can write, and if it exists, recognised by ``is_ours`` as vcap's own (a file vcap cannot
    recognise is never replaced). Creates missing parent folders. Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; give a file name for the {what}")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".vcap-write-check-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{option} {path}: cannot write in {parent} ({e.strerror or e}); "
                          f"choose a folder you can write to") from None
    if path.exists() and is_ours is not None and not is_ours(path):
        raise OutputError(f"{option} {path} exists and is not a {what} vcap wrote; vcap leaves it untouched. "
                          f"Choose another {option} (or move the file away).")
    return path


def recognises(reader: Callable[[Path], Any]) -> Callable[[Path], bool]:
    """An ``is_ours`` test from a reader that raises OutputError on a file that is not vcap's."""
    def is_ours(path: Path) -> bool:
        try:
            reader(path)
        except OutputError:
            return False
        return True

    return is_ours


# -- one writer per output ---------------------------------------------------------------------------

class OutputLock:
    """An advisory lock (``flock``) on a hidden file beside an output, held while it is written.

    A second process asking for the same output fails at once with a message naming the file
    and the process holding it. ``shared=True`` lets several processes of one sharded run hold it
    together (each also locks its own part file). The lock file is removed by the last holder.
    """

    def __init__(self, target: str | os.PathLike, shared: bool = False) -> None:
        target = Path(target)
        self.target, self.shared = target, shared
        self.path = target.with_name(short_name(f".{target.name}.lock"))
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip()
                os.close(fd)
                raise OutputError(
                    f"{self.target} is being written by another vcap process{f' (pid {holder})' if holder else ''}; "
                    f"wait for it to finish, or choose another output") from None
            try:  # the file we locked may have been removed by a holder that just finished: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        if not self.shared:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        import fcntl

        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the last holder removes the lock file
            os.unlink(self.path)
        except (BlockingIOError, FileNotFoundError):
            pass
        finally:
            os.close(fd)
