"""Training checkpoints: ``out_dir/step-N/``, written whole or not at all, safetensors only.

A checkpoint holds what resuming needs to continue exactly:
- ``projector/``: projector weights + config;
- ``adapter/``: the peft LoRA adapter (``adapter_model.safetensors`` + ``adapter_config.json``,
  loadable by peft itself), for the lora stage;
- ``language_model/``: the full language model (Hugging Face format), for the full stage;
- ``optimizer.safetensors`` + ``optimizer.json``: AdamW moments and parameter groups;
- ``rng.safetensors`` + ``trainer_state.json``: step, data position (epoch, batch), scheduler
  and gradient-scaler state, Python/NumPy/torch random states (the CPU's and every GPU's);
- ``config.yaml``: the resolved run config;
- ``fsdp/`` in place of the weights and optimizer files for a sharded run (``train.fsdp``): each
  process's slices, see vcap.sharding.

It is written into a hidden temporary folder and renamed into place, so a kill never leaves a
half checkpoint; only the last ``keep_last`` are kept. No pickle is written or read.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UsageError

STEP_DIR = re.compile(r"^step-(\d+)$")
SHARD_BYTES = 5 * 1024**3  # a full-stage language model is written in safetensors shards of at most this


def checkpoint_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    run = Path(run_dir)
    if not run.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found) if (p / "trainer_state.json").exists()]


def _step(checkpoint: Path) -> int:
    return int(STEP_DIR.match(checkpoint.name).group(1))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run folder (or the folder itself if it is one)."""
    path = Path(run_dir)
    if (path / "trainer_state.json").exists():
        return path
    found = checkpoint_dirs(path)
    return found[-1] if found else None


def save_checkpoint(
    run_dir: Path,
    step: int,
    captioner,
    *,
    stage: str,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    config_yaml: str,
    keep_last: int,
    shards: Path | None = None,
) -> Path:
    """Write ``run_dir/step-N``. ``shards``: a folder of a sharded run's per-process files (see
    vcap.sharding), moved in as ``fsdp/`` in place of the weights and optimizer files."""
    from projector import save_projector
    from qwen3_backbone import save_pretrained
    from qwen3_backbone.files import atomic_folder

    from .sharding import SHARDS

    final = run_dir / f"step-{step:08d}"
    with atomic_folder(final, prefix=f".tmp-step-{step:08d}-", replace=True) as tmp:  # our own step folder
        if shards is not None:
            os.replace(shards, tmp / SHARDS)
        else:
            save_projector(captioner.projector, tmp / "projector")
            if stage == "lora":
                captioner.language_model.save_pretrained(str(tmp / "adapter"))
            elif stage == "full":
                save_pretrained(captioner.backbone, tmp / "language_model", max_shard_bytes=SHARD_BYTES)
            _save_optimizer(optimizer, tmp)
        _save_rng_and_state(tmp, {**state, "step": step, "stage": stage, "scheduler": scheduler.state_dict()})
        (tmp / "config.yaml").write_text(config_yaml, encoding="utf-8")  # the folder is renamed into place whole
    for old in checkpoint_dirs(run_dir)[:-keep_last]:
        if old != final and _step(old) < step:  # only older steps of this run; never the one just written
            shutil.rmtree(old, ignore_errors=True)
    for stale in run_dir.glob(".tmp-step-*"):  # left by a kill during an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(
    checkpoint: Path, captioner, stage: str, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and random states; returns the trainer state. A
    sharded run's checkpoint restores each process's own slice (vcap.sharding)."""
    from .sharding import is_sharded, load_rank_shard

    if is_sharded(checkpoint):
        restore_rank_rng = load_rank_shard(checkpoint, captioner, optimizer)
        state = _load_rng_and_state(checkpoint)  # last: building modules above draws random numbers
        restore_rank_rng()  # this process's own torch generators
    else:
        load_trainable_weights(checkpoint, captioner, stage)
        _load_optimizer(optimizer, checkpoint)
        state = _load_rng_and_state(checkpoint)
    scheduler.load_state_dict(state.pop("scheduler"))
    return state


def load_trainable_weights(checkpoint: Path, captioner, stage: str) -> None:
    """The projector, plus the adapter (lora) or the language model (full) of a checkpoint, into an
    unsharded captioner (a sharded run's slices are put together)."""
    from projector import load_projector
    from qwen3_backbone.weights import load_weights_into

    from .sharding import is_sharded, load_consolidated

    if is_sharded(checkpoint):
        load_consolidated(checkpoint, captioner, ("projector.",) + (("language_model.",) if stage != "projector" else ()))
        return
    source = load_projector(checkpoint / "projector")
    captioner.projector.load_state_dict(source.state_dict())
    if stage == "lora" and (checkpoint / "adapter").exists():
        from .adapter import load_adapter_weights

        load_adapter_weights(captioner.language_model, checkpoint / "adapter")
    elif stage == "full" and (checkpoint / "language_model").exists():
        load_weights_into(captioner.backbone, checkpoint / "language_model")  # one file or shards


# -- optimizer state as safetensors + JSON -----------------------------------------------------------

def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimizer's state as named tensors (``"<param index>.<key>"``: AdamW's moments and step)
    and a JSON-able rest (parameter groups, non-tensor values)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """The inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    from safetensors.torch import save_file

    tensors, meta = optimizer_tensors(optimizer)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(folder / "optimizer.safetensors"),
              metadata={"format": "pt"})
    (folder / "optimizer.json").write_text(json.dumps(meta), encoding="utf-8")


def _load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    from safetensors.torch import load_file

    meta = json.loads((folder / "optimizer.json").read_text(encoding="utf-8"))
    optimizer_from_tensors(optimizer, load_file(str(folder / "optimizer.safetensors")), meta)


# -- random states and the trainer's own state ----------------------------------------------------------

def _save_rng_and_state(folder: Path, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # every GPU's generator too: dropout on GPU resumes exactly
        states.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(states, str(folder / "rng.safetensors"))
    py_state = random.getstate()
    np_state = np.random.get_state()
    payload = {
        **state,
        "python_random": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy_random": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    (folder / "trainer_state.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")


def _load_rng_and_state(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    states = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(states["torch"])
    cuda = [states[f"cuda.{i}"] for i in range(len(states) - 1) if f"cuda.{i}" in states]
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            raise UsageError(f"{folder}: saved with {len(cuda)} GPU random states, this machine has "
                             f"{torch.cuda.device_count()} GPUs; resume with the same number of GPUs")
        torch.cuda.set_rng_state_all(cuda)
    state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    version, internal, gauss = state.pop("python_random")
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state.pop("numpy_random")
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    return state
