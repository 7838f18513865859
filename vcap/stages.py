"""What each training stage trains: the captioner built for ``train.stage`` (projector, lora, full).

- ``projector``: vision encoder and language model frozen; only the projector learns (LLaVA stage 1);
- ``lora``: the projector plus peft LoRA adapters on the language model (``train.lora``); with
  ``train.qlora`` the frozen base weights are 4-bit NF4;
- ``full``: every language-model parameter and the projector.
``train.init_from`` starts the trainable weights from another run's newest checkpoint.
"""

from __future__ import annotations

import logging

import torch

from .config import ConfigError, RunConfig
from .security import OFFLINE, Access

log = logging.getLogger("vcap.train")


def frozen_dtype(cfg: RunConfig) -> torch.dtype:
    """The dtype the frozen weights are built in: ``model.dtype``, where ``auto`` means bfloat16
    (what trains is kept in float32, see :func:`build_for_training`)."""
    return torch.bfloat16 if cfg.model.dtype == "auto" else getattr(torch, cfg.model.dtype)


def with_lora(language_model, cfg: RunConfig):
    """The language model with new peft LoRA adapters as ``train.lora`` describes them."""
    from peft import LoraConfig, get_peft_model

    lora = cfg.train.lora
    return get_peft_model(language_model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                     target_modules=list(lora.targets), bias="none"))


def build_for_training(cfg: RunConfig, access: Access = OFFLINE):
    """The captioner with the stage's trainable parameters (and LoRA / 4-bit base weights).

    Frozen weights (the vision tower, the language model of the projector and lora stages) are
    built straight in :func:`frozen_dtype`; with ``train.qlora`` the language model's decoder
    weights stream in as NF4. What trains (the projector, the adapters, the whole language model
    in the full stage) is float32, as mixed precision needs."""
    from .builder import build_captioner
    from .checkpoint import latest_checkpoint, load_trainable_weights

    stage = cfg.train.stage
    dtype = torch.float32 if stage == "full" else frozen_dtype(cfg)
    captioner = build_captioner(cfg.model, base=None, dtype=dtype, vision_dtype=frozen_dtype(cfg), access=access,
                                load_in_4bit=cfg.train.qlora)
    captioner.requires_grad_(False)
    captioner.projector.float().requires_grad_(not cfg.data.text_only)
    if stage == "full":
        captioner.backbone.requires_grad_(True)
    if stage == "lora":
        captioner.language_model = with_lora(captioner.language_model, cfg)  # adapters in float32
    if cfg.train.gradient_checkpointing:
        captioner.backbone.gradient_checkpointing_enable()
    if cfg.train.init_from:
        source = latest_checkpoint(cfg.train.init_from)
        if source is None:
            raise ConfigError(f"train.init_from: no checkpoint in {cfg.train.init_from}")
        load_trainable_weights(source, captioner, stage)  # what the source holds: projector, adapter or LM
        log.info("initialised trainable weights from %s", source)
    captioner.train()
    return captioner
