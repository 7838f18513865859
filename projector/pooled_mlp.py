"""``pooled_mlp``: merge neighbouring patches (and optionally neighbouring frames), then the MLP.

As LLaVA-NeXT-Video does to fit more frames into the context: a stride-2 spatial pool turns a
24x24 grid into 12x12, a quarter of the tokens per frame. Each ``spatial_stride`` x
``spatial_stride`` block of patches is merged by averaging (``spatial_merge="mean"``) or, as
Qwen2-VL's and Qwen3-VL's patch merger does, by concatenating its patches' features
(``"concat"``, space-to-depth with ``pixel_unshuffle``), which keeps where in the block each
feature was: a shape on the left and the same shape on the right give different tokens.
``temporal_stride`` frames are merged by averaging (``temporal_merge="mean"``) or, as Qwen2-VL
merges two frames per patch, by concatenating their features (``"concat"``), which keeps their
order: each output token then sees how its patch changes over those frames. The P tokens of a
frame must form a square grid (use the vision encoder without its class token). Frames are
padded by repeating the last one when T is not a multiple of ``temporal_stride``; the spatial
grid likewise by its edge. With ``frame_difference="previous"`` each output token also reads how
it differs from the same token of the previous temporal group: the MLP sees [x_t, x_t - x_(t-1)],
so a scene change shows in the tokens of the group where it happens, not only across groups;
``"both"`` adds the change to the next group, x_(t+1) - x_t, so an event's first group also shows
its motion. Differences past either end of the video are zero. With ``neighbours="all"`` each
token also reads the 8 tokens around it in the merged grid (a 3x3 window, ``unfold``, zeros past
the edge), as a convolution would: a token alone says what it shows, and with its neighbours also
where a shape went, which the language model otherwise has to work out across tokens.
``"differences"`` windows only the frame differences: a token reads itself alone and the changes
around it, so what it shows stays the same wherever it is.

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
# neighbours value -> how many Dv-wide parts the MLP reads, given the frame_difference parts: each
# part alone, each with its 8 neighbours (x9), or the frame itself alone and its differences x9
NEIGHBOURS_PARTS = {"none": lambda parts: parts, "all": lambda parts: 9 * parts,
                    "differences": lambda parts: 1 + 9 * (parts - 1)}


@dataclass
class PooledMLPProjectorConfig:
    vision_hidden_size: int
    text_hidden_size: int
    spatial_stride: int = 2
    temporal_stride: int = 1
    spatial_merge: str = "mean"  # mean | concat: how a block of spatial_stride x spatial_stride patches becomes one token
    temporal_merge: str = "mean"  # mean | concat
    depth: int = 2
    frame_difference: str = "none"  # none | previous | both: also the change from the previous (and to the next) group
    neighbours: str = "none"  # none | all | differences: what each token also reads of the 8 tokens around it

    def __post_init__(self) -> None:
        _check_positive(self, "vision_hidden_size", "text_hidden_size", "spatial_stride", "temporal_stride", "depth")
        for name in ("spatial_merge", "temporal_merge"):
            if getattr(self, name) not in ("mean", "concat"):
                raise ValueError(f"{name} must be 'mean' or 'concat', got {getattr(self, name)!r}")
        if self.frame_difference not in FRAME_DIFFERENCE_PARTS:
            raise ValueError(f"frame_difference must be one of {list(FRAME_DIFFERENCE_PARTS)}, "
                             f"got {self.frame_difference!r}")
        if self.neighbours not in NEIGHBOURS_PARTS:
            raise ValueError(f"neighbours must be one of {list(NEIGHBOURS_PARTS)}, got {self.neighbours!r}")
        if self.neighbours == "differences" and self.frame_difference == "none":
            raise ValueError("neighbours='differences' needs a frame_difference ('previous' or 'both')")


class PooledMLPProjector(nn.Module):
    def __init__(self, config: PooledMLPProjectorConfig) -> None:
        super().__init__()
        self.config = config
        width = config.vision_hidden_size  # the MLP's input width: Dv times what is concatenated
        width *= config.spatial_stride**2 if config.spatial_merge == "concat" else 1
        width *= config.temporal_stride if config.temporal_merge == "concat" else 1
        width *= NEIGHBOURS_PARTS[config.neighbours](FRAME_DIFFERENCE_PARTS[config.frame_difference])
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
        Tp, gp = T + pad_t, (g + pad_g) // s  # frames after padding, merged grid side g'
        if self.config.spatial_merge == "concat":  # space-to-depth: channel c*s*s + i*s + j is patch (i, j)'s c
            x = F.pixel_unshuffle(x.transpose(1, 2).flatten(0, 1), s)  # (B*(T+pad), Dv*s*s, g', g')
            x = x.unflatten(0, (B, Tp)).transpose(1, 2)  # (B, C, T+pad, g', g'), C = Dv*s*s
        elif s > 1:
            x = F.avg_pool3d(x, kernel_size=(1, s, s), stride=(1, s, s))  # (B, C, T+pad, g', g'), C = Dv
        C = x.shape[1]
        if self.config.temporal_merge == "concat":
            x = x.reshape(B, C, Tp // ts, ts, gp * gp).permute(0, 2, 4, 3, 1)  # (B, T', g'*g', ts, C)
            x = x.reshape(B, Tp // ts, gp * gp, ts * C)  # (B, T', g'*g', ts*C), frames in order
        else:
            if ts > 1:
                x = F.avg_pool3d(x, kernel_size=(ts, 1, 1), stride=(ts, 1, 1))  # (B, C, T', g', g')
            x = x.flatten(3).permute(0, 2, 3, 1)  # (B, T', g'*g', C)
        parts = [x]  # each (B, T', g'*g', C)
        if self.config.frame_difference != "none":
            previous = torch.cat([x[:, :1], x[:, :-1]], dim=1)  # group t-1's tokens (the first: itself)
            parts.append(x - previous)
            if self.config.frame_difference == "both":
                following = torch.cat([x[:, 1:], x[:, -1:]], dim=1)  # group t+1's tokens (the last: itself)
                parts.append(following - x)
        if self.config.neighbours != "none":  # every part's 3x3 window, or only the differences'
            first = 0 if self.config.neighbours == "all" else 1
            parts = parts[:first] + [_window(part, gp) for part in parts[first:]]
        return self.mlp(torch.cat(parts, dim=-1).flatten(1, 2))  # (B, N, D), frame-major


def _window(x: torch.Tensor, g: int) -> torch.Tensor:
    """(B, T, g*g, C) -> (B, T, g*g, C*9): each token's 3x3 window of the g x g grid, zeros past the
    edge; channel c*9 + (di+1)*3 + (dj+1) is the token (i+di, j+dj)'s channel c (``unfold``)."""
    B, T = x.shape[:2]
    grid = x.flatten(0, 1).transpose(1, 2).unflatten(-1, (g, g))  # (B*T, C, g, g)
    return F.unfold(grid, kernel_size=3, padding=1).transpose(1, 2).unflatten(0, (B, T))  # (B, T, g*g, C*9)
