"""The from-scratch backbone against transformers' Qwen3ForCausalLM / Qwen3MoeForCausalLM."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from qwen3_backbone import load_pretrained
from qwen3_backbone.generate import generate

from .conftest import CHECKPOINTS, padded_batch

NAMES = list(CHECKPOINTS)


def hf_logits(hf, ids, mask):
    # transformers' plain forward numbers positions 0..S-1 even under left padding; give it the
    # per-row positions that its own generate() (and our model) use.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits


@pytest.mark.parametrize("name", NAMES)
def test_fp32_logits_match_transformers_on_a_padded_batch(hf_checkpoints, name):
    hf = AutoModelForCausalLM.from_pretrained(hf_checkpoints[name]).eval()
    ours = load_pretrained(hf_checkpoints[name])
    ids, mask = padded_batch(seed=1, lengths=(40, 23, 5))  # yarn: positions past the original 16
    ref = hf_logits(hf, ids, mask)
    with torch.no_grad():
        out = ours(ids, attention_mask=mask)
    real = mask.bool()
    assert out.shape == ref.shape
    assert (out - ref).abs()[real].max().item() <= 1e-4


# bf16: measured bitwise equal to transformers on these checkpoints (CPU); the stated tolerance
# (1% of the logit range, top-1 agreement >= 99%) leaves room for other kernels, e.g. on GPU.
BF16_REL_TOL = 0.01


@pytest.mark.parametrize("name", NAMES)
def test_bf16_logits_within_tolerance(hf_checkpoints, name):
    hf = AutoModelForCausalLM.from_pretrained(hf_checkpoints[name], dtype=torch.bfloat16).eval()
    ours = load_pretrained(hf_checkpoints[name], dtype=torch.bfloat16)
    ids, mask = padded_batch(seed=2, lengths=(24, 16, 9))
    ref = hf_logits(hf, ids, mask).float()
    with torch.no_grad():
        out = ours(ids, attention_mask=mask).float()
    real = mask.bool()
    scale = ref[real].abs().max()
    assert (out - ref).abs()[real].max() <= BF16_REL_TOL * scale
    agree = (out.argmax(-1) == ref.argmax(-1))[real].float().mean()
    assert agree >= 0.99


@pytest.mark.parametrize("name", NAMES)
def test_greedy_generation_matches_transformers_generate(hf_checkpoints, name):
    hf = AutoModelForCausalLM.from_pretrained(hf_checkpoints[name]).eval()
    ours = load_pretrained(hf_checkpoints[name])
    ids, mask = padded_batch(seed=3, lengths=(11, 6, 2))
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=mask, max_new_tokens=32, do_sample=False,
                          pad_token_id=0, eos_token_id=None)[:, ids.shape[1]:]
    out = generate(ours, ids, mask, max_new_tokens=32, stop_token_ids=(), pad_token_id=0)
    assert ref.shape == (3, 32)
    assert len(set(ref.flatten().tolist())) > 3  # the reference output is not degenerate
    assert torch.equal(out, ref)


def test_greedy_generation_stops_per_row_like_transformers(hf_checkpoints):
    """Each row stops at its own stop token and is padded after it, as transformers does."""
    path = hf_checkpoints["dense_tied_gqa"]
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    ours = load_pretrained(path)
    ids, mask = padded_batch(seed=4, lengths=(9, 5, 7))
    with torch.no_grad():
        free = hf.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
                           pad_token_id=0, eos_token_id=None)[:, ids.shape[1]:]
    stop = free[0, 4].item()  # a token the first row emits: row 0 must stop there
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
                          pad_token_id=0, eos_token_id=stop)[:, ids.shape[1]:]
    out = generate(ours, ids, mask, max_new_tokens=24, stop_token_ids=(stop,), pad_token_id=0)
    assert out.shape == ref.shape
    assert torch.equal(out, ref)
    first_stop = (out[0] == stop).nonzero()[0].item()
    assert first_stop <= 4 and (out[0, first_stop + 1 :] == 0).all()


def test_greedy_with_repetition_penalty_matches_transformers(hf_checkpoints):
    path = hf_checkpoints["moe_norm_topk"]
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    ours = load_pretrained(path)
    ids, mask = padded_batch(seed=5, lengths=(8, 8, 4))
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, repetition_penalty=1.5,
                          pad_token_id=0, eos_token_id=None)[:, ids.shape[1]:]
    out = generate(ours, ids, mask, max_new_tokens=20, repetition_penalty=1.5, stop_token_ids=(), pad_token_id=0)
    assert torch.equal(out, ref)


def test_inputs_embeds_give_the_same_logits_as_ids(hf_checkpoints):
    ours = load_pretrained(hf_checkpoints["dense_untied_mqa"])
    ids, mask = padded_batch(seed=6)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask)
        b = ours(inputs_embeds=ours.model.embed_tokens(ids), attention_mask=mask)
    assert torch.equal(a, b)


def test_moe_layers_follow_sparse_step_and_mlp_only_layers(hf_checkpoints):
    from qwen3_backbone.model import Qwen3MLP, Qwen3SparseMoeBlock

    hf = AutoModelForCausalLM.from_pretrained(hf_checkpoints["moe_sparse_step_mlp_only"])
    ours = load_pretrained(hf_checkpoints["moe_sparse_step_mlp_only"])
    hf_is_moe = [type(layer.mlp).__name__.endswith("SparseMoeBlock") for layer in hf.model.layers]
    ours_is_moe = [isinstance(layer.mlp, Qwen3SparseMoeBlock) for layer in ours.model.layers]
    assert ours_is_moe == hf_is_moe == [False, True, False, False, False]
    assert all(isinstance(layer.mlp, Qwen3MLP) for layer, moe in zip(ours.model.layers, ours_is_moe) if not moe)


# -- restricted attention (``visible``): transformers' own custom 4D mask is the reference ----------

def _hidden_keys(B: int, S: int, seed: int) -> torch.Tensor:
    """(B, S, S) bool: a random third of each query's earlier keys hidden (never itself)."""
    g = torch.Generator().manual_seed(seed)
    visible = torch.rand(B, S, S, generator=g) > 0.33
    return visible | torch.eye(S, dtype=torch.bool)


@pytest.mark.parametrize("name", ["dense_tied_gqa", "moe_norm_topk"])
def test_visible_keys_match_transformers_4d_mask(hf_checkpoints, name):
    hf = AutoModelForCausalLM.from_pretrained(hf_checkpoints[name], attn_implementation="sdpa").eval()
    ours = load_pretrained(hf_checkpoints[name])
    ids, mask = padded_batch(seed=7, lengths=(14, 9, 14))
    B, S = ids.shape
    visible = _hidden_keys(B, S, seed=8)
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    # what transformers receives: causal, padding and the hidden keys in one (B, 1, S, S) bool mask
    full = (causal & mask.bool()[:, None, :] & visible) | torch.eye(S, dtype=torch.bool)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=full[:, None], position_ids=positions).logits
        out = ours(ids, attention_mask=mask, visible=visible)
        plain = ours(ids, attention_mask=mask)
    real = mask.bool()
    assert (out - ref).abs()[real].max().item() <= 1e-4
    assert (out - plain).abs()[real].max().item() > 1e-2  # the hidden keys did change the logits


def test_generation_with_visible_keys_matches_transformers(hf_checkpoints):
    """Every generated token hides the same prompt keys (a different set per row): greedy decoding
    with the KV cache equals transformers recomputing the whole sequence under a 4D mask."""
    path = hf_checkpoints["dense_untied_mqa"]
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
    ours = load_pretrained(path)
    ids, mask = padded_batch(seed=9, lengths=(12, 7, 12))
    B, S = ids.shape
    prompt_visible = torch.ones(B, S, dtype=torch.bool)
    prompt_visible[0, 2:7] = False
    prompt_visible[1, 6:9] = False
    prompt_visible[2, 0:4] = False
    n = 12
    out = generate(ours, ids, mask, max_new_tokens=n, stop_token_ids=(), pad_token_id=0,
                   visible=lambda next_ids: prompt_visible)
    seq, valid = ids, mask
    with torch.no_grad():
        for step in range(n):
            K = seq.shape[1]
            causal = torch.ones(K, K, dtype=torch.bool).tril()
            keys = torch.ones(B, K, K, dtype=torch.bool)
            keys[:, S:, :S] = prompt_visible[:, None, :]  # generated queries (not the prompt's) hide them
            full = (causal & valid.bool()[:, None, :] & keys) | torch.eye(K, dtype=torch.bool)
            positions = (valid.cumsum(-1) - 1).clamp(min=0)
            logits = hf(input_ids=seq, attention_mask=full[:, None], position_ids=positions).logits
            next_ids = logits[:, -1].argmax(-1)
            seq = torch.cat([seq, next_ids[:, None]], dim=1)
            valid = torch.cat([valid, torch.ones(B, 1, dtype=valid.dtype)], dim=1)
    ref = seq[:, S:]
    free = generate(ours, ids, mask, max_new_tokens=n, stop_token_ids=(), pad_token_id=0)
    assert torch.equal(out, ref)
    assert not torch.equal(out, free)  # hiding the keys changed what was generated
