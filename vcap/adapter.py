"""LoRA adapters in peft's folder format, read without handing the folder to peft unchecked.

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` (what peft's
``save_pretrained`` writes, and what peft, LLaMA-Factory and ms-swift load). vcap reads the JSON
itself and builds peft's ``LoraConfig`` from an allow-list of keys with checked values, so a
folder cannot switch on options that import modules or fetch files (``megatron_config``,
``loftq_config``, ``eva_config``, ...). Weights come from the safetensors file only: a folder
with ``adapter_model.bin`` (a pickle) is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from qwen3_backbone.weights import CheckpointError, read_safetensors

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"

# adapter_config.json keys passed on to peft's LoraConfig, with the type each must have
ALLOWED: dict[str, tuple[type, ...]] = {
    "r": (int,),
    "lora_alpha": (int, float),
    "lora_dropout": (int, float),
    "target_modules": (list, str),
    "exclude_modules": (list, str, type(None)),
    "bias": (str,),
    "fan_in_fan_out": (bool,),
    "use_rslora": (bool,),
    "use_dora": (bool,),
    "lora_bias": (bool,),
    "init_lora_weights": (bool,),
    "rank_pattern": (dict,),
    "alpha_pattern": (dict,),
    "layers_to_transform": (list, int, type(None)),
    "layers_pattern": (list, str, type(None)),
}
# keys peft writes that carry no behaviour for vcap (metadata, or the loader options vcap sets itself)
IGNORED = {"peft_type", "peft_version", "task_type", "base_model_name_or_path", "revision", "inference_mode",
           "auto_mapping", "megatron_core", "qalora_group_size"}


def read_adapter_config(folder: str | os.PathLike) -> Any:
    """peft's LoraConfig for an adapter folder, built from the allowed keys only."""
    from peft import LoraConfig

    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not (folder / WEIGHTS_FILE).is_file():
        pickled = " (only adapter_model.bin, a pickle, which vcap never reads)" if (folder / "adapter_model.bin").exists() else ""
        raise CheckpointError(f"{folder}: no {WEIGHTS_FILE}{pickled}; save the adapter with safetensors")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no {CONFIG_FILE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{path}: vcap loads LoRA adapters only (peft_type 'LORA')")
    options = {}
    for key, value in data.items():
        if key in ALLOWED:
            if not isinstance(value, ALLOWED[key]) or (isinstance(value, bool) and bool not in ALLOWED[key]):
                raise CheckpointError(f"{path}: {key} = {value!r} has the wrong type")
            options[key] = value
        elif key not in IGNORED and value not in (None, False, {}, [], ""):
            raise CheckpointError(f"{path}: {key} = {value!r} is not supported by vcap (plain LoRA adapters only)")
    if options.get("bias", "none") not in ("none", "all", "lora_only"):
        raise CheckpointError(f"{path}: bias must be none, all or lora_only, got {options['bias']!r}")
    try:
        return LoraConfig(**options)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def load_adapter(model: nn.Module, folder: str | os.PathLike, trainable: bool = False) -> nn.Module:
    """``model`` wrapped by peft with the adapter in ``folder`` (its config and weights, checked)."""
    from peft import get_peft_model

    config = read_adapter_config(folder)
    config.inference_mode = not trainable
    wrapped = get_peft_model(model, config)
    load_adapter_weights(wrapped, folder)
    if not trainable:
        wrapped.requires_grad_(False)
    return wrapped


def load_adapter_weights(model: nn.Module, folder: str | os.PathLike) -> None:
    """Put the adapter weights of ``folder`` into an already wrapped model (every LoRA weight, strict)."""
    from peft import set_peft_model_state_dict

    path = Path(folder) / WEIGHTS_FILE
    result = set_peft_model_state_dict(model, read_safetensors(path))
    if result.unexpected_keys:
        raise CheckpointError(f"{path}: unexpected adapter weight {result.unexpected_keys[0]!r}")
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise CheckpointError(f"{path}: missing adapter weight {missing[0]!r}")
