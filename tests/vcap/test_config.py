"""Config schemas and config I/O: every shipped config loads, errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from vcap.config import ConfigError
from vcap.config_io import load_config

from .trainkit import tiny_run, write_yaml

ROOT = Path(__file__).resolve().parents[2]


def test_every_shipped_config_loads():
    files = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "vcap" / "recipes" / "configs").glob("*.yaml"))
    assert len(files) >= 13
    from projector import projector_config_from_dict

    for path in files:
        cfg = load_config(path)
        assert cfg.model.language_model and cfg.data.train, path
        options = {"vision_hidden_size": 768, "text_hidden_size": 1024, **cfg.model.projector}
        projector_config_from_dict(options, f"{path.name}: projector")  # raises on an unknown option
        assert cfg.model.frames.timestamps == "text", path  # new configs put each frame's time in the prompt


def test_frames_timestamps_default_to_none_and_are_checked():
    from vcap.config import CaptionerConfig, ConfigError, FramesConfig
    from vcap.config_io import config_from_dict

    frames = config_from_dict(CaptionerConfig, {"language_model": "preset:mini"}).frames  # older folders
    assert frames.timestamps == "none" and frames.end_label is False
    with pytest.raises(ConfigError, match="frames.timestamps must be 'text' or 'none'"):
        FramesConfig(timestamps="seconds")
    with pytest.raises(ConfigError, match="frames.end_label needs frames.timestamps: text"):
        FramesConfig(end_label=True)
    assert FramesConfig(timestamps="text", end_label=True).end_label


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_real_configs_checkpoint_and_state_their_weights(path):
    """Every real-model config trains with gradient checkpointing, and its memory comment (written by
    bench/config_memory.py) states the language model's weights as the parameter counts give them:
    2 bytes a parameter in bf16, 4 in the full stage's fp32, and in 4-bit NF4 with double
    quantization, per quantized weight of n parameters: n/2 bytes, an 8-bit scale per block of 64,
    an fp32 scale per 256 of those, and the two code books (16 and 256 fp32); 2 bytes for the rest."""
    import re

    import torch

    from qwen3_backbone import Qwen3Config, Qwen3ForCausalLM
    from qwen3_backbone.quantize import quantized_layer_names

    cfg = load_config(path)
    assert cfg.train.gradient_checkpointing
    text = path.read_text()
    assert "# Memory per GPU, computed by bench/config_memory.py" in text
    stated = float(re.search(r"language model ([0-9.]+) GB \((bf16|4-bit|fp32)\)", text).group(1))
    with torch.device("meta"):
        model = Qwen3ForCausalLM(Qwen3Config.from_name(cfg.model.language_model))
    total = sum(p.numel() for p in model.parameters())
    sizes = [model.get_submodule(n).weight.numel() for n in quantized_layer_names(model)]
    packed = sum(sizes)

    def nf4_bytes(n: int) -> int:
        blocks = -(-n // 64)
        return n // 2 + blocks + 4 * -(-blocks // 256) + 4 * (16 + 256)

    if cfg.train.stage == "full":
        expected = 4 * total
    elif cfg.train.qlora:
        expected = sum(map(nf4_bytes, sizes)) + 2 * (total - packed)
    else:
        expected = 2 * total
    assert stated == pytest.approx(expected / 1024**3, abs=0.051), path.name


def test_config_errors_name_the_key(tmp_path, data):
    path = write_yaml(tmp_path / "run.yaml", tiny_run(data, tmp_path / "run"))
    assert load_config(path, ["train.lr=2e-4", "train.lora.r=4"]).train.lr == 2e-4
    cases = {
        "train.lrr=1": "train.lrr",
        "train.batch_size=two": "train.batch_size",
        "train.stage=everything": "train.stage",
        "model.frames.num_frames=0": "frames",
        "data.text_only=true": "text_only",
        "nonsense": "key=value",
    }
    for override, expected in cases.items():
        with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
            load_config(path, [override])
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(broken)
