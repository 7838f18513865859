"""Never lose a user's file: export, train and eval write only where they may, and only what is theirs."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vcap.cli import main
from vcap.synthetic import make_dataset

from .trainkit import tiny_run, write_yaml


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    return make_dataset(folder, n_train=6, n_val=2, n_test=2, seed=3, size=64, num_frames=8, progress=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    config = write_yaml(out.parent / "run.yaml", tiny_run(data, out, stage="lora", max_steps=2,
                                                          lora={"r": 2, "alpha": 4, "dropout": 0.0}))
    assert main(["train", str(config), "--quiet"]) == 0
    return out


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- export ---------------------------------------------------------------------------------------------

def test_export_refuses_what_it_must_not_replace(run_dir, tmp_path, capsys, monkeypatch):
    user = tmp_path / "work"
    user.mkdir()
    (user / "notes.txt").write_text("a user's notes")
    before = tree(run_dir)
    cases = {
        str(user): "is not empty and is not a vcap captioner",
        str(run_dir): "inside the training run",
        str(run_dir / "captioner"): "inside the training run",
        str(run_dir.parent): "holds the training run",
    }
    for out, message in cases.items():
        assert main(["export", str(run_dir), out]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    monkeypatch.chdir(user)
    assert main(["export", str(run_dir), "."]) == 2  # the working folder, as `OUT=.` once wiped it
    assert (user / "notes.txt").read_text() == "a user's notes" and tree(run_dir) == before


def test_export_overwrites_only_its_own_captioner(run_dir, tmp_path, capsys):
    out = tmp_path / "captioner"
    assert main(["export", str(run_dir), str(out)]) == 0
    assert main(["export", str(run_dir), str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(run_dir), str(out), "--overwrite"]) == 0
    (out / "README.txt").write_text("my notes about this model")
    assert main(["export", str(run_dir), str(out), "--overwrite"]) == 2
    assert "'README.txt', which vcap did not write" in capsys.readouterr().err
    assert (out / "README.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captioner"]  # no temporary folder left


def test_exported_files_are_readable_by_others(run_dir, tmp_path):
    previous = os.umask(0o022)
    try:
        assert main(["export", str(run_dir), str(tmp_path / "captioner")]) == 0
    finally:
        os.umask(previous)
    for path in [tmp_path / "captioner", *(tmp_path / "captioner").rglob("*")]:
        expected = 0o755 if path.is_dir() else 0o644
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_export_works_from_any_folder_and_the_folder_is_self_contained(data, tmp_path, monkeypatch):
    """A run trained with relative paths exports from elsewhere; the captioner names nothing outside."""
    import shutil

    work = tmp_path / "project"
    (work / "data").mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copy(data[split], work / "data" / f"{split}.jsonl")
        rows = [json.loads(line) for line in (work / "data" / f"{split}.jsonl").read_text().splitlines()]
        (work / "data" / f"{split}.jsonl").write_text("".join(
            json.dumps({**r, "video": str(Path(data[split]).parent / r["video"])}) + "\n" for r in rows))
    config = tiny_run({"train": Path("data/train.jsonl"), "val": Path("data/val.jsonl")}, Path("runs/rel"),
                      stage="projector", max_steps=1)
    monkeypatch.chdir(work)
    write_yaml(work / "run.yaml", config)
    assert main(["train", "run.yaml", "--quiet"]) == 0
    saved = (work / "runs" / "rel" / "config.yaml").read_text()
    assert f"train: {work}/data/train.jsonl" in saved and f"out_dir: {work}/runs/rel" in saved
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(work / "runs" / "rel"), "moved"]) == 0
    shutil.move(tmp_path / "moved", tmp_path / "elsewhere")
    from vcap.model import load_captioner

    captioner = load_captioner(tmp_path / "elsewhere")  # no external path needed
    assert all(p.is_relative_to((tmp_path / "elsewhere").resolve()) for p in captioner.sources)


# -- train ------------------------------------------------------------------------------------------------

def test_a_second_run_never_mixes_with_the_first(data, tmp_path, capsys):
    out = tmp_path / "run"
    first = write_yaml(tmp_path / "a.yaml", tiny_run(data, out, stage="projector", max_steps=4, save_every=4))
    assert main(["train", str(first), "--quiet"]) == 0
    old_weights = load_file(str(out / "step-00000004" / "projector" / "projector.safetensors"))
    second = write_yaml(tmp_path / "b.yaml", tiny_run(data, out, stage="projector", max_steps=2, keep_last=1, lr=0.05,
                                                      save_every=2))
    assert main(["train", str(second), "--quiet"]) == 2
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    assert main(["train", str(second), "--quiet", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("step-")) == ["step-00000002"]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "step-00000004").is_dir()  # the old run, whole, beside it
    new_weights = load_file(str(out / "step-00000002" / "projector" / "projector.safetensors"))
    assert any(not torch.equal(old_weights[k], new_weights[k]) for k in old_weights)


def test_keep_last_never_deletes_the_newest_checkpoint(tmp_path):
    from vcap.checkpoint import save_checkpoint

    from ..tiny import tiny_captioner

    captioner = tiny_captioner()
    optimizer = torch.optim.AdamW(captioner.projector.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    run = tmp_path / "run"
    save_checkpoint(run, 4, captioner, "projector", optimizer, scheduler, {"epoch": 0, "batch": 0}, "", keep_last=1)
    final = save_checkpoint(run, 2, captioner, "projector", optimizer, scheduler, {"epoch": 0, "batch": 0}, "",
                            keep_last=1)
    assert final.is_dir()  # a higher step already there is not "newer" than what was just written


def test_a_folder_that_is_not_a_run_is_refused(data, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("\\documentclass{article}")
    config = write_yaml(tmp_path / "c.yaml", tiny_run(data, folder, stage="projector", max_steps=1))
    for extra in ([], ["--resume"], ["--overwrite"]):
        assert main(["train", str(config), "--quiet", *extra]) == 2
        assert "holds no vcap run" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]


def test_resume_repairs_a_torn_metrics_line(data, tmp_path):
    out = tmp_path / "run"
    config = write_yaml(tmp_path / "r.yaml", tiny_run(data, out, stage="projector", max_steps=2, save_every=2))
    assert main(["train", str(config), "--quiet"]) == 0
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 3, "epoch": 1, "lo')  # a kill in the middle of a line
    assert main(["train", str(config), "train.max_steps=3", "--resume", "--quiet"]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if "loss" in m] == [1, 2, 3]


def test_overrides_and_options_in_any_order_and_lr_is_train_lr(data, tmp_path):
    out = tmp_path / "run"
    config = write_yaml(tmp_path / "o.yaml", tiny_run(data, out, stage="lora", scheduler="constant",
                                                      lora={"r": 2, "alpha": 4}))
    assert main(["train", "--quiet", str(config), "train.max_steps=1", "train.lr=0.004", "train.projector_lr=0.001"]) == 0
    assert main(["train", str(config), "--resume", "train.max_steps=2", "--quiet", "train.lr=0.004",
                 "train.projector_lr=0.001"]) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]
    assert all(m["lr"] == pytest.approx(0.004) and m["projector_lr"] == pytest.approx(0.001)
               for m in metrics if "loss" in m)


# -- eval -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def captioner_dir(tmp_path_factory):
    from vcap.model import save_captioner

    from ..tiny import tiny_captioner

    folder = tmp_path_factory.mktemp("eval") / "captioner"
    save_captioner(tiny_captioner(), folder)
    return folder


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
