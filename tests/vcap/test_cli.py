"""The `vcap` command: one error boundary, honest exit codes, numbers checked where they enter."""

from __future__ import annotations

import json

import pytest

from vcap.cli import main
from vcap.recipes.synthetic import make_dataset

from .trainkit import tiny_run, write_yaml


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synthetic"), n_train=4, n_val=2, n_test=2, seed=5, size=64,
                        num_frames=8, progress=False)


def test_usage_and_unknown_commands(capsys):
    assert main([]) == 2 and "commands:" in capsys.readouterr().err
    assert main(["--help"]) == 0 and "exit codes" in capsys.readouterr().out
    assert main(["captoin"]) == 2 and "did you mean `vcap caption`" in capsys.readouterr().err
    for command in ("train", "caption", "eval", "export", "synth", "quickstart", "demo"):
        assert main([command, "--help"]) == 0
        assert "exit codes" in capsys.readouterr().out


@pytest.mark.parametrize("override, key", [
    ("train.max_grad_norm=-1", "train.max_grad_norm"),  # once trained uphill silently
    ("train.weight_decay=-0.1", "train.weight_decay"),
    ("data.max_samples=0", "data.max_samples"),
    ("train.max_steps=0", "train.max_steps"),
    ("model.frames.size=0", "frames.size"),
    ("train.warmup_steps=-1", "train.warmup_steps"),
    ("train.lrr=1", "train.lrr"),
])
def test_bad_config_values_name_the_key_and_exit_2(data, tmp_path, capsys, override, key):
    config = write_yaml(tmp_path / "run.yaml", tiny_run(data, tmp_path / "run", stage="projector", max_steps=1))
    assert main(["train", str(config), override, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_a_bad_manifest_line_is_named(data, tmp_path, capsys):
    manifest = tmp_path / "train.jsonl"
    lines = data["train"].read_text().splitlines()
    manifest.write_text(lines[0] + "\n{not json\n")
    config = write_yaml(tmp_path / "run.yaml", tiny_run({"train": manifest, "val": data["val"]}, tmp_path / "run",
                                                        stage="projector", max_steps=1))
    assert main(["train", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{manifest}:2: not valid JSON" in err and "Traceback" not in err


def test_an_interrupted_training_exits_130(data, tmp_path, capsys, monkeypatch):
    import vcap.train as training

    monkeypatch.setattr(training, "fit", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    config = write_yaml(tmp_path / "run.yaml", tiny_run(data, tmp_path / "run", stage="projector", max_steps=1))
    assert main(["train", str(config), "--quiet"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_missing_captioner_and_missing_run(data, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing"), str(data["test"]), "--out", str(tmp_path / "e.jsonl"),
                 "--quiet"]) == 2
    assert "not a captioner folder" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "no-run"), str(tmp_path / "out")]) == 2
    assert "no checkpoint in" in capsys.readouterr().err


def test_synth_writes_what_it_says(tmp_path):
    assert main(["synth", "--out", str(tmp_path / "s"), "--n", "3", "--seed", "1", "--quiet"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "s" / "train.jsonl").read_text().splitlines()]
    assert rows and all((tmp_path / "s" / r["video"]).exists() for r in rows)
