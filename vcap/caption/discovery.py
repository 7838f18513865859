"""Finding the videos to caption: files, folders, glob patterns and manifests, in a stable order."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp")


def collect_videos(inputs: Sequence[str], extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[Path]:
    """Files, folders (recursive), glob patterns and .jsonl manifests -> unique video paths, in order.

    A path named directly (or in a manifest) is kept whatever its extension, even if it does not
    exist (it is reported as failed); folder and glob matches are filtered by ``extensions``.
    """
    from ..data import ManifestError

    exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    found: list[Path] = []
    seen: set[str] = set()

    def add(path: Path) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            found.append(path)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for video in _walk(path, exts):
                add(video)
        elif path.suffix == ".jsonl" and path.is_file():
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as e:
                raise ManifestError(path, [(0, f"not UTF-8 text ({e.reason})")]) from None
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    video = json.loads(line)["video"]
                    video = Path(video) if os.path.isabs(video) else path.parent / video
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ManifestError(path, [(number, "expected a JSON object with a 'video' key")]) from None
                add(video)
        elif glob.has_magic(item):
            for match in sorted(glob.glob(item, recursive=True)):
                if Path(match).is_file() and Path(match).suffix.lower() in exts:
                    add(Path(match))
        else:
            add(path)  # a file, or a missing path that becomes an error record
    return found


def _walk(root: Path, exts: tuple[str, ...]) -> Iterator[Path]:
    """Videos under ``root``, sorted, following symlinked folders once (loops skipped)."""
    visited: set[str] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in visited:
            continue
        visited.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        subfolders = []
        for entry in entries:
            try:
                if entry.is_dir():
                    subfolders.append(Path(entry.path))
                elif entry.is_file() and Path(entry.name).suffix.lower() in exts:
                    yield Path(entry.path)
            except OSError:
                continue
        stack.extend(reversed(subfolders))
