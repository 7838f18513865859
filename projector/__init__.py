"""projector: vision-to-language projectors behind one contract.

Every projector maps frozen vision features to the language model's embedding width:

    forward(feats: (B, T, P, Dv)) -> (B, N, D)        num_output_tokens(T, P) -> N
    temporal_groups(T) -> [range of frames, ...]      the output's temporal groups, in order

The N output tokens are grouped by time, group after group, each group with N / len(groups)
tokens from the frames its range names (one frame each, or ``temporal_stride`` frames merged;
with ``pooled_mlp``'s ``frame_difference`` a group's tokens also read how its neighbours differ).
That is what a time-aware prompt needs: each group's token count, and its frames' times.

Types (one file each, one config dataclass each): ``linear``, ``mlp2x_gelu`` (LLaVA-1.5's two-layer
GELU MLP) and ``pooled_mlp`` (spatial pooling with a stride as LLaVA-NeXT-Video does, or Qwen-VL's
concatenating patch merger; optional temporal merging, frame differences and each token's 3x3
neighbourhood, then the MLP). ``build_projector(config)`` constructs one from its config;
``save_projector`` / ``load_projector`` write and read safetensors weights together with the
config (``projector.safetensors`` + ``projector.json``).
"""

from .registry import (
    PROJECTORS,
    build_projector,
    load_projector,
    projector_config_from_dict,
    projector_config_to_dict,
    save_projector,
)
from .linear import LinearProjector, LinearProjectorConfig
from .mlp import MLPProjector, MLPProjectorConfig
from .pooled_mlp import PooledMLPProjector, PooledMLPProjectorConfig

__all__ = [
    "PROJECTORS",
    "LinearProjector",
    "LinearProjectorConfig",
    "MLPProjector",
    "MLPProjectorConfig",
    "PooledMLPProjector",
    "PooledMLPProjectorConfig",
    "build_projector",
    "load_projector",
    "projector_config_from_dict",
    "projector_config_to_dict",
    "save_projector",
]
