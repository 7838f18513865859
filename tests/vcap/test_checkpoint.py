"""Checkpoints: written whole or not at all, older ones of the same run pruned, never the newest."""

from __future__ import annotations

import torch


def test_keep_last_never_deletes_the_newest_checkpoint(tmp_path):
    from vcap.checkpoint import save_checkpoint

    from ..tiny import tiny_captioner

    captioner = tiny_captioner()
    optimizer = torch.optim.AdamW(captioner.projector.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    run = tmp_path / "run"
    options = dict(stage="projector", optimizer=optimizer, scheduler=scheduler, state={"epoch": 0, "batch": 0},
                   config_yaml="", keep_last=1)
    save_checkpoint(run, 4, captioner, **options)
    final = save_checkpoint(run, 2, captioner, **options)
    assert final.is_dir()  # a higher step already there is not "newer" than what was just written


def test_sharded_full_stage_checkpoints_resume_start_and_export(data, tmp_path, monkeypatch):
    """Full-stage checkpoints over the shard size are written in shards; resume, init_from and
    export read them back through the one loader (a tiny shard size stands in for 5 GiB)."""
    import json

    from safetensors.torch import load_file

    import vcap.checkpoint as checkpoint
    from vcap.cli import main

    from .trainkit import metrics, tiny_run, write_yaml

    monkeypatch.setattr(checkpoint, "SHARD_BYTES", 200_000)
    config = write_yaml(tmp_path / "full.yaml", tiny_run(data, tmp_path / "full", stage="full", max_steps=2,
                                                        save_every=1, lr=3e-3))
    assert main(["train", str(config), "--quiet"]) == 0
    lm = tmp_path / "full" / "step-00000002" / "language_model"
    index = json.loads((lm / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2  # sharded
    assert main(["train", str(config), "train.max_steps=3", "--resume", "--quiet"]) == 0  # resumes from the shards
    assert [m["step"] for m in metrics(tmp_path / "full") if "loss" in m] == [1, 2, 3]
    later = write_yaml(tmp_path / "next.yaml", tiny_run(data, tmp_path / "next", stage="projector", max_steps=1,
                                                        init_from=str(tmp_path / "full")))
    assert main(["train", str(later), "--quiet"]) == 0  # starts from them (init_from)
    assert main(["export", str(tmp_path / "full"), str(tmp_path / "captioner")]) == 0  # and exports them
    exported = {}
    for shard in (tmp_path / "captioner" / "language_model").glob("*.safetensors"):
        exported.update(load_file(str(shard)))
    trained = {}
    for shard in (tmp_path / "full" / "step-00000003" / "language_model").glob("*.safetensors"):
        trained.update(load_file(str(shard)))
    assert exported.keys() == trained.keys() and all(torch.equal(exported[k], trained[k]) for k in trained)
