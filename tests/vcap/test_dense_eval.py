"""Dense captions: the strict event parser and the temporal-IoU matcher on hand-made cases, and
`vcap eval`'s report for a manifest with events."""

from __future__ import annotations

import json

import pytest

from vcap.dense_eval import dense_scores, match_events, tiou
from vcap.events import events_text, line_head, parse_events


def ev(start, end, caption="x", **extra):
    return {"start": start, "end": end, "caption": caption, **extra}


def test_parser_reads_the_layout_strictly():
    text = ("0:00.0 - 0:02.5: a red circle moves\n\n"
            "0:07.5 - 0:09.0: out of order, kept as written\n"
            "0:02.5 - 0:01.0: ends before it starts\n"
            "0:01.0 - 0:04.0: overlaps the first\n"
            "the model rambles\n"
            "0:1.0 - 0:02.0: one-digit seconds\n"
            "0:02.00 - 0:03.0: two decimals\n"
            "1:02.5 - 1:10.0: 두 개가 움직입니다\n"
            "0:03.0 - 0:04.0:no space after the colon")
    parsed = parse_events(text)
    assert parsed.events == [ev(0.0, 2.5, "a red circle moves"), ev(7.5, 9.0, "out of order, kept as written"),
                             ev(1.0, 4.0, "overlaps the first"), ev(62.5, 70.0, "두 개가 움직입니다")]
    assert [n for n, _ in parsed.unreadable] == [4, 6, 7, 8, 10]
    assert parse_events("") == parse_events("\n  \n") and parse_events("").events == []
    events = [ev(0.0, 2.5, "a"), ev(2.5, 6.0, "b")]
    assert parse_events(events_text(events)).events == events  # the target text reads back exactly


@pytest.mark.parametrize("text, head", [
    ("", (None, None)), ("0:0", (None, None)), ("0:02.", (None, None)),  # the start is not complete yet
    ("0:02.3", (2.3, None)), ("0:02.3 - 0:04", (2.3, None)), ("  1:02.3 - 1:0", (62.3, None)),
    ("0:02.3 - 0:04.1:", (2.3, (2.3, 4.1))), ("0:02.3 - 0:04.1: a caption", (2.3, (2.3, 4.1))),
    ("0:04.1 - 0:02.3: backwards", (4.1, None)),  # its start, but no window for backwards times
    ("at 0:02.3 - 0:04.1:", (None, None)), ("0:02 - 0:04:", (None, None)),  # not a line's head
])
def test_line_head_reads_the_times_as_they_are_written(text, head):
    assert line_head(text) == head


def test_matcher_is_one_to_one_best_first():
    assert tiou(ev(0, 2), ev(1, 3)) == pytest.approx(1 / 3) and tiou(ev(0, 1), ev(2, 3)) == 0
    reference = [ev(0, 4), ev(4, 8)]
    # two predictions overlap the first reference: the better one takes it, the other goes unmatched
    predicted = [ev(0, 3), ev(0, 4), ev(5, 8)]
    assert match_events(predicted, reference, 0.5) == [(1, 0, 1.0), (2, 1, 0.75)]
    assert match_events(list(reversed(predicted)), reference, 0.5) == [(1, 0, 1.0), (0, 1, 0.75)]  # order-free
    assert match_events(predicted, reference, 0.8) == [(1, 0, 1.0)]
    assert match_events([], reference, 0.3) == [] and match_events(predicted, [], 0.3) == []


def test_scores_on_hand_made_clips():
    clips = [
        {"lang": "en", "reference": [ev(0, 4, "a", unseen_combination=True), ev(4, 8, "b")],
         "predicted": [ev(0, 4, "a"), ev(4.5, 8, "wrong")]},  # tIoU 1.0 and 0.875
        {"lang": "en", "reference": [ev(0, 3, "c")], "predicted": []},  # empty output
        {"lang": "en", "reference": [ev(0, 2, "d")], "predicted": [ev(0.5, 2.5, "d"), ev(5, 6, "e")]},  # tIoU 0.6
    ]
    scores = dense_scores(clips, judge=lambda caption, lang, event: caption == event["caption"],
                          caption_score=lambda refs, hyps: float(len(hyps)))
    assert (scores["predicted_events"], scores["reference_events"]) == (4, 4)
    assert scores["precision@0.3"] == scores["recall@0.3"] == scores["F1@0.3"] == 0.75
    assert scores["F1@0.5"] == 0.75 and scores["F1@0.7"] == 0.5
    assert scores["mean_tiou"] == pytest.approx((1 + 0.875 + 0.6) / 3)
    assert scores["CIDEr-D"] == pytest.approx((3 + 3 + 2) / 3)  # matched pairs per threshold, averaged
    assert scores["event_attribute_accuracy"] == pytest.approx(2 / 3) and scores["event_attribute_accuracy_unseen"] == 1.0
    nothing = dense_scores([{"lang": "ko", "reference": [ev(0, 1)], "predicted": []}])
    assert nothing["F1@0.5"] == 0.0 and nothing["mean_tiou"] == 0.0 and "CIDEr-D" not in nothing


def test_eval_reports_events(tmp_path, data):
    """`vcap eval`'s scoring of rows for a manifest with events: parsed predictions, matched, judged."""
    from vcap.evaluate import _row, format_report, score
    from vcap.recipes.synthetic import caption as synthetic_caption, judge_attributes, ClipAttributes
    from dataclasses import asdict
    from types import SimpleNamespace

    red = ClipAttributes("circle", "red", 1, "left_to_right", "large", "black")
    blue = ClipAttributes("square", "blue", 2, "top_to_bottom", "small", "gray")
    reference = [ev(0.0, 3.0, synthetic_caption(red, "en"), attributes=asdict(red)),
                 ev(3.0, 7.0, synthetic_caption(blue, "en"), attributes=asdict(blue), unseen_combination=True)]
    sample = SimpleNamespace(caption=events_text(reference), extra={"events": reference})
    said = f"0:00.0 - 0:03.2: {synthetic_caption(red, 'en')}\n0:03.2 - 0:07.0: {synthetic_caption(red, 'en')}\nnoise"
    parsed = parse_events(said)  # what caption_frames gives with dense=True
    result = SimpleNamespace(caption=said, events=parsed.events, unreadable_lines=[t for _, t in parsed.unreadable])
    row = _row(("clip.mp4", "en", True), result, [sample], SimpleNamespace(thinking=False), judge_attributes)
    assert row["unreadable_lines"] == ["noise"] and len(row["events"]) == 2 and row["unseen_combination"]
    report = score([row], tmp_path / "events.jsonl", judge=judge_attributes)
    dense = report["en"]["dense"]
    assert dense["F1@0.5"] == 1.0 and dense["F1@0.7"] == 1.0 and dense["unreadable_lines"] == 1
    assert dense["event_attribute_accuracy"] == 0.5 and dense["event_attribute_accuracy_unseen"] == 0.0
    assert report["en"]["dense_unseen"]["clips"] == 1
    text = format_report(report)
    assert "dense captions (events matched by temporal IoU)" in text and "| en (unseen) | 1 | 2 / 2 |" in text
    json.dumps(report)  # the report is plain JSON


def test_vcap_eval_on_a_manifest_with_events(tmp_path, data, capsys):
    from vcap.builder import save_captioner
    from vcap.cli import main
    from vcap.data import read_manifest

    from ..tiny import tiny_captioner

    save_captioner(tiny_captioner(), tmp_path / "captioner")
    video = read_manifest(data["test"])[0].video
    red = {"shape": "circle", "colour": "red", "count": 1, "direction": "left_to_right", "size": "large",
           "background": "black"}
    events = [ev(0.0, 1.0, "A red circle moves.", attributes=red), ev(1.0, 2.0, "It stops.", attributes=red)]
    manifest = tmp_path / "events.jsonl"
    manifest.write_text(json.dumps({"video": str(video), "lang": "en", "caption": events_text(events),
                                    "events": events}) + "\n", encoding="utf-8")
    code = main(["eval", str(tmp_path / "captioner"), str(manifest), "--report", str(tmp_path / "report.json"),
                 "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["en"]["dense"]["reference_events"] == 2  # a random model's text: scored, not a crash
    from vcap.evaluate import _judge
    from vcap.recipes.synthetic import judge_attributes

    assert _judge("auto", str(manifest)) is judge_attributes  # events with attributes: judged by default
    assert "dense captions" in capsys.readouterr().out
    row = json.loads((tmp_path / "events.eval.jsonl").read_text().splitlines()[0])
    assert row["reference_events"] == events and isinstance(row["unreadable_lines"], list)


def test_dense_option_asks_for_events_and_reads_them(data):
    """GenerationOptions(dense=True): the dense instruction, and the caption read as events; samples
    with events are trained with the same instruction."""
    from vcap.config import DEFAULT_DENSE_INSTRUCTIONS
    from vcap.data import parse_sample
    from vcap.generation import GenerationOptions

    from ..tiny import tiny_captioner

    captioner = tiny_captioner()
    video = read_manifest_video(data)
    plain, dense = captioner.caption(video, lang="ko")[0], captioner.caption(video, lang="ko", dense=True)[0]
    assert plain.events is None and plain.prompt == captioner.config.instructions["ko"]
    assert dense.prompt == DEFAULT_DENSE_INSTRUCTIONS["ko"] and isinstance(dense.events, list)
    assert dense.events == parse_events(dense.caption).events
    assert GenerationOptions().key() == GenerationOptions(dense=False).key() != GenerationOptions(dense=True).key()
    sample = parse_sample({"video": "a.mp4", "lang": "en", "caption": events_text([ev(0, 1, "x")]),
                           "events": [ev(0, 1, "x")]}, video.parent)
    assert sample.turns[0][0] == DEFAULT_DENSE_INSTRUCTIONS["en"]


def read_manifest_video(data):
    from vcap.data import read_manifest

    return read_manifest(data["test"])[0].video
