"""``vcap train CONFIG.yaml [key=value ...] [--resume]``: train the projector, LoRA, or everything.

Stages (``train.stage``, see ``vcap/stages.py``): ``projector`` (LLaVA stage 1), ``lora`` (peft
LoRA on the language model, with ``train.qlora`` over 4-bit base weights) and ``full``.

The loss covers only the tokens the model must generate (the chat template's loss mask).
accelerate places the model and runs multi-process data parallelism (``accelerate launch -m vcap
train ...``, ``torchrun``); with ``train.fsdp`` the processes shard the model instead (PyTorch
FSDP2, see ``vcap/sharding.py``); mixed precision (``train.precision``) is torch's autocast, with a
gradient scaler for fp16. Checkpoints (``out_dir/step-N``) hold everything needed to resume
exactly: ``--resume`` continues from the newest one with the same data order, random state and
optimizer state, so the losses and weights match an uninterrupted run.

Outputs in ``out_dir``: ``step-N/`` checkpoints, ``metrics.jsonl`` (one line per optimizer step),
``train.log`` (human-readable, incl. skipped videos), ``config.yaml`` (the resolved config, every
path in it absolute, so ``vcap export`` works from any folder) and, with ``train.tensorboard``,
TensorBoard events.

An ``out_dir`` that already holds a run is never mixed with a new one: without ``--resume`` the
command refuses (``--overwrite`` first moves the old run aside, to ``<out_dir>.old-<time>``), and
an ``out_dir`` that is not empty and holds no vcap run is refused. Older checkpoints of the run
are deleted as ``train.keep_last`` says, never the newest one.

Reading order: :func:`train` (build -> fit -> save) -> :func:`fit` (epochs, batches) ->
:func:`train_step` (one optimizer step over its micro-batches); :class:`TrainState` is where the
run is, :class:`MetricsSink` where its numbers go.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import sharding, stages
from .checkpoint import checkpoint_dirs, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import ConfigError, RunConfig, TrainConfig
from .config_io import absolute_paths, config_to_dict, load_config
from .data import build_datasets, collate, epoch_batches
from .errors import OutputError, UsageError
from .optim import build_optimizer, scheduled_lr
from .outputs import json_line, read_jsonl, write_jsonl, write_text
from .progress import progress_bar
from .security import OFFLINE, Access

log = logging.getLogger("vcap.train")
RUN_ENTRIES = ("config.yaml", "train.log", "metrics.jsonl")  # what marks a folder as a vcap run


@dataclass
class TrainState:
    """Where a run is: what a checkpoint saves and ``--resume`` restores."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch of the next batch
    batch: int = 0  # the next batch's index in that epoch

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}


@dataclass
class Run:
    """What a run trains and how: the pieces :func:`fit` works with."""

    cfg: RunConfig
    accelerator: Any
    model: torch.nn.Module  # the captioner as it runs: wrapped by accelerate (DDP), or sharded in place (FSDP)
    captioner: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    config_yaml: str


def train(cfg: RunConfig, resume: bool = False, progress: bool = True, overwrite: bool = False,
          access: Access = OFFLINE) -> Path:
    """Run one training stage; returns the run folder. ``resume`` continues the run in
    ``train.out_dir``; ``overwrite`` moves an earlier run there aside first; ``access`` may allow
    downloading base weights that are not cached (see vcap.security)."""
    from accelerate import Accelerator

    cfg = absolute_paths(cfg)
    out = Path(cfg.train.out_dir)
    # precision is this module's autocast, not accelerate's: accelerate keeps one precision per
    # process, and the quickstart (or a notebook) trains several runs in one process
    accelerator = Accelerator(mixed_precision="no", cpu=not torch.cuda.is_available())
    if cfg.train.fsdp:
        sharding.check_launch()
    _prepare_run_dir(out, resume, overwrite, accelerator)
    _setup_logging(out, accelerator.is_main_process)
    seed_everything(cfg.train.seed)
    config_yaml = dump_config(cfg)
    if accelerator.is_main_process:
        write_text(out / "config.yaml", config_yaml)

    captioner = stages.build_for_training(cfg, access)
    train_set, val_set = build_datasets(cfg, captioner, progress and accelerator.is_main_process,
                                        accelerator.process_index, accelerator.num_processes,
                                        accelerator.wait_for_everyone, device=accelerator.device)
    if cfg.train.fsdp:  # every parameter sharded across the processes (FSDP2)
        model = sharding.shard_captioner(captioner, accelerator.device)
    else:  # each process a whole copy, gradients averaged (DDP when there are several)
        model = accelerator.prepare(captioner)
    optimizer, scheduler, total_steps = build_optimizer(cfg, captioner, len(train_set), accelerator.num_processes)
    scaler = torch.amp.GradScaler(accelerator.device.type, enabled=cfg.train.precision == "fp16")
    run = Run(cfg, accelerator, model, captioner, optimizer, scheduler, scaler, config_yaml)

    state = TrainState()
    checkpoint = latest_checkpoint(out) if resume else None
    if resume and checkpoint is None:
        log.info("--resume: no checkpoint in %s yet, starting from the beginning", out)
    if checkpoint is not None:
        _check_same_run(checkpoint, cfg)
        saved = load_checkpoint(checkpoint, captioner, cfg.train.stage, optimizer, scheduler)
        state = TrainState(saved["step"], saved["epoch"], saved["batch"])
        if "scaler" in saved:
            scaler.load_state_dict(saved["scaler"])
        log.info("resumed from %s (step %d, epoch %d, batch %d)", checkpoint, state.step, state.epoch, state.batch)
    with MetricsSink(out, cfg.train, accelerator.is_main_process, progress, total_steps, state.step) as sink:
        fit(run, train_set, val_set, state, total_steps, sink)
    return out


def _prepare_run_dir(out: Path, resume: bool, overwrite: bool, accelerator) -> None:
    """Every process decides on the same view of ``out``, then the first one acts."""
    move_aside = check_run_dir(out, resume, overwrite)
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


def check_run_dir(out: Path, resume: bool, overwrite: bool) -> bool:
    """Whether ``out`` may hold this run (raises OutputError if not); True when an earlier run there
    must first be moved aside (``overwrite``). Reads only."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise OutputError(f"train.out_dir {out} is a file; give a folder")
    if not any(out.iterdir()):
        return False
    if not (any((out / name).exists() for name in RUN_ENTRIES) or checkpoint_dirs(out)):
        raise OutputError(f"train.out_dir {out} is not empty and holds no vcap run; vcap does not write into "
                          f"other folders: choose a new train.out_dir")
    if resume:
        return False
    if overwrite:
        return True
    raise OutputError(f"train.out_dir {out} already holds a run; continue it with --resume, move it aside with "
                      f"--overwrite, or choose another train.out_dir")


# -- fit ------------------------------------------------------------------------------------------------

def fit(run: Run, train_set, val_set, state: TrainState, total_steps: int, sink: MetricsSink) -> None:
    """Train from ``state`` to ``total_steps``: each epoch's batches in their fixed order (this
    process's share), ``train.grad_accum`` micro-batches per step; checkpoints and validation as
    the config says."""
    t, accelerator = run.cfg.train, run.accelerator
    run.model.train()
    epochs = itertools.count(state.epoch) if t.max_steps else range(state.epoch, t.epochs)
    for epoch in epochs:
        if state.step >= total_steps:
            break
        batches = epoch_batches(len(train_set), t.batch_size, t.seed, epoch, accelerator.process_index,
                                accelerator.num_processes)
        start = state.batch if epoch == state.epoch else 0
        while start < len(batches) and state.step < total_steps:
            steps = batches[start : start + t.grad_accum]  # accumulation restarts with each epoch
            started, lrs = time.perf_counter(), learning_rates(run)  # the rates this step uses
            loss = train_step(run, [[train_set[i] for i in indices] for indices in steps])
            samples = sum(map(len, steps))
            start += len(steps)
            state.step += 1
            state.epoch, state.batch = (epoch, start) if start < len(batches) else (epoch + 1, 0)
            sink.step({"step": state.step, "epoch": epoch, "loss": loss, **lrs,
                       "samples_per_s": samples / max(time.perf_counter() - started, 1e-9)})
            done = state.step >= total_steps
            if state.step % t.save_every == 0 or done:
                save(run, state)
            if val_set is not None and ((t.eval_every and state.step % t.eval_every == 0) or done):
                sink.validation(state.step, evaluate_loss(run, val_set))
    accelerator.wait_for_everyone()


def save(run: Run, state: TrainState) -> None:
    """Checkpoint ``step-N`` (the main process writes it; in a sharded run every process first
    writes its own slice into a folder the checkpoint takes in)."""
    t, accelerator = run.cfg.train, run.accelerator
    shards = None
    if t.fsdp:
        shards = Path(t.out_dir) / f".tmp-step-{state.step:08d}-shards"
        if accelerator.is_main_process:
            shutil.rmtree(shards, ignore_errors=True)  # left by a kill during this step's earlier save
            shards.mkdir()
        accelerator.wait_for_everyone()
        sharding.write_rank_shard(shards, run.captioner, run.optimizer)
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_checkpoint(Path(t.out_dir), state.step, run.captioner, stage=t.stage, optimizer=run.optimizer,
                        scheduler=run.scheduler, state={**state.position(), "scaler": run.scaler.state_dict()},
                        config_yaml=run.config_yaml, keep_last=t.keep_last, shards=shards)


def train_step(run: Run, micro_batches: Sequence[list[dict[str, Any]]]) -> float:
    """One optimizer step over ``micro_batches`` (each a list of dataset items); returns their mean
    loss per sample, over every process's samples. Gradients are synchronised across processes on
    the last micro-batch only."""
    t, accelerator = run.cfg.train, run.accelerator
    total, count = 0.0, 0
    for i, items in enumerate(micro_batches):
        batch = _on_device(collate(items, run.captioner.tokenizer.pad_id), accelerator.device)
        last = i == len(micro_batches) - 1
        with autocast(t.precision, accelerator.device), no_sync(run, last):
            loss = run.model(batch["video_features"], batch["input_ids"], batch["attention_mask"], batch["labels"],
                             visible=batch["visible"], loss_weights=loss_weights(batch, t.event_time_weight))
            run.scaler.scale(loss / t.grad_accum).backward()
        total += float(loss.detach()) * len(items)
        count += len(items)
    run.scaler.unscale_(run.optimizer)
    if t.max_grad_norm:  # DTensor-aware in a sharded run: the norm is over every process's slices
        torch.nn.utils.clip_grad_norm_([p for g in run.optimizer.param_groups for p in g["params"]], t.max_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if accelerator.num_processes > 1:
        sums = accelerator.reduce(torch.tensor([total, count], dtype=torch.float64, device=accelerator.device), "sum")
        total, count = float(sums[0]), float(sums[1])
    return total / count


def no_sync(run: Run, last: bool):
    """Gradients are reduced across processes only on a step's last micro-batch."""
    if last or run.accelerator.num_processes == 1:
        return contextlib.nullcontext()
    if run.cfg.train.fsdp:
        return _fsdp_no_sync(run.model)
    return run.accelerator.no_sync(run.model)


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


@torch.no_grad()
def evaluate_loss(run: Run, dataset) -> float:
    """Mean validation loss per sample; each process takes every N-th sample and the sums are
    added across processes."""
    accelerator, batch_size = run.accelerator, run.cfg.train.batch_size
    mine = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    run.model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # (loss sum, samples)
    for start in range(0, len(mine), batch_size):
        items = [dataset[i] for i in mine[start : start + batch_size]]
        batch = _on_device(collate(items, run.captioner.tokenizer.pad_id), accelerator.device)
        with autocast(run.cfg.train.precision, accelerator.device):
            loss = run.model(batch["video_features"], batch["input_ids"], batch["attention_mask"], batch["labels"],
                             visible=batch["visible"])  # the plain mean, comparable across runs
        total += torch.tensor([float(loss) * len(items), len(items)], dtype=torch.float64, device=total.device)
    run.model.train()
    total = accelerator.reduce(total, reduction="sum") if accelerator.num_processes > 1 else total
    return float(total[0] / total[1].clamp(min=1))


def learning_rates(run: Run) -> dict[str, float]:
    """``lr`` (``train.lr`` as scheduled now) and, when the projector has its own, ``projector_lr``."""
    rates = {"lr": scheduled_lr(run.cfg, run.scheduler)}
    if run.cfg.train.projector_lr is not None and any(p.requires_grad for p in run.captioner.projector.parameters()):
        rates["projector_lr"] = run.scheduler.get_last_lr()[0]  # the projector's group comes first
    return rates


def autocast(precision: str, device: torch.device):
    """torch's autocast for ``train.precision`` (bf16 | fp16), or nothing for ``no``."""
    if precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def loss_weights(batch: dict[str, Any], event_time_weight: float) -> torch.Tensor | None:
    """Each target's loss weight (B, S): ``event_time_weight`` for a dense sample's event times
    (``batch["event_times"]``), 1 for the rest; None when all are 1."""
    if event_time_weight == 1.0 or batch["event_times"] is None:
        return None
    return 1.0 + (event_time_weight - 1.0) * batch["event_times"].float()


def _on_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    moved = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    moved["video_features"] = [f if f is None else f.to(device) for f in batch["video_features"]]
    return moved


# -- where the numbers go ---------------------------------------------------------------------------------

class MetricsSink:
    """The one place a run's numbers go: ``metrics.jsonl`` (a line per step and per validation),
    ``train.log``, TensorBoard and the progress bar; only the main process writes."""

    def __init__(self, out: Path, t: TrainConfig, main: bool, progress: bool, total: int, initial: int) -> None:

        self.path, self.t, self.main = out / "metrics.jsonl", t, main
        if main:
            _keep_metrics_until(self.path, initial)
        self.writer = _tensorboard(out) if t.tensorboard and main else None
        self.bar = progress_bar(total, f"train {t.stage}", "step", enabled=progress and main, initial=initial)

    def __enter__(self) -> MetricsSink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()

    def step(self, record: dict[str, Any]) -> None:
        """One optimizer step's record: step, epoch, loss, lr (and projector_lr), samples_per_s."""
        self._write(record)
        if self.writer is not None:
            for key in ("loss", "lr", "samples_per_s"):
                self.writer.add_scalar(f"train/{key}", record[key], record["step"])
        if self.main and (record["step"] % self.t.log_every == 0 or record["step"] == 1):
            log.info("step %d epoch %d loss %.4f lr %.2e %.1f samples/s", record["step"], record["epoch"],
                     record["loss"], record["lr"], record["samples_per_s"])
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.1e}",
                             sps=f"{record['samples_per_s']:.1f}", refresh=False)
        self.bar.update(1)

    def validation(self, step: int, loss: float) -> None:
        self._write({"step": step, "val_loss": loss})
        if self.main:
            log.info("step %d validation loss %.4f", step, loss)
        if self.writer is not None:
            self.writer.add_scalar("val/loss", loss, step)

    def _write(self, record: dict[str, Any]) -> None:
        if self.main:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json_line(record))


def _keep_metrics_until(path: Path, step: int) -> None:
    """A fresh run starts an empty ``metrics.jsonl``; a resumed one keeps the lines up to its
    checkpoint (later ones are redone) and drops a line torn by a kill, as the caption journal does."""
    records = read_jsonl(path, lambda r: isinstance(r, dict) and "step" in r, "step", "metrics file") if step else []
    write_jsonl(path, [r for r in records if r["step"] <= step])


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("train.tensorboard is set but the tensorboard package is not installed (pip install tensorboard)")
        return None
    return SummaryWriter(str(out / "tensorboard"))


# -- helpers ----------------------------------------------------------------------------------------------

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
    if int(os.environ.get("RANK", "0")) == 0:  # once, not once per process of a launcher
        print(f"run folder: {out}")
    return 0
