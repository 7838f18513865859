"""Training beyond one GPU's memory: PyTorch FSDP2 (``train.fsdp: true``), launched by ``torchrun``.

``torch.distributed.fsdp.fully_shard`` (the engine torchtitan and torchtune build on) splits every
parameter along its first dimension across the processes: the frozen base as well as what trains,
with the gradients and AdamW's moments following the trainable ones. Each decoder layer is its
own unit (gathered for its forward and backward, then freed), the vision tower another, and the
captioner the root (projector, embeddings, final norm, head). Mixed precision stays torch's
autocast, as in one process, so a sharded run computes what an unsharded one does.

Checkpoints of a sharded run hold ``fsdp/``: one safetensors file per process with its slice of
every trainable parameter, of the optimizer state and its random state, plus ``layout.json`` (the
process count and each parameter's full shape) and ``optimizer.json`` (parameter groups).
Resuming needs the same number of processes; every process reads only its own file. ``vcap
export`` and ``train.init_from`` put the full tensors back together (the slices, concatenated
along the first dimension) one parameter at a time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UsageError

SHARDS = "fsdp"  # the folder in a checkpoint
LAYOUT = "layout.json"


def check_launch() -> None:
    """A sharded run needs the process group torchrun (or accelerate launch) sets up."""
    import torch.distributed as dist

    if dist.is_available() and not dist.is_initialized() and "RANK" in os.environ and "MASTER_ADDR" in os.environ:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")  # torchrun with one process
    if not dist.is_available() or not dist.is_initialized():
        raise UsageError("train.fsdp shards the model across processes: launch with "
                         "torchrun --nproc_per_node N -m vcap train ... (or accelerate launch -m vcap train ...)")


def shard_captioner(captioner: nn.Module, device: torch.device) -> nn.Module:
    """Shard ``captioner`` in place across the default process group's processes; returns it.
    Its parameters become DTensors; build the optimizer afterwards."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    check_launch()
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    # No captioner.to(device) first: fully_shard moves one unit's full tensors to the device, keeps
    # this process's slices and frees the rest, so a GPU never holds more than its shards plus one
    # unit (a 32B model shards over 40 GB GPUs). The weights wait on the host memory-mapped, one
    # copy in the page cache for all the processes of a machine.
    if any(True for _ in captioner.vision.parameters()):
        fully_shard(captioner.vision, mesh=mesh)
    for layer in captioner.backbone.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(captioner, mesh=mesh)
    return captioner


def is_sharded(checkpoint: Path) -> bool:
    return (checkpoint / SHARDS / LAYOUT).is_file()


def shard_file(rank: int, world: int) -> str:
    return f"rank-{rank:05d}-of-{world:05d}.safetensors"


def _trainable(captioner: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in captioner.named_parameters() if p.requires_grad}


def _local(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.detach().cpu().contiguous()


# -- writing ------------------------------------------------------------------------------------------------

def write_rank_shard(folder: Path, captioner: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """This process's slice of the trainable weights, its optimizer state and its random state, to
    ``folder/rank-R-of-W.safetensors``; process 0 also writes the layout and the parameter groups."""
    import torch.distributed as dist
    from safetensors.torch import save_file

    from .checkpoint import optimizer_tensors

    rank, world = dist.get_rank(), dist.get_world_size()
    params = _trainable(captioner)
    tensors = {f"param/{name}": _local(p) for name, p in params.items()}
    state, meta = optimizer_tensors(optimizer)
    tensors.update({f"optimizer/{key}": _local(value) for key, value in state.items()})
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()  # this process's device
    save_file(tensors, str(folder / shard_file(rank, world)), metadata={"format": "pt"})
    if rank == 0:
        layout = {"world": world, "params": {name: list(p.shape) for name, p in params.items()}}
        (folder / LAYOUT).write_text(json.dumps(layout, indent=1), encoding="utf-8")
        (folder / "optimizer.json").write_text(json.dumps(meta), encoding="utf-8")


# -- reading: resume (every process its own slice) ----------------------------------------------------

def load_rank_shard(checkpoint: Path, captioner: nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """Restore this process's slice of the weights and optimizer state (resume); returns what
    restores its random state, to call once nothing else will draw from it."""
    import torch.distributed as dist
    from safetensors.torch import load_file
    from torch.distributed.tensor import DTensor

    from .checkpoint import optimizer_from_tensors

    folder = checkpoint / SHARDS
    layout = _layout(folder)
    world = dist.get_world_size() if dist.is_initialized() else 1
    if layout["world"] != world or not dist.is_initialized():
        raise UsageError(f"{checkpoint} was written by {layout['world']} processes with train.fsdp; resume it with "
                         f"torchrun --nproc_per_node {layout['world']} (this run has {world})")
    tensors = load_file(str(folder / shard_file(dist.get_rank(), world)))
    params = _trainable(captioner)
    with torch.no_grad():
        for name, p in params.items():
            local = p.to_local() if isinstance(p, DTensor) else p
            local.copy_(tensors[f"param/{name}"])
    order = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            index, name = key.removeprefix("optimizer/").split(".", 1)
            param = order[int(index)]
            if isinstance(param, DTensor) and value.dim() > 0:
                value = DTensor.from_local(value.to(param.device), param.device_mesh, param.placements,
                                           shape=param.shape, stride=param.stride())
            state[f"{index}.{name}"] = value
    meta = json.loads((folder / "optimizer.json").read_text(encoding="utf-8"))
    optimizer_from_tensors(optimizer, state, meta)

    def restore_rng() -> None:
        torch.set_rng_state(tensors["rng/torch"])
        if "rng/cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng/cuda"])

    return restore_rng


# -- reading: the full weights (export, init_from) -------------------------------------------------------

def load_consolidated(checkpoint: Path, captioner: nn.Module, prefixes: tuple[str, ...]) -> None:
    """Copy the full trainable weights of a sharded checkpoint whose names start with one of
    ``prefixes`` into an unsharded ``captioner``: each parameter's slices concatenated along the
    first dimension, one parameter at a time (the files are memory-mapped)."""
    from safetensors import safe_open

    folder = checkpoint / SHARDS
    layout = _layout(folder)
    world = layout["world"]
    params = dict(captioner.named_parameters())
    handles = [safe_open(str(folder / shard_file(rank, world)), framework="pt") for rank in range(world)]
    with torch.no_grad():
        for name, shape in layout["params"].items():
            if not name.startswith(prefixes):
                continue
            if name not in params:
                raise UsageError(f"{checkpoint}: parameter {name!r} is not in the model this config builds")
            full = torch.cat([h.get_tensor(f"param/{name}") for h in handles], dim=0) if shape else \
                handles[0].get_tensor(f"param/{name}")
            if list(full.shape) != shape or tuple(params[name].shape) != tuple(shape):
                raise UsageError(f"{checkpoint}: parameter {name!r} has shape {list(full.shape)}, expected {shape}")
            params[name].copy_(full)


def _layout(folder: Path) -> dict[str, Any]:
    try:
        layout = json.loads((folder / LAYOUT).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{folder / LAYOUT}: not a readable FSDP checkpoint layout ({e})") from None
    missing = [shard_file(r, layout["world"]) for r in range(layout["world"])
               if not (folder / shard_file(r, layout["world"])).is_file()]
    if missing:
        raise UsageError(f"{folder}: {missing[0]} is missing; the checkpoint is incomplete")
    return layout
