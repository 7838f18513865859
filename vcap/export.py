"""``vcap export RUN_DIR OUT_DIR``: a self-contained captioner folder from a training run.

Takes the newest checkpoint of the run (or the checkpoint folder given), rebuilds the captioner
from the run's resolved config in the base weights' dtype (``model.dtype``; bfloat16 for
``auto``), loads the trained projector and adapter (or language model), merges the LoRA adapter
into the language model layer by layer (each update computed in the adapter's float32, added to
the base weight), and writes a folder that
``vcap.load_captioner``, ``vcap caption``, ``vcap eval`` and ``vcap demo`` open: the language model
in Hugging Face format (transformers loads it), the projector, the tokenizer, the vision weights
(or their open_clip tag) and ``captioner.json``; every path in it is inside the folder.

OUT_DIR must be new or empty. An earlier captioner there is replaced only with ``--overwrite``,
and only if it holds nothing but what vcap writes into a captioner folder; OUT_DIR may not be the
run or lie inside it. The folder is written beside OUT_DIR and renamed into place, so a kill
leaves the old one (or nothing), never half of one.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .errors import OutputError, UsageError
from .security import OFFLINE, Access

CAPTIONER_ENTRIES = {"captioner.json", "tokenizer.json", "language_model", "projector", "adapter", "vision.safetensors"}


def check_export_target(run_dir: Path, out_dir: Path, overwrite: bool) -> bool:
    """Refuse an OUT_DIR that export must not write; returns whether an old captioner is replaced."""
    run, out = run_dir.resolve(), out_dir.resolve()
    if out == run or out.is_relative_to(run):
        raise OutputError(f"{out_dir} is inside the training run {run_dir}; export to a folder outside it")
    if run.is_relative_to(out):
        raise OutputError(f"{out_dir} holds the training run {run_dir}; export to another folder")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    if not out.is_dir():
        raise OutputError(f"{out_dir} is a file; export needs a folder name")
    if not (out / "captioner.json").is_file():
        raise OutputError(f"{out_dir} is not empty and is not a vcap captioner; vcap never replaces what it did "
                          f"not write: choose a new folder")
    if not overwrite:
        raise OutputError(f"{out_dir} already holds a captioner; pass --overwrite to replace it, or choose a new folder")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in CAPTIONER_ENTRIES)
    if foreign:
        raise OutputError(f"{out_dir} holds {foreign[0]!r}, which vcap did not write; move it out of the folder "
                          f"before replacing the captioner")
    return True


def export(run_dir: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False,
           access: Access = OFFLINE) -> Path:
    from qwen3_backbone.files import atomic_folder

    from .adapter import load_adapter
    from .checkpoint import latest_checkpoint, load_trainable_weights
    from .config_io import load_config
    from .builder import build_captioner, save_captioner
    from .sharding import is_sharded
    from .stages import frozen_dtype, with_lora
    from .train import seed_everything

    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise UsageError(f"no checkpoint in {run_dir} (expected step-N folders from vcap train)")
    replace = check_export_target(Path(run_dir), Path(out_dir), overwrite)
    cfg = load_config(checkpoint / "config.yaml")
    seed_everything(cfg.train.seed)  # as training did: a preset (random) base model is the same one
    dtype = frozen_dtype(cfg)  # the base weights' dtype: what the captioner is written in
    captioner = build_captioner(cfg.model, base=None, dtype=dtype, vision_dtype=dtype, access=access)
    stage = cfg.train.stage
    if stage == "lora" and is_sharded(checkpoint):  # adapters as the run made them, weights put together
        captioner.language_model = with_lora(captioner.language_model, cfg)
        load_trainable_weights(checkpoint, captioner, stage)
        captioner.language_model = captioner.language_model.merge_and_unload()
    elif stage == "lora":
        captioner.language_model = load_adapter(captioner.language_model, checkpoint / "adapter")
        load_trainable_weights(checkpoint, captioner, "projector")
        captioner.language_model = captioner.language_model.merge_and_unload()
    else:
        load_trainable_weights(checkpoint, captioner, stage)
    captioner.config.adapter = None
    with atomic_folder(out_dir, replace=replace) as tmp:  # a kill never leaves a half-written captioner folder
        save_captioner(captioner.eval(), tmp)
    return Path(out_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a training run folder (its newest step-N checkpoint) or a checkpoint folder")
    parser.add_argument("out_dir", help="where to write the captioner folder (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a captioner that vcap exported there before")
    parser.add_argument("--allow-downloads", action="store_true",
                        help="fetch the run's base weights from the Hugging Face hub if they are not cached")


def run(args: argparse.Namespace) -> int:
    out = export(args.run_dir, args.out_dir, overwrite=args.overwrite,
                 access=Access(allow_downloads=args.allow_downloads))
    print(f"captioner written to {out}")
    return 0
