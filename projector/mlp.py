"""``mlp2x_gelu``: LLaVA-1.5's projector, Linear(Dv, D) -> GELU -> Linear(D, D), per token.

Notation: B videos, T frames, P tokens per frame, Dv vision width, D language-model width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .linear import _check_positive


@dataclass
class MLPProjectorConfig:
    vision_hidden_size: int
    text_hidden_size: int
    depth: int = 2  # linear layers (GELU between them); LLaVA-1.5 uses 2

    def __post_init__(self) -> None:
        _check_positive(self, "vision_hidden_size", "text_hidden_size", "depth")


def mlp_layers(config: MLPProjectorConfig) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(config.vision_hidden_size, config.text_hidden_size)]
    for _ in range(config.depth - 1):
        layers += [nn.GELU(), nn.Linear(config.text_hidden_size, config.text_hidden_size)]
    return nn.Sequential(*layers)


class MLPProjector(nn.Module):
    def __init__(self, config: MLPProjectorConfig) -> None:
        super().__init__()
        self.config = config
        self.mlp = mlp_layers(config)

    def num_output_tokens(self, T: int, P: int) -> int:
        return T * P

    def temporal_groups(self, T: int) -> list[range]:
        """The frames behind each temporal group of the output, in order: one group per frame."""
        return [range(t, t + 1) for t in range(T)]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (B, T, P, Dv) -> (B, T*P, D)."""
        B, T, P, Dv = feats.shape
        return self.mlp(feats.reshape(B, T * P, Dv))  # (B, T*P, D)
