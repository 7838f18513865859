"""`vcap data import / export / check`: every format from fixtures written here from its documented
layout (a few records each, malformed ones and missing videos included), round trips through the
frameworks' formats, and the check over good and bad videos."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from vcap.cli import main
from vcap.data import read_manifest

from ..media import make_bad_files


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """A dataset's video folder, laid out as each dataset ships its files (2-second clips)."""
    from vcap.recipes.synthetic import ClipAttributes, render_frames, write_mp4

    root = tmp_path_factory.mktemp("videos")
    frames = render_frames(ClipAttributes("circle", "red", 1, "left_to_right", "large", "black"), 64, 16)
    for name in ("video0.mp4", "video2.mp4", "abc_000010_000020.mp4", "QOlSCBRmfWY.mp4", "v_second.mp4",
                 "training/101/GLd3aX16zBg.mp4", "006001_006050/1066674784.mp4", "academic/clip_a.mp4",
                 "clips/a.mp4", "clips/b.mp4", "mixkit/mixkit-abc.mp4", "pexels-7.mp4"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_mp4(frames, root / name, 8)
    return root


def write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def run_import(capsys, fmt: str, source: Path, videos: Path, out: Path, *options: str) -> tuple[int, str, str]:
    code = main(["data", "import", fmt, str(source), "--videos", str(videos), "--out", str(out), *options])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_msrvtt_splits_languages_malformed_and_missing(tmp_path, videos, capsys):
    source = write(tmp_path / "train_val_videodatainfo.json", {
        "videos": [{"video_id": "video0", "split": "train", "start time": 10.0, "end time": 12.0},
                   {"video_id": "video1", "split": "train", "start time": 0, "end time": 2},  # no file
                   {"video_id": "video2", "split": "validate", "start time": 0, "end time": 2}],
        "sentences": [{"sen_id": 0, "video_id": "video0", "caption": "a red  circle moves"},
                      {"sen_id": 1, "video_id": "video0", "caption": "빨간 원이 움직입니다"},
                      {"sen_id": 2, "video_id": "video1", "caption": "a circle"},
                      {"sen_id": 3, "video_id": "video2", "caption": "validation caption"},
                      {"sen_id": 4, "video_id": "video0", "caption": ""},
                      {"sen_id": 5, "video_id": "video0", "caption": "一个红色的圆"}]})
    out = tmp_path / "out" / "train.jsonl"
    code, said, err = run_import(capsys, "msrvtt", source, videos, out, "--split", "train")
    assert code == 1  # a malformed record was skipped
    assert f"{source}: sentences[4]: 'caption' must be non-empty text" in err
    assert "skipped 1 caption(s): not Korean or English" in err
    assert "2 samples from 4 records" in said and "1 record(s) without their video" in said
    samples = read_manifest(out)
    assert [(s.video.resolve(), s.lang, s.caption) for s in samples] == [
        (videos / "video0.mp4", "en", "a red circle moves"), (videos / "video0.mp4", "ko", "빨간 원이 움직입니다")]
    assert not os.path.isabs(lines(out)[0]["video"])  # relative to the manifest's folder
    assert lines(out)[0]["source"] == {"dataset": "msrvtt", "video_id": "video0", "sen_id": 0, "split": "train"}
    missing = lines(out.with_name("train.jsonl.missing.jsonl"))
    assert missing == [{"source": str(source), "where": "sentences[2]", "looked_for": ["video1.mp4"]}]
    code, said, _ = run_import(capsys, "msrvtt", source, videos, tmp_path / "val.jsonl", "--split", "validate")
    assert code == 0 and [s.caption for s in read_manifest(tmp_path / "val.jsonl")] == ["validation caption"]
    assert not (tmp_path / "val.jsonl.missing.jsonl").exists()


def test_strict_writes_nothing_and_a_foreign_file_is_never_replaced(tmp_path, videos, capsys):
    source = write(tmp_path / "vatex.json", [{"videoID": "abc_000010_000020", "enCap": ["a"]},
                                             {"videoID": "gone_000000_000010", "enCap": ["b"]}])
    out = tmp_path / "strict.jsonl"
    code, _, err = run_import(capsys, "vatex", source, videos, out, "--strict")
    assert code == 1 and "nothing written" in err and not out.exists()
    mine = write(tmp_path / "mine.jsonl", '{"video": "x.mp4", "caption": "my own", "lang": "en"}\n')
    code, _, err = run_import(capsys, "vatex", source, videos, mine)
    assert code == 2 and "exists and is not a manifest vcap wrote" in err
    assert mine.read_text() == '{"video": "x.mp4", "caption": "my own", "lang": "en"}\n'
    assert main(["data", "import", "msrvtt", str(source), "--videos", str(videos), "--out", str(out)]) == 2  # a list
    assert "expected an object" in capsys.readouterr().err


def test_vatex_english_only(tmp_path, videos, capsys):
    source = write(tmp_path / "vatex_training_v1.0.json", [
        {"videoID": "abc_000010_000020", "enCap": ["A man plays.", "A person plays."], "chCap": ["一个男人", "一个人"]},
        {"videoID": "abc_000010_000020", "chCap": ["没有英文"]}])
    code, said, err = run_import(capsys, "vatex", source, videos, tmp_path / "vatex.jsonl")
    assert code == 1 and "[1]: 'enCap' must be a list" in err
    assert "skipped 2 caption(s): Chinese (VATEX chCap)" in err
    assert [(s.caption, s.lang) for s in read_manifest(tmp_path / "vatex.jsonl")] == [
        ("A man plays.", "en"), ("A person plays.", "en")]


def test_activitynet_events(tmp_path, videos, capsys):
    source = write(tmp_path / "train.json", {
        "v_QOlSCBRmfWY": {"duration": 2.0, "timestamps": [[1.0, 2.0], [0.0, 1.06]],
                          "sentences": ["Then it stops.", " A circle   moves. "]},  # out of order
        "v_second": {"duration": 2.0, "timestamps": [[0.5, 9.0]], "sentences": ["too long"]},
        "v_third": {"duration": 2.0, "timestamps": [[0, 1]], "sentences": ["a", "b"]}})
    out = tmp_path / "anet.jsonl"
    code, _, err = run_import(capsys, "activitynet", source, videos, out)
    assert code == 1
    assert '["v_second"]: events[0]: ends at 9.0 s, after the video\'s 2 s' in err
    assert '["v_third"]: \'timestamps\' and \'sentences\' must be lists of the same length' in err
    (record,) = lines(out)
    assert record["video"].endswith("QOlSCBRmfWY.mp4")  # found without the v_ prefix
    assert record["events"] == [{"start": 0.0, "end": 1.06, "caption": "A circle moves."},
                                {"start": 1.0, "end": 2.0, "caption": "Then it stops."}]
    assert record["caption"] == "0:00.0 - 0:01.1: A circle moves.\n0:01.0 - 0:02.0: Then it stops."
    assert read_manifest(out)[0].extra["events"] == record["events"]  # the manifest reader validates them


def test_youcook2_subset_and_nested_files(tmp_path, videos, capsys):
    source = write(tmp_path / "youcookii_annotations_trainval.json", {"database": {
        "GLd3aX16zBg": {"duration": 2.0, "subset": "training", "recipe_type": "101",
                        "annotations": [{"id": 0, "segment": [0, 1], "sentence": "spread butter"},
                                        {"id": 1, "segment": [1, 2], "sentence": "add bread"}]},
        "val0": {"duration": 2.0, "subset": "validation", "annotations": [{"id": 0, "segment": [0, 1], "sentence": "x"}]},
        "bad": {"duration": 2.0, "subset": "training", "annotations": [{"id": 0, "segment": [1], "sentence": "x"}]}}})
    code, _, err = run_import(capsys, "youcook2", source, videos, tmp_path / "yc.jsonl", "--split", "training")
    assert code == 1 and 'database["bad"]: each segment must be [start, end]' in err
    (record,) = lines(tmp_path / "yc.jsonl")
    assert record["video"].endswith("training/101/GLd3aX16zBg.mp4")  # found by name below --videos
    assert [e["caption"] for e in record["events"]] == ["spread butter", "add bread"]
    assert record["source"]["subset"] == "training"


def test_webvid_csv(tmp_path, videos, capsys):
    source = tmp_path / "results_2M_val.csv"
    with open(source, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["videoid", "contentUrl", "duration", "page_dir", "name"])
        w.writerow(["1066674784", "https://example.invalid/1.mp4", "PT00H00M11S", "006001_006050", "Aerial shot of a city"])
        w.writerow(["2", "https://example.invalid/2.mp4", "PT00H00M05S", "006001_006050", ""])
        w.writerow(["3", "u", "PT5S", "006001_006050", "extra", "field"])
        w.writerow(["pexels-7", "u", "PT2S", "elsewhere", "Found by name"])
    code, _, err = run_import(capsys, "webvid", source, videos, tmp_path / "webvid.jsonl")
    assert code == 1 and "line 3: needs 'videoid' and a non-empty 'name'" in err and "line 4:" in err
    records = lines(tmp_path / "webvid.jsonl")
    assert [r["caption"] for r in records] == ["Aerial shot of a city", "Found by name"]
    assert records[0]["video"].endswith("006001_006050/1066674784.mp4")
    write(tmp_path / "other.csv", "id,caption\n1,x\n")
    assert run_import(capsys, "webvid", tmp_path / "other.csv", videos, tmp_path / "o.jsonl")[0] == 2


def test_llava_video_conversations(tmp_path, videos, capsys):
    source = write(tmp_path / "0_30_s_academic_oe_v0_1_qa_processed.json", [
        {"id": "a1", "data_source": "academic", "video": "academic/clip_a.mp4", "conversations": [
            {"from": "human", "value": "<image>\nWhat moves?"}, {"from": "gpt", "value": "A red circle."},
            {"from": "human", "value": "Which way?"}, {"from": "gpt", "value": "To the right."}]},
        {"id": "a2", "video": "academic/clip_a.mp4", "conversations": [{"from": "gpt", "value": "no question"}]},
        {"id": "a3", "video": "academic/clip_a.mp4", "conversations": [
            {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}, {"from": "human", "value": "<image> again"},
            {"from": "gpt", "value": "B"}]}])
    code, _, err = run_import(capsys, "llava-video", source, videos, tmp_path / "llava.jsonl")
    assert code == 1 and "[1]: 'conversations' must alternate" in err and "[2]: turn 1: the video placeholder" in err
    (sample,) = read_manifest(tmp_path / "llava.jsonl")
    assert sample.turns == [("What moves?", "A red circle."), ("Which way?", "To the right.")] and sample.lang == "en"
    assert lines(tmp_path / "llava.jsonl")[0]["conversations"][0]["value"] == "<video>\nWhat moves?"


def test_sharegpt_messages(tmp_path, videos, capsys):
    source = write(tmp_path / "mllm_video_demo.json", [
        {"messages": [{"role": "system", "content": "You are helpful."},
                      {"role": "user", "content": "<video>이 영상을 설명해 주세요."},
                      {"role": "assistant", "content": "빨간 원이 오른쪽으로 움직입니다."}], "videos": ["clips/a.mp4"]},
        {"messages": [{"role": "user", "content": "<video>Two?"}, {"role": "assistant", "content": "Yes."}],
         "videos": ["clips/a.mp4", "clips/b.mp4"]},
        {"messages": [{"role": "user", "content": "<video>Where?"}, {"role": "assistant", "content": "Here."}],
         "videos": [str(videos / "clips/b.mp4")]}])  # an absolute path
    code, _, err = run_import(capsys, "sharegpt", source, videos, tmp_path / "sg.jsonl")
    assert code == 1 and "[1]: 'videos' must list exactly one video" in err
    samples = read_manifest(tmp_path / "sg.jsonl")
    assert [(s.video.name, s.lang, s.turns) for s in samples] == [
        ("a.mp4", "ko", [("이 영상을 설명해 주세요.", "빨간 원이 오른쪽으로 움직입니다.")]), ("b.mp4", "en", [("Where?", "Here.")])]


def test_sharegpt4video_whole_video_caption(tmp_path, videos, capsys):
    source = write(tmp_path / "sharegpt4video_40k.jsonl", "\n".join(json.dumps(r) for r in [
        {"video_id": "mixkit-abc", "video_path": "mixkit/mixkit-abc.mp4",
         "captions": [{"idx": "0", "content": "first frames"}, {"idx": "-1", "content": "The whole video."}]},
        {"video_id": "pexels-7", "captions": [{"idx": -1, "content": "Found by its id."}]},
        {"video_id": "x", "captions": [{"idx": "0", "content": "no whole caption"}]}]) + "\n{not json\n")
    code, _, err = run_import(capsys, "sharegpt4video", source, videos, tmp_path / "s4v.jsonl")
    assert code == 1 and "line 3: needs exactly one whole-video caption" in err and "line 4: not valid JSON" in err
    assert [(s.video.name, s.caption) for s in read_manifest(tmp_path / "s4v.jsonl")] == [
        ("mixkit-abc.mp4", "The whole video."), ("pexels-7.mp4", "Found by its id.")]


def same_samples(a: Path, b: Path) -> None:
    left, right = read_manifest(a), read_manifest(b)
    assert [(s.video.resolve(), s.lang, s.turns) for s in left] == [(s.video.resolve(), s.lang, s.turns) for s in right]


def test_round_trips_through_sharegpt_and_llava(tmp_path, data, capsys):
    manifest = data["train"]  # the synthetic set: Korean and English captions
    exported = tmp_path / "export" / "train.sharegpt.json"
    assert main(["data", "export", str(manifest), "--format", "sharegpt", "--out", str(exported)]) == 0
    record = json.loads(exported.read_text(encoding="utf-8"))[0]
    assert set(record) == {"messages", "videos", "lang"} and record["messages"][0]["content"].startswith("<video>")
    assert run_import(capsys, "sharegpt", exported, exported.parent, tmp_path / "back.jsonl")[0] == 0
    same_samples(manifest, tmp_path / "back.jsonl")
    llava = tmp_path / "train.llava.json"
    assert main(["data", "export", str(manifest), "--format", "llava", "--out", str(llava)]) == 0
    assert json.loads(llava.read_text(encoding="utf-8"))[0]["conversations"][0]["value"].startswith("<image>\n")
    assert run_import(capsys, "llava-video", llava, tmp_path, tmp_path / "back2.jsonl")[0] == 0
    same_samples(manifest, tmp_path / "back2.jsonl")
    assert main(["data", "export", str(manifest), "--format", "llava", "--out", str(llava)]) == 2  # never replaced
    assert "never replaces a file" in capsys.readouterr().err


def test_check_reports_bad_videos_lines_and_events(tmp_path, videos, capsys):
    bad = make_bad_files(tmp_path / "bad")
    good = videos / "clips" / "a.mp4"
    records = [{"video": str(good), "caption": "good", "lang": "en"},
               {"video": str(good), "caption": "좋은 예", "lang": "ko"},
               {"video": str(good), "caption": "late", "lang": "en",
                "events": [{"start": 0.5, "end": 5.0, "caption": "after the end"}]}]
    records += [{"video": str(path), "caption": name, "lang": "en"} for name, path in sorted(bad.items())]
    manifest = write(tmp_path / "train.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in records)
                     + '\n{"video": "x.mp4"}\nnot json\n')
    cache = tmp_path / "cache.jsonl"
    code = main(["data", "check", str(manifest), "--cache", str(cache), "--workers", "2", "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    clean = lines(tmp_path / "train.clean.jsonl")
    assert [r["caption"] for r in clean] == ["good", "좋은 예"]
    assert (tmp_path / clean[0]["video"]).resolve() == good.resolve()  # relative to the clean manifest
    rejected = {r["line"]: r["reason"] for r in lines(tmp_path / "train.rejected.jsonl")}
    assert len(rejected) == 1 + len(bad) + 2
    assert "ends at 5.0 s, after the video's 2 s" in rejected[3]
    assert rejected[len(records) + 1].startswith("needs a non-empty 'caption'")
    assert rejected[len(records) + 2].startswith("not valid JSON")
    by_name = {Path(r["video"]).stem: r["reason"] for r in lines(tmp_path / "train.rejected.jsonl") if r["video"]}
    assert "no such file" in by_name["missing"] and "empty" in by_name["zero_bytes"]
    assert all(by_name[path.stem] for path in bad.values()) and "not a file" in by_name["folder"]
    assert "| train | en | " in out and "| train | ko | 1 | 1 | " in out and "64x64 (1)" in out
    assert "rejected samples, by reason:" in out
    # a rerun probes only what is new or changed
    probed = len(lines(cache))
    assert main(["data", "check", str(manifest), "--cache", str(cache), "--quiet"]) == 1
    assert len(lines(cache)) == probed
    os.utime(good, ns=(good.stat().st_atime_ns, good.stat().st_mtime_ns + 10**9))
    assert main(["data", "check", str(manifest), "--cache", str(cache), "--quiet"]) == 1
    assert [Path(e["path"]).name for e in lines(cache)[probed:]] == ["a.mp4"]
    capsys.readouterr()


def test_check_on_a_clean_set_with_visual_tokens(tmp_path, data, capsys):
    from vcap.builder import save_captioner

    from ..tiny import tiny_captioner

    captioner = tiny_captioner()
    save_captioner(captioner, tmp_path / "captioner")
    code = main(["data", "check", str(data["train"]), str(data["val"]), "--out-dir", str(tmp_path / "checked"),
                 "--captioner", str(tmp_path / "captioner"), "--cache", str(tmp_path / "cache.jsonl"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    tokens = captioner.num_video_tokens(captioner.config.frames.num_frames)
    assert f"| {tokens} / {tokens} / {tokens} |" in out and "| val | ko | 2 | 2 |" in out
    same_samples(data["train"], tmp_path / "checked" / "train.clean.jsonl")
    assert lines(tmp_path / "checked" / "train.rejected.jsonl") == []


def test_data_command_help_and_mistakes(capsys):
    assert main(["data", "--help"]) == 0
    assert "vcap data import" in capsys.readouterr().out
    assert main(["data"]) == 2 and main(["data", "convert"]) == 2
    assert "choose one of check, export, import" in capsys.readouterr().err
    assert main(["data", "import", "--help"]) == 0
    assert "msrvtt" in capsys.readouterr().out


def test_event_text_and_validation():
    from vcap.events import check_events, clock, events_text

    assert [clock(t) for t in (0, 2.5, 61.25, 600.04)] == ["0:00.0", "0:02.5", "1:01.2", "10:00.0"]
    events = check_events([{"start": 3, "end": 6.2, "caption": "b"}, {"start": 0, "end": 3, "caption": " a "}], 6.0)
    assert events_text(events) == "0:00.0 - 0:03.0: a\n0:03.0 - 0:06.0: b"  # sorted; the end clipped to the video
    for bad, message in [([], "non-empty list"), ([{"start": 2, "end": 1, "caption": "x"}], "start < end"),
                         ([{"start": -1, "end": 1, "caption": "x"}], "start < end"),
                         ([{"start": 0, "end": float("nan"), "caption": "x"}], "numbers of seconds"),
                         ([{"start": 0, "end": 1, "caption": " "}], "non-empty text"), (["x"], "an object")]:
        with pytest.raises(ValueError, match=message):
            check_events(bad)
