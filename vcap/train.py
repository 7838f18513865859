"""``vcap train CONFIG.yaml [key=value ...] [--resume]``: train the projector, LoRA, or everything.

Stages (``train.stage``):
- ``projector``: vision encoder and language model frozen; only the projector learns (LLaVA stage 1).
- ``lora``: the projector plus peft LoRA adapters on the language model (``train.lora``); with
  ``train.qlora`` the base weights are 4-bit NF4 (bitsandbytes) while the adapters train in full
  precision.
- ``full``: every language-model parameter and the projector.

The loss covers only the tokens the model must generate (the chat template's loss mask).
accelerate places the model, runs mixed precision (``train.precision``) and multi-process data
parallelism (``accelerate launch -m vcap train ...``). Checkpoints (``out_dir/step-N``) hold
everything needed to resume exactly: ``--resume`` continues from the newest one with the same
data order, random state and optimizer state, so the losses and weights match an uninterrupted run.

Outputs in ``out_dir``: ``step-N/`` checkpoints, ``metrics.jsonl`` (one line per optimizer step),
``train.log`` (human-readable, incl. skipped videos), ``config.yaml`` (the resolved config, every
path in it absolute, so ``vcap export`` works from any folder) and, with ``train.tensorboard``,
TensorBoard events.

An ``out_dir`` that already holds a run is never mixed with a new one: without ``--resume`` the
command refuses (``--overwrite`` first moves the old run aside, to ``<out_dir>.old-<time>``), and
an ``out_dir`` that is not empty and holds no vcap run is refused. Older checkpoints of the run
are deleted as ``train.keep_last`` says, never the newest one.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError, RunConfig, absolute_paths, config_to_dict, load_config
from .errors import OutputError, UsageError
from .outputs import json_line, write_text
from .security import OFFLINE, Access

logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # "kernels" is not installed: harmless

log = logging.getLogger("vcap.train")


def train(cfg: RunConfig, resume: bool = False, progress: bool = True, overwrite: bool = False,
          access: Access = OFFLINE) -> Path:
    """Run one training stage; returns the run folder. ``resume`` continues the run in
    ``train.out_dir``; ``overwrite`` moves an earlier run there aside first; ``access`` may allow
    downloading base weights that are not cached (see vcap.security)."""
    from accelerate import Accelerator

    cfg = absolute_paths(cfg)
    out = Path(cfg.train.out_dir)
    from accelerate.state import AcceleratorState

    # accelerate keeps one precision per process; several train() calls in one process (the
    # quickstart's stages, a notebook) may each ask for another, so start this run's afresh
    # (the distributed set-up, PartialState, is kept).
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=cfg.train.precision, cpu=not torch.cuda.is_available())
    move_aside = check_run_dir(out, resume, overwrite)  # every process decides on the same view, then the first acts
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if move_aside:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            aside = next(p for n in itertools.count() if not (p := out.with_name(
                f"{out.name}.old-{stamp}" + (f"-{n}" if n else ""))).exists())
            out.rename(aside)
            print(f"vcap train: moved the earlier run in {out} to {aside}", file=sys.stderr)
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    _setup_logging(out, accelerator.is_main_process)
    seed_everything(cfg.train.seed)
    config_yaml = dump_config(cfg)
    if accelerator.is_main_process:
        write_text(out / "config.yaml", config_yaml)

    captioner = build_for_training(cfg, access)
    train_set, val_set = build_datasets(cfg, captioner, progress and accelerator.is_main_process)
    optimizer, scheduler, total_steps = build_optimizer(cfg, captioner, len(train_set), accelerator.num_processes)
    model, optimizer = accelerator.prepare(captioner, optimizer)

    from .checkpoint import latest_checkpoint, load_checkpoint

    state = {"epoch": 0, "batch": 0}
    step = 0
    checkpoint = latest_checkpoint(out) if resume else None
    if resume and checkpoint is None:
        log.info("--resume: no checkpoint in %s yet, starting from the beginning", out)
    if checkpoint is not None:
        _check_same_run(checkpoint, cfg)
        state = load_checkpoint(checkpoint, captioner, cfg.train.stage, optimizer, scheduler)
        step = state.pop("step")
        log.info("resumed from %s (step %d, epoch %d, batch %d)", checkpoint, step, state["epoch"], state["batch"])
        if accelerator.is_main_process:
            _truncate_metrics(out / "metrics.jsonl", step)
    elif accelerator.is_main_process:
        write_text(out / "metrics.jsonl", "")

    fit(cfg, accelerator, model, captioner, optimizer, scheduler, train_set, val_set, state, step, total_steps,
        config_yaml, progress)
    return out


RUN_ENTRIES = ("config.yaml", "train.log", "metrics.jsonl")  # what marks a folder as a vcap run


def check_run_dir(out: Path, resume: bool, overwrite: bool) -> bool:
    """Whether ``out`` may hold this run (raises OutputError if not); True when an earlier run there
    must first be moved aside (``overwrite``). Reads only."""
    from .checkpoint import checkpoint_dirs

    if not out.exists():
        return False
    if not out.is_dir():
        raise OutputError(f"train.out_dir {out} is a file; give a folder")
    entries = list(out.iterdir())
    if not entries:
        return False
    is_run = any((out / name).exists() for name in RUN_ENTRIES) or bool(checkpoint_dirs(out))
    if not is_run:
        raise OutputError(f"train.out_dir {out} is not empty and holds no vcap run; vcap does not write into "
                          f"other folders: choose a new train.out_dir")
    if resume:
        return False
    if overwrite:
        return True
    raise OutputError(f"train.out_dir {out} already holds a run; continue it with --resume, move it aside with "
                      f"--overwrite, or choose another train.out_dir")


# -- build ----------------------------------------------------------------------------------------------

def build_for_training(cfg: RunConfig, access: Access = OFFLINE):
    """The captioner with the stage's trainable parameters (and LoRA / 4-bit base weights)."""
    from .model import build_captioner

    captioner = build_captioner(cfg.model, base=None, dtype=torch.float32, access=access)
    captioner.requires_grad_(False)
    captioner.projector.requires_grad_(not cfg.data.text_only)
    stage = cfg.train.stage
    if stage == "full":
        captioner.lm.requires_grad_(True)
    if cfg.train.qlora:
        quantize_4bit(captioner.lm)
    if stage == "lora":
        from peft import LoraConfig, get_peft_model

        lora = cfg.train.lora
        peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                 target_modules=list(lora.targets), bias="none")
        captioner.language_model = get_peft_model(captioner.language_model, peft_config)
    if cfg.train.gradient_checkpointing:
        captioner.lm.gradient_checkpointing_enable()
    if cfg.train.init_from:
        from .checkpoint import latest_checkpoint, load_trainable_weights

        source = latest_checkpoint(cfg.train.init_from)
        if source is None:
            raise ConfigError(f"train.init_from: no checkpoint in {cfg.train.init_from}")
        load_trainable_weights(source, captioner, stage)  # what the source holds: projector, adapter or LM
        log.info("initialised trainable weights from %s", source)
    captioner.train()
    return captioner


def quantize_4bit(model: torch.nn.Module, compute_dtype: torch.dtype = torch.float32) -> int:
    """Replace every Linear inside the decoder layers by a bitsandbytes 4-bit NF4 Linear (QLoRA)."""
    import bitsandbytes as bnb

    replaced = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, torch.nn.Linear) or "layers." not in f"{name}.{child_name}":
                continue
            if child_name == "gate" and child.out_features != child.in_features:  # keep the MoE router exact
                continue
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=compute_dtype, quant_type="nf4", device="meta")
            q.weight = bnb.nn.Params4bit(child.weight.data.to(torch.float32).cpu(), requires_grad=False,
                                         quant_type="nf4")
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            q = q.to(child.weight.device)
            setattr(module, child_name, q)
            replaced += 1
    return replaced


def build_datasets(cfg: RunConfig, captioner, progress: bool):
    from .data import CaptionDataset, FeatureCache, encoder_fingerprint, extract_features, read_manifest

    train_samples = read_manifest(cfg.data.train, captioner.config.instructions)
    if cfg.data.max_samples:
        train_samples = train_samples[: cfg.data.max_samples]
    val_samples = read_manifest(cfg.data.val, captioner.config.instructions) if cfg.data.val else []
    if cfg.data.text_only:
        train_set = CaptionDataset(train_samples, None, captioner)
        val_set = CaptionDataset(val_samples, None, captioner) if val_samples else None
        log.info("text-only training samples: %d; validation samples: %d", len(train_set), len(val_set) if val_set else 0)
        return train_set, val_set
    cache = FeatureCache(cfg.data.feature_cache, encoder_fingerprint(captioner)) if cfg.data.feature_cache else None
    videos = [s.video for s in train_samples + val_samples]
    features, failed = extract_features(captioner, videos, cache, progress=progress)
    for video, reason in failed.items():
        log.warning("skipped unreadable video %s: %s", video, reason)
    train_set = CaptionDataset(train_samples, features, captioner)
    val_set = CaptionDataset(val_samples, features, captioner) if val_samples else None
    log.info("training samples: %d (%d videos skipped); validation samples: %d",
             len(train_set), len(failed), len(val_set) if val_set else 0)
    if len(train_set) == 0:
        raise UsageError(f"{cfg.data.train}: no readable training samples (see {cfg.train.out_dir}/train.log)")
    return train_set, val_set


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


# -- fit ------------------------------------------------------------------------------------------------

def epoch_batches(num_samples: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """The batches of one epoch: a permutation fixed by (seed, epoch), then this process's share.

    With several processes every one gets the same number of batches (the list is padded with
    batches from its start, as torch's DistributedSampler pads), since each optimizer step is a
    collective all of them must join."""
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    batches = [order[i : i + batch_size] for i in range(0, num_samples, batch_size)]
    if world > 1:
        per_process = math.ceil(len(batches) / world)
        batches += batches[: per_process * world - len(batches)]
    return batches[rank::world]


def fit(cfg, accelerator, model, captioner, optimizer, scheduler, train_set, val_set, state, step, total_steps,
        config_yaml, progress) -> None:
    from .checkpoint import save_checkpoint
    from .data import collate
    from .progress import progress_bar

    t = cfg.train
    out = Path(t.out_dir)
    pad = captioner.tokenizer.pad_id
    writer = _tensorboard(out) if t.tensorboard and accelerator.is_main_process else None
    bar = progress_bar(total_steps, f"train {t.stage}", "step", enabled=progress and accelerator.is_main_process,
                       initial=step)
    projector_trains = any(p.requires_grad for p in captioner.projector.parameters())
    micro, window_loss, window_samples, window_start = 0, 0.0, 0, time.perf_counter()
    model.train()
    done = step >= total_steps
    epochs = itertools.count(state["epoch"]) if t.max_steps else range(state["epoch"], t.epochs)
    for epoch in epochs:
        if done:
            break
        batches = epoch_batches(len(train_set), t.batch_size, t.seed, epoch, accelerator.process_index,
                                accelerator.num_processes)
        start = state["batch"] if epoch == state["epoch"] else 0
        for b in range(start, len(batches)):
            batch = collate([train_set[i] for i in batches[b]], pad)
            batch = {k: (v.to(accelerator.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            batch["video_features"] = [f if f is None else f.to(accelerator.device) for f in batch["video_features"]]
            micro += 1
            last_micro = micro % t.grad_accum == 0 or b == len(batches) - 1
            # gradients are synchronised across processes on the last micro-batch of a step only
            with accelerator.autocast(), (contextlib.nullcontext() if last_micro else accelerator.no_sync(model)):
                loss = model(batch["video_features"], batch["input_ids"], batch["attention_mask"], batch["labels"])
                accelerator.backward(loss / t.grad_accum)
            window_loss += float(loss.detach()) * len(batches[b])
            window_samples += len(batches[b])
            if not last_micro:
                continue
            if t.max_grad_norm:
                accelerator.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], t.max_grad_norm)
            lr = scheduled_lr(cfg, scheduler)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            micro = 0
            elapsed = time.perf_counter() - window_start
            record = {"step": step, "epoch": epoch, "loss": window_loss / window_samples, "lr": lr,
                      "samples_per_s": window_samples / max(elapsed, 1e-9)}
            window_loss, window_samples, window_start = 0.0, 0, time.perf_counter()
            if t.projector_lr is not None and projector_trains:
                record["projector_lr"] = scheduler.get_last_lr()[0]  # the projector's group comes first
            if accelerator.is_main_process:
                with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json_line(record))
                if writer is not None:
                    for key in ("loss", "lr", "samples_per_s"):
                        writer.add_scalar(f"train/{key}", record[key], step)
                if step % t.log_every == 0 or step == 1:
                    log.info("step %d epoch %d loss %.4f lr %.2e %.1f samples/s", step, epoch, record["loss"], lr,
                             record["samples_per_s"])
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.1e}", sps=f"{record['samples_per_s']:.1f}",
                            refresh=False)
            bar.update(1)
            position = {"epoch": epoch, "batch": b + 1} if b + 1 < len(batches) else {"epoch": epoch + 1, "batch": 0}
            done = step >= total_steps
            if accelerator.is_main_process and (step % t.save_every == 0 or done):
                save_checkpoint(out, step, captioner, t.stage, optimizer, scheduler, position, config_yaml, t.keep_last)
            if val_set is not None and ((t.eval_every and step % t.eval_every == 0) or done):
                val = evaluate_loss(model, captioner, val_set, t.batch_size, accelerator)
                if accelerator.is_main_process:
                    log.info("step %d validation loss %.4f", step, val)
                    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
                        f.write(json_line({"step": step, "val_loss": val}))
                    if writer is not None:
                        writer.add_scalar("val/loss", val, step)
                model.train()
            if done:
                break
    bar.close()
    if writer is not None:
        writer.close()
    accelerator.wait_for_everyone()


@torch.no_grad()
def evaluate_loss(model, captioner, dataset, batch_size: int, accelerator) -> float:
    from .data import collate

    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        batch = collate(items, captioner.tokenizer.pad_id)
        with accelerator.autocast():
            loss = model([f if f is None else f.to(accelerator.device) for f in batch["video_features"]],
                         batch["input_ids"].to(accelerator.device), batch["attention_mask"].to(accelerator.device),
                         batch["labels"].to(accelerator.device))
        total += float(loss) * len(items)
        count += len(items)
    return total / max(count, 1)


# -- helpers ----------------------------------------------------------------------------------------------

def scheduled_lr(cfg: RunConfig, scheduler) -> float:
    """``train.lr`` as the schedule has it now (the language model's group, or the projector's
    scaled to ``train.lr`` when only the projector trains)."""
    return cfg.train.lr * scheduler.get_last_lr()[-1] / scheduler.base_lrs[-1]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as the YAML saved with a run."""
    import yaml

    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)


def _check_same_run(checkpoint: Path, cfg: RunConfig) -> None:
    """--resume continues the same run: the model it builds and the data it reads must not change."""
    saved = config_to_dict(absolute_paths(load_config(checkpoint / "config.yaml")))
    current = config_to_dict(cfg)
    for section in ("model", "data"):
        for key in sorted(set(saved[section]) | set(current[section])):
            if saved[section].get(key) != current[section].get(key):
                raise ConfigError(
                    f"--resume: {checkpoint} was trained with a different {section}.{key} "
                    f"({saved[section].get(key)!r}, now {current[section].get(key)!r}); "
                    f"use another train.out_dir, or run without --resume to start over")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (they will be redone), and a
    last line torn by a kill, as the caption journal does."""
    from .outputs import read_jsonl, write_jsonl

    records = read_jsonl(path, lambda r: isinstance(r, dict) and "step" in r, "step", "metrics file")
    write_jsonl(path, [r for r in records if r["step"] <= step])


def _setup_logging(out: Path, main: bool) -> None:
    log.setLevel(logging.INFO)
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    if main:
        handler = logging.FileHandler(out / "train.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(logging.WARNING)
        log.addHandler(console)
    log.propagate = False


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("train.tensorboard is set but the tensorboard package is not installed (pip install tensorboard)")
        return None
    return SummaryWriter(str(out / "tensorboard"))


# -- the `vcap train` command ------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a YAML run config (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override config values, e.g. train.lr=2e-4 train.out_dir=runs/x")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in train.out_dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="train.out_dir holds an earlier run: move it aside (to OUT_DIR.old-TIME) and start over")
    parser.add_argument("--allow-downloads", action="store_true",
                        help="fetch base weights from the Hugging Face hub if they are not cached (off: offline)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in train.out_dir and --overwrite moves it aside: choose one")
    cfg = load_config(args.config, args.overrides)
    out = train(cfg, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite,
                access=Access(allow_downloads=args.allow_downloads))
    print(f"run folder: {out}")
    return 0
