"""``vcap export RUN_DIR OUT_DIR``: a self-contained captioner folder from a training run.

Takes the newest checkpoint of the run (or the checkpoint folder given), rebuilds the captioner
from the run's resolved config, loads the trained projector and adapter (or language model),
merges the LoRA adapter into the language model, and writes a folder that
``vcap.load_captioner``, ``vcap caption``, ``vcap eval`` and ``vcap demo`` open: the language model
in Hugging Face format (transformers loads it), the projector, the tokenizer, the vision weights
(or their open_clip reference) and ``captioner.json``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def export(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    import torch

    from qwen3_backbone.weights import atomic_folder

    from .checkpoint import latest_checkpoint, load_trainable_weights
    from .config import load_config
    from .model import build_captioner, save_captioner
    from .train import seed_everything

    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir} (expected step-N folders from vcap train)")
    cfg = load_config(checkpoint / "config.yaml")
    seed_everything(cfg.train.seed)  # as training did: a preset (random) base model is the same one
    captioner = build_captioner(cfg.model, base=None, dtype=torch.float32)
    stage = cfg.train.stage
    if stage == "lora":
        from peft import PeftModel

        captioner.language_model = PeftModel.from_pretrained(captioner.language_model, str(checkpoint / "adapter"))
        load_trainable_weights(checkpoint, captioner, "projector")
        captioner.language_model = captioner.language_model.merge_and_unload()
    else:
        load_trainable_weights(checkpoint, captioner, stage)
    captioner.config.adapter = None
    with atomic_folder(out_dir) as tmp:  # a kill never leaves a half-written captioner folder
        save_captioner(captioner.eval(), tmp)
    return Path(out_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a training run folder (its newest step-N checkpoint) or a checkpoint folder")
    parser.add_argument("out_dir", help="where to write the captioner folder")


def run(args: argparse.Namespace) -> int:
    out = export(args.run_dir, args.out_dir)
    print(f"captioner written to {out}")
    return 0
