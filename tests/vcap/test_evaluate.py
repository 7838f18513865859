"""Evaluation: caption metrics (pycocoevalcap, Kiwi for Korean), the attribute judge, `vcap eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vcap.cli import main


def test_caption_scores_and_korean_tokens():
    from vcap.evaluate import Tokenizer, caption_scores

    tok = Tokenizer()
    assert tok("Two large blue triangles move, from top to bottom.", "en") == "two large blue triangles move from top to bottom"
    assert tok("검은색 배경에서 움직입니다.", "ko").split()[:3] == ["검은색", "배경", "에서"]
    refs = {0: ["a red circle moves left"], 1: ["two blue squares move up"]}
    perfect = caption_scores(refs, {0: "a red circle moves left", 1: "two blue squares move up"}, with_meteor=False)
    assert perfect["BLEU-1"] == pytest.approx(1.0) and perfect["ROUGE-L"] == pytest.approx(1.0)
    wrong = caption_scores(refs, {0: "three green triangles", 1: "nothing here at all"}, with_meteor=False)
    assert wrong["BLEU-1"] < 0.1 and wrong["CIDEr-D"] < perfect["CIDEr-D"]


@pytest.fixture(scope="module")
def captioner_dir(tmp_path_factory):
    from vcap.builder import save_captioner

    from ..tiny import tiny_captioner

    folder = tmp_path_factory.mktemp("eval") / "captioner"
    save_captioner(tiny_captioner(), folder)
    return folder


def test_vcap_eval_reports_metrics_and_the_judged_accuracy(captioner_dir, data, tmp_path, capsys, monkeypatch):
    """The judge sees each caption: here the model "says" the reference in Korean and a wrong
    caption in English, so the report must give 1 and 0 (and the same on the unseen clips)."""
    from vcap.model import CaptionResult, VideoCaptioner

    rows = [json.loads(line) for line in Path(data["test"]).read_text().splitlines()]
    reference = {(r["video"].split("/")[-1], r["lang"]): r["caption"] for r in rows}

    def scripted(self, clips, options, sources=None, **kwargs):
        return [CaptionResult(reference[(Path(src).name, "ko")] if options.lang == "ko" else "A dog barks.", "",
                              options.lang, "", src, 4, [], 1.0, 5) for src in sources]

    monkeypatch.setattr(VideoCaptioner, "caption_frames", scripted)
    out, report_path = tmp_path / "eval.jsonl", tmp_path / "report.json"
    assert main(["eval", str(captioner_dir), str(data["test"]), "--out", str(out), "--report", str(report_path),
                 "--quiet"]) == 0
    report = json.loads(report_path.read_text())
    assert report["captions"] == len(out.read_text().splitlines()) == 8 and report["errors"] == 0
    assert report["ko"]["attribute_accuracy"] == 1.0 and report["en"]["attribute_accuracy"] == 0.0
    assert report["ko"]["attribute_accuracy_unseen"] == 1.0 and report["all"]["attribute_accuracy"] == 0.5
    assert report["ko"]["BLEU-4"] == pytest.approx(1.0) and report["en"]["BLEU-4"] < 0.1
    printed = capsys.readouterr().out
    assert "| ko |" in printed and "CIDEr-D" in printed
    assert main(["eval", str(captioner_dir), str(data["test"]), "--out", str(out), "--report", str(report_path),
                 "--judge", "none", "--quiet"]) == 0
    assert "attribute_accuracy" not in json.loads(report_path.read_text())["ko"]


def test_eval_checks_where_it_writes_before_captioning(captioner_dir, data, tmp_path, capsys, monkeypatch):
    from vcap.model import VideoCaptioner

    calls = []
    monkeypatch.setattr(VideoCaptioner, "caption_frames", lambda self, *a, **k: calls.append(1) or [])
    manifest = tmp_path / "test.jsonl"
    manifest.write_text(Path(data["test"]).read_text().replace('"video": "', f'"video": "{Path(data["test"]).parent}/'))
    (tmp_path / "test.eval.jsonl").mkdir()  # where the default output would go is a folder
    assert main(["eval", str(captioner_dir), str(manifest), "--quiet"]) == 2
    assert "is a folder" in capsys.readouterr().err
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    assert main(["eval", str(captioner_dir), str(manifest), "--out", str(blocker / "out.jsonl"), "--quiet"]) == 2
    assert "cannot write in" in capsys.readouterr().err
    before = manifest.read_bytes()
    assert main(["eval", str(captioner_dir), str(manifest), "--out", str(manifest), "--quiet"]) == 2
    assert "is not a per-caption evaluation (JSONL) vcap wrote" in capsys.readouterr().err
    assert manifest.read_bytes() == before
    assert main(["eval", str(captioner_dir), str(manifest), "--out", str(tmp_path / "e.jsonl"), "--report",
                 str(manifest), "--quiet"]) == 2
    assert manifest.read_bytes() == before and calls == []


def test_eval_leaves_meteor_off_unless_asked(captioner_dir, data, tmp_path, monkeypatch, capsys):
    import shutil

    import pycocoevalcap.meteor.meteor as meteor

    monkeypatch.setattr(meteor, "Meteor", lambda: (_ for _ in ()).throw(AssertionError("METEOR started")))
    manifest = tmp_path / "test.jsonl"
    manifest.write_text(Path(data["test"]).read_text().replace('"video": "', f'"video": "{Path(data["test"]).parent}/'))
    report = tmp_path / "report.json"
    assert main(["eval", str(captioner_dir), str(manifest), "--report", str(report), "--quiet"]) == 0
    assert all("METEOR" not in json.loads(report.read_text())[lang] for lang in ("ko", "en", "all"))
    if shutil.which("java") is None:
        assert main(["eval", str(captioner_dir), str(manifest), "--meteor", "--quiet"]) == 2
        assert "needs Java" in capsys.readouterr().err
