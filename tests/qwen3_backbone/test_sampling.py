"""Sampling: the filters against transformers' logits warpers, seeds, penalties, presets."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from qwen3_backbone import load_pretrained
from qwen3_backbone.generate import SAMPLING_PRESETS, SamplingConfig, _Penalties, generate, warp_scores

from .conftest import padded_batch


@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=0.7, top_k=20, top_p=0.8),  # Qwen3 non-thinking
        dict(temperature=0.6, top_k=20, top_p=0.95),  # Qwen3 thinking
        dict(temperature=1.3, top_k=0, top_p=0.5, min_p=0.05),
        dict(temperature=1.0, top_k=3),
        dict(temperature=0.9, min_p=0.2),
    ],
)
def test_filters_keep_the_same_tokens_as_transformers_warpers(settings):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 500, generator=g) * 3
    config = SamplingConfig(do_sample=True, **settings)
    ours = warp_scores(scores, config)
    ref = TemperatureLogitsWarper(config.temperature)(None, scores.clone())
    if config.top_k:
        ref = TopKLogitsWarper(config.top_k)(None, ref)
    if config.top_p < 1:
        ref = TopPLogitsWarper(config.top_p)(None, ref)
    if config.min_p:
        ref = MinPLogitsWarper(config.min_p)(None, ref)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    kept = ~torch.isinf(ref)
    assert torch.allclose(ours[kept], ref[kept])


@pytest.fixture(scope="module")
def model(hf_checkpoints):
    return load_pretrained(hf_checkpoints["dense_tied_gqa"])


def test_same_seed_same_sample_other_seed_differs(model):
    ids, mask = padded_batch(seed=30)
    kwargs = dict(max_new_tokens=24, stop_token_ids=(), pad_token_id=0, do_sample=True, temperature=1.5)
    a = generate(model, ids, mask, seed=1, **kwargs)
    b = generate(model, ids, mask, seed=1, **kwargs)
    c = generate(model, ids, mask, seed=2, **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_top_k_one_is_greedy(model):
    ids, mask = padded_batch(seed=31)
    greedy = generate(model, ids, mask, max_new_tokens=16, stop_token_ids=(), pad_token_id=0)
    sampled = generate(model, ids, mask, max_new_tokens=16, stop_token_ids=(), pad_token_id=0,
                       do_sample=True, top_k=1, temperature=2.0, seed=5)
    assert torch.equal(greedy, sampled)


def test_presence_penalty_lowers_generated_tokens_only():
    config = SamplingConfig(presence_penalty=1.5)
    prompt = torch.tensor([[3, 4]])
    penalties = _Penalties(config, prompt, torch.ones_like(prompt), V=10, B=1, device=torch.device("cpu"))
    scores = torch.zeros(1, 10)
    assert torch.equal(penalties.apply(scores), scores)  # the prompt is not penalised (vLLM semantics)
    penalties.observe(torch.tensor([7]), finished=torch.tensor([False]))
    penalties.observe(torch.tensor([7]), finished=torch.tensor([False]))
    out = penalties.apply(scores)
    assert out[0, 7] == -1.5 and (out[0, torch.arange(10) != 7] == 0).all()  # once, not per occurrence


def test_qwen_presets_are_the_recommended_values():
    assert SAMPLING_PRESETS["thinking"] == SamplingConfig(do_sample=True, temperature=0.6, top_p=0.95, top_k=20)
    assert SAMPLING_PRESETS["non-thinking"] == SamplingConfig(do_sample=True, temperature=0.7, top_p=0.8, top_k=20)
    assert SamplingConfig.preset("thinking", top_k=5).top_k == 5


@pytest.mark.parametrize("bad", [dict(temperature=0), dict(top_p=0), dict(top_k=-1), dict(min_p=1.0)])
def test_invalid_sampling_settings_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingConfig(**bad)
