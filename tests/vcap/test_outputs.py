"""Where vcap writes (vcap/outputs.py): JSON lines for any file name, reading back only vcap's own
files, cutting only a line a kill tore, and one writer per output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vcap.errors import OutputError
from vcap.outputs import OutputLock, check_output_file, json_line, read_jsonl, recognises

ROOT = Path(__file__).resolve().parents[2]


def is_record(record) -> bool:
    return isinstance(record, dict) and "path" in record


def test_json_lines_keep_undecodable_file_names(tmp_path):
    name = os.fsdecode(b"clip-\xff\xfe.mp4")  # a name that is not UTF-8
    line = json_line({"path": name, "caption": "빨간 공"})
    line.encode("utf-8")  # the line itself is valid UTF-8 ...
    assert "\\udcff\\udcfe" in line and "빨간 공" in line  # ... readable Korean, escaped bytes
    assert os.fsencode(json.loads(line)["path"]) == b"clip-\xff\xfe.mp4"  # and the bytes come back


def test_read_back_only_vcap_lines_and_cut_only_a_torn_one(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"path": "a"}\n{"path": "b"}\n{"path": "c", "capt')  # a kill tore the last line
    assert [r["path"] for r in read_jsonl(path, is_record, "path", "test output")] == ["a", "b"]
    assert path.read_text().endswith('"capt')  # reading alone changes nothing
    read_jsonl(path, is_record, "path", "test output", repair=True)
    assert path.read_text() == '{"path": "a"}\n{"path": "b"}\n'
    for foreign in ('{"a": 1}', '{"path": "a"}\nnot json\n', '{"video": "x"}\n', "\n", '{"path": "a"}\n{"x'):
        path.write_text(foreign)
        with pytest.raises(OutputError, match="leaves this file untouched"):
            read_jsonl(path, is_record, "path", "test output", repair=True)
        assert path.read_text() == foreign


def test_check_output_file(tmp_path):
    assert check_output_file(tmp_path / "new" / "out.jsonl", "output", "--out") == tmp_path / "new" / "out.jsonl"
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path, "output", "--out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot write in"):
        check_output_file(tmp_path / "file" / "out.jsonl", "output", "--out")
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"path": "a"}\n')
    ours = recognises(lambda p: read_jsonl(p, is_record, "path", "output"))
    assert check_output_file(mine, "output", "--out", is_ours=ours) == mine
    mine.write_text("a user's text\n")
    with pytest.raises(OutputError, match="is not a test output vcap wrote"):
        check_output_file(mine, "test output", "--out", is_ours=ours)


HOLD = """
import sys, time
from vcap.outputs import OutputLock
with OutputLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_one_writer_per_output(tmp_path):
    out = tmp_path / "out.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=f"being written by another vcap process \\(pid {holder.pid}\\)"):
            with OutputLock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(out):  # the holder is gone: its lock went with it
        with pytest.raises(OutputError, match="being written"):
            with OutputLock(out):
                pass
    assert not (tmp_path / ".out.jsonl.lock").exists()  # the last holder removed the lock file
    with OutputLock(out, shared=True), OutputLock(out, shared=True):  # the parts of one sharded run
        pass
