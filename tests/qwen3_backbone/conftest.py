"""Tiny random checkpoints made by transformers itself (the reference we did not write)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

VOCAB = 256

# name -> (transformers class name, config kwargs). Together they cover: dense tied and untied,
# GQA and MQA, head_dim != hidden/heads, MoE with norm_topk_prob true and false,
# decoder_sparse_step 2, non-empty mlp_only_layers, and YaRN.
CHECKPOINTS: dict[str, tuple[str, dict]] = {
    "dense_tied_gqa": ("Qwen3", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                     tie_word_embeddings=True)),
    "dense_untied_mqa": ("Qwen3", dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                                       num_attention_heads=6, num_key_value_heads=1, head_dim=8,
                                       tie_word_embeddings=False)),
    "moe_norm_topk": ("Qwen3Moe", dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       head_dim=16, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True)),
    "moe_sparse_step_mlp_only": ("Qwen3Moe", dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=24,
                                                  num_hidden_layers=5, num_attention_heads=4, num_key_value_heads=1,
                                                  head_dim=16, num_experts=6, num_experts_per_tok=3,
                                                  norm_topk_prob=False, decoder_sparse_step=2,
                                                  mlp_only_layers=[3])),
    "yarn": ("Qwen3", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                           rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16})),
}


def make_hf_model(kind: str, seed: int = 0, **kwargs):
    """A random transformers Qwen3/Qwen3Moe model; a larger init std keeps greedy outputs varied."""
    import transformers

    torch.manual_seed(seed)
    config = getattr(transformers, f"{kind}Config")(vocab_size=VOCAB, rms_norm_eps=1e-6, rope_theta=10000.0,
                                                    initializer_range=0.15, **kwargs)
    return getattr(transformers, f"{kind}ForCausalLM")(config).eval()


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_checkpoints")
    paths = {}
    for i, (name, (kind, kwargs)) in enumerate(CHECKPOINTS.items()):
        paths[name] = root / name
        make_hf_model(kind, seed=i, **kwargs).save_pretrained(paths[name])
    return paths


def padded_batch(seed: int = 0, lengths=(12, 7, 3), vocab: int = VOCAB) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded random prompts (B, S) with their attention mask; pad id 0."""
    g = torch.Generator().manual_seed(seed)
    S = max(lengths)
    ids = torch.zeros(len(lengths), S, dtype=torch.long)
    mask = torch.zeros(len(lengths), S, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, S - n :] = torch.randint(1, vocab, (n,), generator=g)
        mask[row, S - n :] = 1
    return ids, mask
