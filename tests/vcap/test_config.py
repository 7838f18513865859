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
