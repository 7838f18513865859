"""Tiny captioners for tests: a 2-block ViT, the tiny Qwen3 preset, real tokenizer, random weights."""

from __future__ import annotations

import torch

from vcap.config import CaptionerConfig, FramesConfig
from vcap.vision import VisionConfig

TINY_VISION = dict(
    model_name="ViT-B-32",
    pretrained=None,
    feature_layer=-1,
    model_overrides={
        "vision_cfg": {"width": 64, "layers": 2, "head_width": 32, "patch_size": 16, "image_size": 64},
        "text_cfg": {"width": 64, "heads": 2, "layers": 1},
        "embed_dim": 32,
    },
)

TINY_RESNET = dict(  # open_clip's ModifiedResNet, as small as it goes: 64 px in, a 2x2 grid out
    model_name="RN50",
    pretrained=None,
    feature_layer=-1,
    model_overrides={
        "vision_cfg": {"layers": [1, 1, 1, 1], "width": 16, "image_size": 64},
        "text_cfg": {"width": 64, "heads": 2, "layers": 1},
        "embed_dim": 32,
    },
)


def tiny_config(**overrides) -> CaptionerConfig:
    fields = dict(
        language_model="preset:tiny",
        vision=VisionConfig(**TINY_VISION),
        projector={"type": "mlp2x_gelu"},
        frames=FramesConfig(num_frames=4, size=64),
        max_new_tokens=8,
        dtype="float32",  # exact comparisons with the references; "auto" is tested on its own
    )
    fields.update(overrides)
    return CaptionerConfig(**fields)


def tiny_captioner(seed: int = 0, std: float = 0.15, **overrides):
    """Random weights with a large std, so greedy outputs are peaked (no near-ties) and varied."""
    from vcap.builder import build_captioner

    torch.manual_seed(seed)
    captioner = build_captioner(tiny_config(**overrides))
    with torch.no_grad():
        for p in list(captioner.language_model.parameters()) + list(captioner.projector.parameters()):
            if p.dim() > 1:
                p.normal_(0.0, std)
    return captioner
