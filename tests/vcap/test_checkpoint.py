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
