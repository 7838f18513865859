"""4-bit NF4 weights with bitsandbytes, the QLoRA way: every linear layer of the decoder layers
(attention, MLP, MoE experts; not the MoE router, embeddings or the head) stored as NF4 with double
quantization, computing in ``compute_dtype``.

Two ways in, one quantizer:
- :func:`load_pretrained(..., load_in_4bit=True) <qwen3_backbone.weights.load_pretrained>`
  swaps the layers on the meta device and quantizes each weight as it is read from the
  safetensors shards, so the model never exists in full precision (peak: the 4-bit model plus one
  tensor);
- :func:`quantize_4bit` swaps the layers of a model already in memory (random presets, tests),
  one layer at a time.
bitsandbytes runs this on CUDA and, since 0.45, on CPU.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # "kernels" is not installed: harmless


def quantized_layer_names(model: nn.Module) -> list[str]:
    """The linear layers 4-bit loading replaces: inside the decoder layers, the MoE router excepted."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or ".layers." not in f".{name}":
            continue
        if name.endswith(".gate") and module.out_features != module.in_features:  # the MoE router stays exact
            continue
        names.append(name)
    return names


def swap_to_linear4bit(model: nn.Module, compute_dtype: torch.dtype) -> list[str]:
    """Replace those layers by bitsandbytes ``Linear4bit`` shells (on the meta device, no weights yet);
    returns their names. Their weights are then set with :func:`quantized_weight`."""
    import bitsandbytes as bnb

    names = quantized_layer_names(model)
    for name in names:
        parent_name, child = name.rsplit(".", 1)
        old = model.get_submodule(name)
        new = bnb.nn.Linear4bit(old.in_features, old.out_features, bias=old.bias is not None,
                                compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4", device="meta")
        setattr(model.get_submodule(parent_name), child, new)
    return names


def quantized_weight(weight: torch.Tensor, module: nn.Module, device: torch.device | str) -> nn.Parameter:
    """``weight`` (out, in) in any float dtype, quantized to NF4 on ``device`` for ``module`` (a Linear4bit)."""
    import bitsandbytes as bnb

    param = bnb.nn.Params4bit(weight.contiguous(), requires_grad=False, quant_type="nf4", compress_statistics=True,
                              module=module)
    return param.to(device)  # quantizes here


def quantize_4bit(model: nn.Module, compute_dtype: torch.dtype = torch.float32) -> int:
    """Quantize a model in memory, layer by layer (each full-precision weight is freed as its 4-bit
    copy is made); returns how many layers were quantized."""
    weights = {name: model.get_submodule(name).weight.detach() for name in quantized_layer_names(model)}
    biases = {name: model.get_submodule(name).bias for name in weights}
    devices = {name: w.device for name, w in weights.items()}
    names = swap_to_linear4bit(model, compute_dtype)
    for name in names:
        module = model.get_submodule(name)
        module.weight = quantized_weight(weights.pop(name), module, devices[name])
        if biases[name] is not None:
            module.bias = nn.Parameter(biases[name].detach().to(devices[name]), requires_grad=False)
    return len(names)


def footprint(model: nn.Module) -> dict[str, int]:
    """What a model's weights occupy: ``bytes`` (parameters and buffers, each storage once, with
    the 4-bit layers' quantization statistics), ``params_4bit`` (parameters stored as NF4) and
    ``params_plain`` (the others)."""
    seen: set[int] = set()
    total = packed = plain = 0

    def count(tensor: torch.Tensor) -> int:
        if tensor.data_ptr() in seen:
            return 0
        seen.add(tensor.data_ptr())
        return tensor.numel() * tensor.element_size()

    for tensor in [*model.parameters(), *model.buffers()]:
        total += count(tensor)
        state = getattr(tensor, "quant_state", None)
        if state is None:
            plain += tensor.numel() if isinstance(tensor, nn.Parameter) else 0
            continue
        packed += state.shape.numel()
        total += sum(count(t) for t in state.as_dict().values() if isinstance(t, torch.Tensor))
    return {"bytes": total, "params_4bit": packed, "params_plain": plain}
