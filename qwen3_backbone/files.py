"""Writing files and folders whole or not at all, with the permissions a plain ``open`` gives.

- :func:`write_bytes` / :func:`write_text`: a temporary file beside the target, synced, then
  renamed over it; a kill leaves the old file or the new one, never half of either.
- :func:`atomic_folder`: a temporary folder beside the target, renamed into place when the block
  succeeds. An existing target is replaced only when the caller says so (``replace=True``), and
  then the old folder is swapped out before it is deleted.
- :func:`short_name`: a file name cut to the file system's limit, with a hash of the whole name,
  for names derived from a user's file (subtitles, temporary files).

``tempfile`` makes private files (0600) and folders (0700), and so do some writers of other
libraries (safetensors' ``save_file``); whatever is renamed into place here gets the mode the
process's umask gives a new file or folder (0644 / 0755 under umask 022), everything inside an
atomic folder included, so another account (a web service, a colleague) can read an exported model.

Every package of the project writes through this module (it sits at the bottom of the import
order: ``qwen3_backbone`` <- ``projector`` <- ``vcap``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

NAME_MAX = 255  # bytes in one file name on the usual Linux and macOS file systems


def umask() -> int:
    """The process's umask, read without changing it where the kernel reports it (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it straight back
    os.umask(mask)
    return mask


def name_max(folder: str | os.PathLike) -> int:
    """The longest file name, in bytes, that ``folder``'s file system accepts."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return NAME_MAX


def short_name(name: str, limit: int = NAME_MAX) -> str:
    """``name`` if it fits in ``limit`` bytes, else its start, ``~``, a hash of all of it and its suffix.

    Names are measured as the file system stores them (``os.fsencode``: UTF-8, and the raw
    bytes of a name that is not valid UTF-8); the cut never splits a character. Distinct long
    names stay distinct (the hash), and the same name always gives the same short name.
    """
    if len(os.fsencode(name)) <= limit:
        return name
    suffix = "".join(Path(name).suffixes[-1:])
    if len(os.fsencode(suffix)) > 16:  # not a real extension
        suffix = ""
    tag = "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    room = limit - len(os.fsencode(tag + suffix))
    kept, used = [], 0
    for char in name[: len(name) - len(suffix)]:
        size = len(os.fsencode(char))
        if used + size > room:
            break
        kept.append(char)
        used += size
    return "".join(kept) + tag + suffix


def _temp_prefix(name: str) -> str:
    return f".{short_name(name, 96)}."


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write a file whole or not at all: a temporary file beside it, synced, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically (see :func:`write_bytes`)."""
    return write_bytes(path, text.encode("utf-8"))


def is_empty_folder(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


@contextlib.contextmanager
def atomic_folder(out: str | os.PathLike, prefix: str | None = None, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it becomes ``out`` (one rename), on any
    error or interruption it is deleted. A kill leaves ``out`` as it was, at worst with a hidden
    ``prefix*`` folder beside it (default prefix: ``.<name>.tmp-``).

    ``out`` may be missing or an empty folder. An ``out`` with contents is replaced only with
    ``replace=True`` (the caller has checked that it wrote it): the old folder is renamed aside,
    the new one renamed in, and only then is the old one deleted. Otherwise FileExistsError.
    """
    out = Path(out)
    if out.exists() and not is_empty_folder(out) and not replace:
        raise FileExistsError(f"{out} already exists and is not empty; it was left as it is")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f"{_temp_prefix(out.name)}tmp-", dir=out.parent))
    try:
        yield tmp
        _set_modes(tmp)  # and synced
        old = None
        if out.exists() and not is_empty_folder(out):
            old = Path(tempfile.mkdtemp(prefix=f"{_temp_prefix(out.name)}old-", dir=out.parent))
            os.replace(out, old)  # a rename onto the empty folder just made
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:
                os.replace(old, out)  # put the old folder back
            raise
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _set_modes(folder: Path) -> None:
    """Before ``folder`` is renamed into place: give it and everything in it the modes a plain mkdir
    / open would (the umask's), and sync every file, so the rename never publishes half-written data."""
    mask = umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, names in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in names:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            os.chmod(path, 0o666 & ~mask)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
