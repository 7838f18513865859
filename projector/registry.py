"""The explicit registry of projector types, construction from a config, and safetensors I/O."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from qwen3_backbone.files import write_bytes, write_text

from .linear import LinearProjector, LinearProjectorConfig
from .mlp import MLPProjector, MLPProjectorConfig
from .pooled_mlp import PooledMLPProjector, PooledMLPProjectorConfig

# type name -> (config dataclass, module class)
PROJECTORS: dict[str, tuple[type, type[nn.Module]]] = {
    "linear": (LinearProjectorConfig, LinearProjector),
    "mlp2x_gelu": (MLPProjectorConfig, MLPProjector),
    "pooled_mlp": (PooledMLPProjectorConfig, PooledMLPProjector),
}
WEIGHTS_FILE, CONFIG_FILE = "projector.safetensors", "projector.json"


def _type_of(config: Any) -> str:
    for name, (config_cls, _) in PROJECTORS.items():
        if type(config) is config_cls:
            return name
    raise TypeError(f"not a projector config: {type(config).__name__}")


def build_projector(config: Any) -> nn.Module:
    """The projector a config describes (a config dataclass from PROJECTORS)."""
    return PROJECTORS[_type_of(config)][1](config)


def projector_config_to_dict(config: Any) -> dict[str, Any]:
    return {"type": _type_of(config), **dataclasses.asdict(config)}


def projector_config_from_dict(data: dict[str, Any], where: str = "projector") -> Any:
    """``{"type": ..., **fields}`` -> that type's config; unknown types and keys name themselves."""
    data = dict(data)
    kind = data.pop("type", None)
    if kind not in PROJECTORS:
        raise ValueError(f"{where}.type must be one of {', '.join(PROJECTORS)}, got {kind!r}")
    config_cls = PROJECTORS[kind][0]
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} for projector type {kind!r} (known: {', '.join(sorted(known))})")
    try:
        return config_cls(**data)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None


def save_projector(projector: nn.Module, out_dir: str | os.PathLike) -> Path:
    """Write ``projector.safetensors`` and ``projector.json`` into ``out_dir`` (each atomically)."""
    from safetensors.torch import save

    out = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in projector.state_dict().items()}
    write_bytes(out / WEIGHTS_FILE, save(state, metadata={"format": "pt"}))
    write_text(out / CONFIG_FILE, json.dumps(projector_config_to_dict(projector.config), indent=2))
    return out


def load_projector(folder: str | os.PathLike) -> nn.Module:
    """Build the projector from ``projector.json`` and load ``projector.safetensors`` (strict).

    A missing, unreadable or mismatched file is a CheckpointError naming it."""
    from qwen3_backbone.weights import CheckpointError, load_state_strict, read_safetensors

    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    try:
        config = projector_config_from_dict(json.loads(config_path.read_text(encoding="utf-8")), str(config_path))
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no {CONFIG_FILE} (not a projector folder)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{config_path}: {e}") from None
    projector = build_projector(config)
    load_state_strict(projector, read_safetensors(folder / WEIGHTS_FILE), folder / WEIGHTS_FILE)
    return projector
