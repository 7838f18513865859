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
from .quantize import quantize_4bit
from .security import OFFLINE, Access

log = logging.getLogger("vcap.train")


def build_for_training(cfg: RunConfig, access: Access = OFFLINE):
    """The captioner with the stage's trainable parameters (and LoRA / 4-bit base weights)."""
    from .builder import build_captioner

    captioner = build_captioner(cfg.model, base=None, dtype=torch.float32, access=access)
    captioner.requires_grad_(False)
    captioner.projector.requires_grad_(not cfg.data.text_only)
    stage = cfg.train.stage
    if stage == "full":
        captioner.backbone.requires_grad_(True)
    if cfg.train.qlora:
        quantize_4bit(captioner.backbone)
    if stage == "lora":
        from peft import LoraConfig, get_peft_model

        lora = cfg.train.lora
        peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                 target_modules=list(lora.targets), bias="none")
        captioner.language_model = get_peft_model(captioner.language_model, peft_config)
    if cfg.train.gradient_checkpointing:
        captioner.backbone.gradient_checkpointing_enable()
    if cfg.train.init_from:
        from .checkpoint import latest_checkpoint, load_trainable_weights

        source = latest_checkpoint(cfg.train.init_from)
        if source is None:
            raise ConfigError(f"train.init_from: no checkpoint in {cfg.train.init_from}")
        load_trainable_weights(source, captioner, stage)  # what the source holds: projector, adapter or LM
        log.info("initialised trainable weights from %s", source)
    captioner.train()
    return captioner
