"""4-bit language-model weights with bitsandbytes (QLoRA training, ``vcap caption --load-in-4bit``)."""

from __future__ import annotations

import logging

import torch

logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # "kernels" is not installed: harmless


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
