"""What each training stage trains, and in which dtype: frozen weights in model.dtype (bfloat16 for
auto), what trains in float32; QLoRA's base streamed in as NF4."""

from __future__ import annotations

import pytest
import torch

from vcap.stages import build_for_training, frozen_dtype

from .trainkit import metrics, run_cfg


def dtypes(module: torch.nn.Module, trainable: bool) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters() if p.requires_grad == trainable}


@pytest.mark.parametrize("stage", ["projector", "lora", "full"])
def test_frozen_weights_are_built_in_the_training_dtype(data, tmp_path, stage):
    cfg = run_cfg(data, tmp_path / "run", stage=stage, lora={"r": 2, "alpha": 4})
    cfg.model.dtype = "auto"
    assert frozen_dtype(cfg) == torch.bfloat16
    captioner = build_for_training(cfg)
    assert dtypes(captioner.vision, trainable=False) == {torch.bfloat16}
    assert dtypes(captioner.projector, trainable=True) == {torch.float32}
    if stage == "full":  # the whole language model trains: float32 master weights
        assert dtypes(captioner.language_model, trainable=True) == {torch.float32}
    else:
        assert dtypes(captioner.language_model, trainable=False) == {torch.bfloat16}
    if stage == "lora":  # the adapters train in float32 over the bfloat16 base
        assert dtypes(captioner.language_model, trainable=True) == {torch.float32}


def test_a_bfloat16_base_trains(data, tmp_path):
    from vcap.train import train

    cfg = run_cfg(data, tmp_path / "run", stage="lora", epochs=3, lr=5e-3, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    cfg.model.dtype = "bfloat16"
    losses = [m["loss"] for m in metrics(train(cfg, progress=False)) if "loss" in m]
    assert losses[-1] < losses[0]


def test_qlora_streams_a_checkpoint_in_as_nf4(data, tmp_path):
    import bitsandbytes as bnb

    from qwen3_backbone import Qwen3Config, Qwen3ForCausalLM, save_pretrained

    torch.manual_seed(0)
    base = tmp_path / "base"
    save_pretrained(Qwen3ForCausalLM(Qwen3Config.from_name("mini")).to(torch.bfloat16), base)
    cfg = run_cfg(data, tmp_path / "run", stage="lora", qlora=True, lora={"r": 2, "alpha": 4})
    cfg.model.language_model, cfg.model.dtype = str(base), "auto"
    captioner = build_for_training(cfg)
    q_proj = captioner.backbone.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(q_proj, bnb.nn.Linear4bit) and q_proj.weight.dtype == torch.uint8
    assert q_proj.compute_dtype == torch.bfloat16
    assert captioner.backbone.model.embed_tokens.weight.dtype == torch.bfloat16  # embeddings and head stay bf16
    assert dtypes(captioner.language_model, trainable=True) == {torch.float32}
