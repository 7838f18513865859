"""Synthetic captioned clips: attributes, captions in both languages, splits, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vcap.cli import main
from vcap.recipes.synthetic import (
    ClipAttributes,
    all_combinations,
    caption,
    split_combinations,
    make_dataset,
    make_dense_dataset,
    parse_attributes,
    render_frames,
    states_all_attributes,
)
from vcap.video import read_frames


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_every_caption_states_every_attribute_and_parses_back(lang):
    combos = all_combinations()
    assert len(combos) == 3 * 6 * 3 * 4 * 2 * 2
    for attrs in combos:
        assert states_all_attributes(caption(attrs, lang), lang, attrs)


def test_caption_examples():
    attrs = ClipAttributes("triangle", "blue", 2, "top_to_bottom", "large", "black")
    assert caption(attrs, "en") == "Two large blue triangles move from top to bottom on a black background."
    assert caption(attrs, "ko") == "검은색 배경에서 큰 파란색 삼각형 두 개가 위에서 아래로 움직입니다."
    wrong = "Two large red triangles move from top to bottom on a black background."
    assert not states_all_attributes(wrong, "en", attrs)
    assert parse_attributes("빨간색 원과 파란색 원", "ko")["colour"] is None  # two colours: not stated


def test_frames_show_the_attributes():
    attrs = ClipAttributes("square", "yellow", 1, "left_to_right", "large", "gray")
    frames = render_frames(attrs, size=64, num_frames=8)
    yellow = (frames[..., 0] > 200) & (frames[..., 1] > 200) & (frames[..., 2] < 100)
    xs = [np.nonzero(yellow[t])[1].mean() for t in range(8)]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 20  # it moves left to right
    assert np.all(frames[0, 0, 0] == (120, 120, 120))  # on gray


def test_dataset_splits_hold_out_combinations(tmp_path):
    manifests = make_dataset(tmp_path, n_train=12, n_val=4, n_test=6, seed=3, size=32, num_frames=6, progress=False)
    seen, unseen = split_combinations(3)
    assert len(seen) == 648 and not set(seen) & set(unseen)
    records = {split: [json.loads(line) for line in path.read_text().splitlines()] for split, path in manifests.items()}
    for split in ("train", "val"):
        assert all(ClipAttributes(**r["attributes"]) in seen and not r["unseen_combination"] for r in records[split])
    test_unseen = [ClipAttributes(**r["attributes"]) in set(unseen) for r in records["test"]]
    assert test_unseen == [r["unseen_combination"] for r in records["test"]]
    assert sum(r["unseen_combination"] for r in records["test"]) == 2 * 3  # half of 6 clips, two languages
    assert {r["lang"] for r in records["train"]} == {"en", "ko"} and len(records["train"]) == 24
    first = records["train"][0]
    clip = read_frames(tmp_path / first["video"], num_frames=6)
    assert clip.frames.shape == (6, 32, 32, 3)
    assert first["caption"] == caption(ClipAttributes(**first["attributes"]), first["lang"])


def test_every_value_pair_still_seen_in_training():
    seen, _ = split_combinations(0)
    fields = ("shape", "colour", "count", "direction", "size", "background")
    for i, a in enumerate(fields):
        for b in fields[i + 1:]:
            pairs_seen = {(getattr(c, a), getattr(c, b)) for c in seen}
            pairs_all = {(getattr(c, a), getattr(c, b)) for c in all_combinations()}
            assert pairs_seen == pairs_all, (a, b)


def test_deterministic_for_a_seed(tmp_path):
    a = make_dataset(tmp_path / "a", n_train=3, n_val=1, n_test=2, seed=5, size=32, num_frames=4, progress=False)
    b = make_dataset(tmp_path / "b", n_train=3, n_val=1, n_test=2, seed=5, size=32, num_frames=4, progress=False)
    assert a["train"].read_text() == b["train"].read_text()
    name = json.loads(a["train"].read_text().splitlines()[0])["video"]
    clip_a = read_frames(tmp_path / "a" / name, num_frames=4).frames
    clip_b = read_frames(tmp_path / "b" / name, num_frames=4).frames
    assert np.array_equal(clip_a, clip_b)


@pytest.mark.parametrize("dense", [False, True])
def test_a_rerun_with_other_settings_never_keeps_a_clip_its_manifest_no_longer_describes(tmp_path, dense):
    """Clips already in the folder are kept, but only those rendered from the same plan: with more
    training clips the random draws shift (and another size changes every frame), so an old
    ``train_00000`` would otherwise sit under a manifest line that describes other events."""
    def make(out, n_train, size):
        if dense:
            return make_dense_dataset(out, n_train=n_train, n_val=1, n_test=1, size=size, fps=2, progress=False)
        return make_dataset(out, n_train=n_train, n_val=1, n_test=1, size=size, num_frames=4, progress=False)

    make(tmp_path / "rerun", 2, 32)
    old = {p.name for p in (tmp_path / "rerun").rglob("*.mp4")}
    for n_train, size in ((3, 32), (3, 24)):
        again = make(tmp_path / "rerun", n_train, size)
        fresh = make(tmp_path / f"fresh-{n_train}-{size}", n_train, size)
        for split in ("train", "val", "test"):
            assert again[split].read_text() == fresh[split].read_text()
            for line in again[split].read_text().splitlines():
                name = json.loads(line)["video"]
                assert np.array_equal(read_frames(tmp_path / "rerun" / name, num_frames=3).frames,
                                      read_frames(tmp_path / f"fresh-{n_train}-{size}" / name, num_frames=3).frames)
    used = {Path(json.loads(line)["video"]).name for line in again["train"].read_text().splitlines()}
    assert used - old and old <= {p.name for p in (tmp_path / "rerun").rglob("*.mp4")}  # old clips left in place


def test_vcap_synth_command(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--n", "2", "--n-val", "1", "--n-test", "2", "--size", "32",
                 "--frames", "4", "--quiet"]) == 0
    assert (tmp_path / "train.jsonl").exists() and len(list((tmp_path / "train").glob("*.mp4"))) == 2
    assert "train:" in capsys.readouterr().out


def test_multi_event_clips_for_dense_captions(tmp_path, capsys):
    """`vcap synth --events 2-3`: 6-12 s clips of 2-3 consecutive events at random boundaries, each
    event drawn with its own attributes; captions per event in both languages; half of the test
    events held out; the manifests read back with the dense instruction."""
    from vcap.config import DEFAULT_DENSE_INSTRUCTIONS
    from vcap.data import read_manifest
    from vcap.events import events_text, parse_events
    from vcap.recipes.synthetic import judge_attributes, split_combinations

    out = tmp_path / "dense"
    assert main(["synth", "--out", str(out), "--events", "2-3", "--n", "4", "--n-val", "1", "--n-test", "6",
                 "--size", "64", "--fps", "8", "--quiet"]) == 0
    seen, unseen = split_combinations(0)
    seen_keys = {json.dumps(c.__dict__, sort_keys=True) for c in seen}
    test_events, held_out = 0, 0
    for split in ("train", "val", "test"):
        samples = read_manifest(out / f"{split}.jsonl")
        assert {s.lang for s in samples} == {"en", "ko"}
        for sample in samples:
            events = sample.extra["events"]
            duration = sample.extra["duration"]
            assert 2 <= len(events) <= 3 and 6.0 <= duration <= 12.0
            assert events[0]["start"] == 0.0 and events[-1]["end"] == duration
            assert all(a["end"] == b["start"] and a["end"] - a["start"] >= 1.5 for a, b in zip(events, events[1:]))
            assert sample.caption == events_text(events) and parse_events(sample.caption).events == [
                {k: round(e[k], 1) if k != "caption" else e[k] for k in ("start", "end", "caption")} for e in events]
            assert sample.turns[0][0] == DEFAULT_DENSE_INSTRUCTIONS[sample.lang]
            for e in events:
                from types import SimpleNamespace

                assert judge_attributes(e["caption"], sample.lang, SimpleNamespace(extra=e))  # each caption states all
                key = json.dumps(e["attributes"], sort_keys=True)
                assert (key in seen_keys) != e["unseen_combination"]
                if split == "test" and sample.lang == "en":
                    test_events += 1
                    held_out += e["unseen_combination"]
                if split != "test":
                    assert not e["unseen_combination"]
    assert held_out == round(test_events / 2)
    # the frames change with the event: the middle of each event shows its own background colour
    sample = read_manifest(out / "train.jsonl")[0]
    clip = read_frames(sample.video, strategy="fps", fps=8)
    from vcap.recipes.synthetic import BACKGROUNDS

    for e in sample.extra["events"]:
        frame = clip.frames[int((e["start"] + e["end"]) / 2 * 8)]
        assert np.abs(frame[0, 0].astype(int) - BACKGROUNDS[e["attributes"]["background"]]).max() < 40
    assert main(["synth", "--out", str(tmp_path / "x"), "--events", "3-2"]) == 2
    assert main(["synth", "--out", str(tmp_path / "x"), "--events", "3", "--seconds", "2-4"]) == 2
    assert "cannot hold 3 events" in capsys.readouterr().err
