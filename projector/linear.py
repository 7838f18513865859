"""``linear``: one linear map per vision token (the original LLaVA projector).

Notation: B videos, T frames, P tokens per frame, Dv vision width, D language-model width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LinearProjectorConfig:
    vision_hidden_size: int
    text_hidden_size: int

    def __post_init__(self) -> None:
        _check_positive(self, "vision_hidden_size", "text_hidden_size")


class LinearProjector(nn.Module):
    def __init__(self, config: LinearProjectorConfig) -> None:
        super().__init__()
        self.config = config
        self.proj = nn.Linear(config.vision_hidden_size, config.text_hidden_size)

    def num_output_tokens(self, T: int, P: int) -> int:
        return T * P

    def temporal_groups(self, T: int) -> list[range]:
        """The frames behind each temporal group of the output, in order: one group per frame."""
        return [range(t, t + 1) for t in range(T)]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (B, T, P, Dv) -> (B, T*P, D)."""
        B, T, P, Dv = feats.shape
        return self.proj(feats.reshape(B, T * P, Dv))  # (B, T*P, D)


def _check_positive(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive integer, got {value!r}")
