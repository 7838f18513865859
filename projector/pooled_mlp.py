"""``pooled_mlp``: average-pool the patch grid (and optionally neighbouring frames), then the MLP.

As LLaVA-NeXT-Video does to fit more frames into the context: a stride-2 spatial pool turns a
24x24 grid into 12x12, a quarter of the tokens per frame. The P tokens of a frame must form a
square grid (use the vision encoder without its class token). Frames are padded by repeating the
last one when T is not a multiple of ``temporal_stride``; the spatial grid likewise by its edge.

Notation: B videos, T frames, P = g*g tokens per frame, Dv vision width, D language-model width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .linear import _check_positive
from .mlp import MLPProjectorConfig, mlp_layers


@dataclass
class PooledMLPProjectorConfig:
    vision_hidden_size: int
    text_hidden_size: int
    spatial_stride: int = 2
    temporal_stride: int = 1
    depth: int = 2

    def __post_init__(self) -> None:
        _check_positive(self, "vision_hidden_size", "text_hidden_size", "spatial_stride", "temporal_stride", "depth")


class PooledMLPProjector(nn.Module):
    def __init__(self, config: PooledMLPProjectorConfig) -> None:
        super().__init__()
        self.config = config
        self.mlp = mlp_layers(MLPProjectorConfig(config.vision_hidden_size, config.text_hidden_size, config.depth))

    def _grid(self, P: int) -> int:
        g = math.isqrt(P)
        if g * g != P:
            raise ValueError(f"pooled_mlp needs a square patch grid, got P={P} tokens per frame "
                             "(drop the class token: vision.use_cls_token=false)")
        return g

    def num_output_tokens(self, T: int, P: int) -> int:
        g = math.ceil(self._grid(P) / self.config.spatial_stride)
        return math.ceil(T / self.config.temporal_stride) * g * g

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (B, T, P, Dv) -> (B, ceil(T/ts) * ceil(g/s)^2, D)."""
        B, T, P, Dv = feats.shape
        g, s, ts = self._grid(P), self.config.spatial_stride, self.config.temporal_stride
        x = feats.reshape(B, T, g, g, Dv).permute(0, 4, 1, 2, 3)  # (B, Dv, T, g, g)
        pad_t, pad_g = (-T) % ts, (-g) % s
        if pad_t or pad_g:
            x = F.pad(x, (0, pad_g, 0, pad_g, 0, pad_t), mode="replicate")
        x = F.avg_pool3d(x, kernel_size=(ts, s, s), stride=(ts, s, s))  # (B, Dv, T', g', g')
        x = x.flatten(2).transpose(1, 2)  # (B, T'*g'*g', Dv), frame-major
        return self.mlp(x)  # (B, N, D)
