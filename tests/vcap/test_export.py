"""Export: a run's adapter merged into a self-contained captioner folder (checked against
transformers and peft), written only where it may be."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from vcap.cli import main
from vcap.config_io import load_config
from vcap.data import read_manifest

from .trainkit import run_cfg, tiny_run, write_yaml


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, data):
    from vcap.train import train

    out = tmp_path_factory.mktemp("lora_run")
    cfg = run_cfg(data, out / "run", stage="lora", epochs=2, lr=1e-2, projector_lr=3e-3,
                  lora={"r": 4, "alpha": 8, "dropout": 0.0})
    return train(cfg, progress=False)


def test_export_merges_the_adapter_and_transformers_loads_it(tmp_path, lora_run, data):
    from peft import PeftModel
    from transformers import Qwen3ForCausalLM

    from vcap.checkpoint import latest_checkpoint, load_trainable_weights
    from vcap.cli import main
    from vcap.builder import build_captioner, load_captioner
    from vcap.train import seed_everything

    assert main(["export", str(lora_run), str(tmp_path / "captioner")]) == 0
    exported = load_captioner(tmp_path / "captioner")
    assert not hasattr(exported.language_model, "peft_config")  # merged: a plain Qwen3 model
    reference = Qwen3ForCausalLM.from_pretrained(tmp_path / "captioner" / "language_model").eval()
    ids = torch.tensor([exported.tokenizer.encode("검은색 배경에서 큰 파란색 삼각형")])
    with torch.no_grad():
        assert torch.allclose(exported.backbone(ids), reference(ids).logits, atol=1e-4)

    # the unmerged run (peft's own adapter application) captions exactly as the export does
    checkpoint = latest_checkpoint(lora_run)
    cfg = load_config(checkpoint / "config.yaml")
    seed_everything(cfg.train.seed)
    unmerged = build_captioner(cfg.model)
    unmerged.language_model = PeftModel.from_pretrained(unmerged.language_model, str(checkpoint / "adapter"))
    load_trainable_weights(checkpoint, unmerged, "projector")
    unmerged.eval()
    videos = [str(s.video) for s in read_manifest(data["test"])[:4:2]]
    assert [r.caption for r in exported.caption(videos, lang="en")] == [r.caption for r in unmerged.caption(videos, lang="en")]
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    config = write_yaml(out.parent / "run.yaml", tiny_run(data, out, stage="lora", max_steps=2,
                                                          lora={"r": 2, "alpha": 4, "dropout": 0.0}))
    assert main(["train", str(config), "--quiet"]) == 0
    return out


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


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
    from vcap.builder import load_captioner

    captioner = load_captioner(tmp_path / "elsewhere")  # no external path needed
    assert all(p.is_relative_to((tmp_path / "elsewhere").resolve()) for p in captioner.sources)


def test_export_writes_the_base_weights_dtype(data, tmp_path):
    """A bfloat16 base with float32 adapters exports a bfloat16 language model that transformers loads."""
    from safetensors.torch import load_file
    from transformers import Qwen3ForCausalLM

    from vcap.train import train

    cfg = run_cfg(data, tmp_path / "run", stage="lora", max_steps=2, lr=1e-2, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    cfg.model.dtype = "bfloat16"
    assert main(["export", str(train(cfg, progress=False)), str(tmp_path / "captioner")]) == 0
    weights = load_file(str(tmp_path / "captioner" / "language_model" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert Qwen3ForCausalLM.from_pretrained(tmp_path / "captioner" / "language_model").dtype == torch.bfloat16
