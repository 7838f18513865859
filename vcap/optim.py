"""The optimizer and learning-rate schedule of a run: AdamW over the trainable parameters (the
projector with ``train.projector_lr`` when set) and warm-up, then cosine, linear or constant decay
(a ``LambdaLR``, whose state a checkpoint saves and restores exactly)."""

from __future__ import annotations

import math

import torch

from .config import RunConfig


def build_optimizer(cfg: RunConfig, captioner, num_samples: int, world: int):
    t = cfg.train
    projector_params = [p for p in captioner.projector.parameters() if p.requires_grad]
    lm_params = [p for p in captioner.language_model.parameters() if p.requires_grad]
    groups = [{"params": projector_params, "lr": t.projector_lr or t.lr}] if projector_params else []
    if lm_params:
        groups.append({"params": lm_params, "lr": t.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=t.weight_decay, betas=(0.9, 0.999))
    batches_per_epoch = math.ceil(math.ceil(num_samples / t.batch_size) / world)
    total = t.max_steps or math.ceil(batches_per_epoch / t.grad_accum) * t.epochs  # accumulation restarts each epoch

    def factor(step: int) -> float:
        if t.warmup_steps and step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - t.warmup_steps) / max(1, total - t.warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress)) if t.scheduler == "cosine" else 1.0 - progress

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor), total


def scheduled_lr(cfg: RunConfig, scheduler) -> float:
    """``train.lr`` as the schedule has it now (the language model's group, or the projector's
    scaled to ``train.lr`` when only the projector trains)."""
    return cfg.train.lr * scheduler.get_last_lr()[-1] / scheduler.base_lrs[-1]
