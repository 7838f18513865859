"""Atomic files and folders: whole or nothing, the umask's permissions, names within the limit."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from qwen3_backbone.files import atomic_folder, short_name, umask, write_bytes


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_and_folders_get_the_umask_mode(tmp_path, umask_022):
    assert umask() == 0o022
    assert mode(write_bytes(tmp_path / "a.bin", b"x")) == 0o644
    with atomic_folder(tmp_path / "folder") as tmp:
        (tmp / "inside.txt").write_text("y")
    assert mode(tmp_path / "folder") == 0o755 and mode(tmp_path / "folder" / "inside.txt") == 0o644
    os.umask(0o077)
    assert mode(write_bytes(tmp_path / "private.bin", b"x")) == 0o600


def test_atomic_folder_never_replaces_contents_unless_asked(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("a user's file")
    with pytest.raises(FileExistsError, match="not empty"):
        with atomic_folder(out) as tmp:
            (tmp / "new.txt").write_text("new")
    assert (out / "mine.txt").read_text() == "a user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it
    with atomic_folder(out, replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_interrupted_folder_leaves_the_old_one(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out) as tmp:
        (tmp / "v1.txt").write_text("1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(out, replace=True) as tmp:
            (tmp / "v2.txt").write_text("2")
            raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == ["v1.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_short_names_fit_and_stay_distinct():
    korean = "가" * 100  # 300 bytes in UTF-8
    name = short_name(f"{korean}.srt")
    assert len(os.fsencode(name)) <= 255 and name.endswith(".srt") and name.startswith("가")
    assert short_name(f"{korean}a.srt") != name  # another long name, another short one
    assert short_name("clip.srt") == "clip.srt"
    undecodable = os.fsdecode(b"\xff" * 300 + b".vtt")
    assert len(os.fsencode(short_name(undecodable))) <= 255


def test_temporary_names_of_long_files_fit(tmp_path):
    longest = "영" * 83 + ".txt"  # 253 bytes: a name the file system takes; its temporary name must fit too
    write_bytes(tmp_path / longest, b"data")
    assert (tmp_path / longest).read_bytes() == b"data"
    with atomic_folder(tmp_path / ("폴" * 84)) as tmp:
        (tmp / "x").write_text("y")
