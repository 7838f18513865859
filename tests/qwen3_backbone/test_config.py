"""Qwen3Config: presets against the published sizes, from_hf forms, validation."""

from __future__ import annotations

import json

import pytest
import torch

from qwen3_backbone import PRESETS, Qwen3Config, Qwen3ForCausalLM

# Published parameter counts (Qwen3 model cards / technical report): total, and activated for MoE.
PUBLISHED = {
    "Qwen3-0.6B": (0.6e9, None),
    "Qwen3-1.7B": (1.7e9, None),
    "Qwen3-4B": (4.0e9, None),
    "Qwen3-8B": (8.2e9, None),
    "Qwen3-14B": (14.8e9, None),
    "Qwen3-32B": (32.8e9, None),
    "Qwen3-30B-A3B": (30.5e9, 3.3e9),
    "Qwen3-235B-A22B": (235e9, 22e9),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_preset_parameter_count_matches_published_size_on_meta(name):
    config = Qwen3Config.from_name(name)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    counted = sum(p.numel() for p in model.parameters())  # tied weights counted once
    assert all(p.is_meta for p in model.parameters())
    total, active = PUBLISHED[name]
    assert abs(counted - total) / total < 0.02, f"{name}: {counted / 1e9:.3f}B vs published {total / 1e9}B"
    assert config.num_parameters() == counted
    if active is not None:
        assert abs(config.num_parameters(active=True) - active) / active < 0.03


def test_every_preset_is_valid_and_named():
    assert {"Qwen3-0.6B", "Qwen3-30B-A3B", "tiny", "tiny-moe"} <= set(PRESETS)
    for name in PRESETS:
        config = Qwen3Config.from_name(name)
        assert config.vocab_size == 151936
    assert Qwen3Config.from_name("Qwen/Qwen3-8B").hidden_size == 4096  # hub-style names resolve
    with pytest.raises(KeyError, match="unknown Qwen3 preset"):
        Qwen3Config.from_name("Qwen3-3B")


def test_from_hf_reads_transformers_own_configs():
    from transformers import Qwen3Config as HFQwen3Config, Qwen3MoeConfig

    hf = HFQwen3Config(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True,
                       rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
                       max_position_embeddings=131072)
    ours = Qwen3Config.from_hf(hf.to_dict())  # transformers-5 writes rope_parameters
    assert (ours.hidden_size, ours.head_dim, ours.num_key_value_heads, ours.tie_word_embeddings) == (64, 32, 2, True)
    assert ours.rope_scaling == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert ours.rope_theta == hf.to_dict()["rope_parameters"]["rope_theta"]

    moe = Qwen3MoeConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, moe_intermediate_size=16,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1, num_experts=8,
                         num_experts_per_tok=2, decoder_sparse_step=2, mlp_only_layers=[1], norm_topk_prob=True)
    ours = Qwen3Config.from_hf(moe.to_dict())  # writes num_local_experts
    assert (ours.num_experts, ours.num_experts_per_tok, ours.moe_intermediate_size) == (8, 2, 16)
    assert [ours.is_moe_layer(i) for i in range(4)] == [False, False, False, True]


def test_from_hf_reads_the_official_legacy_form(tmp_path):
    """The form of the published Qwen3 config.json (rope_theta + rope_scaling at top level)."""
    official = {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_act": "silu",
        "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
        "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960,
        "rope_theta": 1000000, "rope_scaling": None, "rms_norm_eps": 1e-06, "tie_word_embeddings": True,
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
        "max_window_layers": 28, "sliding_window": None, "use_sliding_window": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0", "use_cache": True, "initializer_range": 0.02,
    }
    (tmp_path / "config.json").write_text(json.dumps(official))
    assert Qwen3Config.from_hf(tmp_path) == Qwen3Config.from_name("Qwen3-0.6B")
    yarn = dict(official, rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})
    assert Qwen3Config.from_hf(yarn).rope_scaling["rope_type"] == "yarn"
    assert Qwen3Config.from_hf(Qwen3Config.from_name("Qwen3-30B-A3B").to_hf()) == Qwen3Config.from_name("Qwen3-30B-A3B")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(num_key_value_heads=3), "multiple of num_key_value_heads"),
        (dict(hidden_size=0), "hidden_size must be a positive integer"),
        (dict(head_dim=7), "head_dim must be even"),
        (dict(num_experts=4, num_experts_per_tok=5, moe_intermediate_size=8), "num_experts_per_tok"),
        (dict(mlp_only_layers=[9]), "mlp_only_layers"),
        (dict(rope_scaling={"rope_type": "longrope", "factor": 2.0}), "not supported"),
    ],
)
def test_validation_names_the_field(change, message):
    base = dict(PRESETS["tiny"])
    with pytest.raises(ValueError, match=message):
        Qwen3Config(**{**base, **change})


def test_from_hf_rejects_other_models_and_activations():
    with pytest.raises(ValueError, match="not a Qwen3 model"):
        Qwen3Config.from_hf({"model_type": "llama", "hidden_size": 8})
    with pytest.raises(ValueError, match="hidden_act"):
        Qwen3Config.from_hf(dict(Qwen3Config.from_name("tiny").to_hf(), hidden_act="gelu"))
