"""Shared pieces for the training tests: a tiny synthetic dataset and run configs for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from vcap.config import RunConfig
from vcap.config_io import config_from_dict

from ..tiny import TINY_VISION


def tiny_run(data: dict[str, Path], out_dir: Path, cache: Path | None = None, **train: Any) -> dict[str, Any]:
    """A run config (as a dict) that trains the tiny captioner on a synthetic dataset."""
    return {
        "model": {
            "language_model": "preset:tiny",
            "vision": dict(TINY_VISION),
            "projector": {"type": "mlp2x_gelu"},
            "frames": {"num_frames": 4, "size": 64},
            "max_new_tokens": 8,
            "dtype": "float32",
        },
        "data": {"train": str(data["train"]), "val": str(data["val"]),
                 "feature_cache": str(cache) if cache else None},
        "train": {"out_dir": str(out_dir), "batch_size": 4, "save_every": 2, "keep_last": 10, "log_every": 1,
                  **train},
    }


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def run_cfg(data: dict[str, Path], out_dir: Path, **train: Any) -> RunConfig:
    return config_from_dict(RunConfig, tiny_run(data, out_dir, **train))


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
