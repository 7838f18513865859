"""``pooled_mlp``: average-pool the patch grid (and optionally merge neighbouring frames), then the MLP.

As LLaVA-NeXT-Video does to fit more frames into the context: a stride-2 spatial pool turns a
24x24 grid into 12x12, a quarter of the tokens per frame. ``temporal_stride`` frames are merged
by averaging (``temporal_merge="mean"``) or, as Qwen2-VL merges two frames per patch, by
concatenating their features (``"concat"``), which keeps their order: each output token then
sees how its patch changes over those frames. The P tokens of a frame must form a
square grid (use the vision encoder without its class token). Frames are padded by repeating the
last one when T is not a multiple of ``temporal_stride``; the spatial grid likewise by its edge.
With ``frame_difference="previous"`` each output token also reads how it differs from the same
token of the previous temporal group: the MLP sees [x_t, x_t - x_(t-1)], so a scene change shows
in the tokens of the group where it happens, not only across groups; ``"both"`` adds the change
to the next group, x_(t+1) - x_t, so an event's first group also shows its motion. Differences
past either end of the video are zero.

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


FRAME_DIFFERENCE_PARTS = {"none": 1, "previous": 2, "both": 3}  # value -> how many Dv-wide parts the MLP reads


@dataclass
class PooledMLPProjectorConfig:
    vision_hidden_size: int
    text_hidden_size: int
    spatial_stride: int = 2
    temporal_stride: int = 1
    temporal_merge: str = "mean"  # mean | concat
    depth: int = 2
    frame_difference: str = "none"  # none | previous | both: also the change from the previous (and to the next) group

    def __post_init__(self) -> None:
        _check_positive(self, "vision_hidden_size", "text_hidden_size", "spatial_stride", "temporal_stride", "depth")
        if self.temporal_merge not in ("mean", "concat"):
            raise ValueError(f"temporal_merge must be 'mean' or 'concat', got {self.temporal_merge!r}")
        if self.frame_difference not in FRAME_DIFFERENCE_PARTS:
            raise ValueError(f"frame_difference must be one of {list(FRAME_DIFFERENCE_PARTS)}, "
                             f"got {self.frame_difference!r}")


class PooledMLPProjector(nn.Module):
    def __init__(self, config: PooledMLPProjectorConfig) -> None:
        super().__init__()
        self.config = config
        width = config.vision_hidden_size * (config.temporal_stride if config.temporal_merge == "concat" else 1)
        width *= FRAME_DIFFERENCE_PARTS[config.frame_difference]
        self.mlp = mlp_layers(MLPProjectorConfig(width, config.text_hidden_size, config.depth))

    def _grid(self, P: int) -> int:
        g = math.isqrt(P)
        if g * g != P:
            raise ValueError(f"pooled_mlp needs a square patch grid, got P={P} tokens per frame "
                             "(drop the class token: vision.use_cls_token=false)")
        return g

    def num_output_tokens(self, T: int, P: int) -> int:
        g = math.ceil(self._grid(P) / self.config.spatial_stride)
        return math.ceil(T / self.config.temporal_stride) * g * g

    def temporal_groups(self, T: int) -> list[range]:
        """The frames behind each temporal group of the output, in order: ``temporal_stride``
        consecutive frames each (the last group may hold fewer; its padding repeats its last frame)."""
        ts = self.config.temporal_stride
        return [range(t, min(t + ts, T)) for t in range(0, T, ts)]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (B, T, P, Dv) -> (B, ceil(T/ts) * ceil(g/s)^2, D)."""
        B, T, P, Dv = feats.shape
        g, s, ts = self._grid(P), self.config.spatial_stride, self.config.temporal_stride
        x = feats.reshape(B, T, g, g, Dv).permute(0, 4, 1, 2, 3)  # (B, Dv, T, g, g)
        pad_t, pad_g = (-T) % ts, (-g) % s
        if pad_t or pad_g:
            x = F.pad(x, (0, pad_g, 0, pad_g, 0, pad_t), mode="replicate")
        if self.config.temporal_merge == "concat":
            x = F.avg_pool3d(x, kernel_size=(1, s, s), stride=(1, s, s))  # (B, Dv, T+pad, g', g')
            Tp, gp = x.shape[2], x.shape[3]
            x = x.reshape(B, Dv, Tp // ts, ts, gp * gp).permute(0, 2, 4, 3, 1)  # (B, T', g'*g', ts, Dv)
            x = x.reshape(B, Tp // ts, gp * gp, ts * Dv)  # (B, T', g'*g', ts*Dv), frames in order
        else:
            x = F.avg_pool3d(x, kernel_size=(ts, s, s), stride=(ts, s, s))  # (B, Dv, T', g', g')
            x = x.flatten(3).permute(0, 2, 3, 1)  # (B, T', g'*g', Dv)
        if self.config.frame_difference != "none":
            previous = torch.cat([x[:, :1], x[:, :-1]], dim=1)  # group t-1's tokens (the first: itself)
            parts = [x, x - previous]
            if self.config.frame_difference == "both":
                following = torch.cat([x[:, 1:], x[:, -1:]], dim=1)  # group t+1's tokens (the last: itself)
                parts.append(following - x)
            x = torch.cat(parts, dim=-1)  # (B, T', g'*g', 2 or 3 * width)
        return self.mlp(x.flatten(1, 2))  # (B, N, D), frame-major
