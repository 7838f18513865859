"""KV cache, padding and streaming: each path must equal the plain full forward."""

from __future__ import annotations

import pytest
import torch

from qwen3_backbone import load_pretrained
from qwen3_backbone.generate import generate

from .conftest import padded_batch


@pytest.fixture(scope="module", params=["dense_tied_gqa", "moe_sparse_step_mlp_only"])
def model(request, hf_checkpoints):
    return load_pretrained(hf_checkpoints[request.param])


@pytest.mark.parametrize("static", [False, True])
def test_step_by_step_decoding_equals_full_forward(model, static):
    ids, _ = padded_batch(seed=7, lengths=(14, 14))
    with torch.no_grad():
        full = model(ids)  # (B, S, V)
        cache = model.new_cache(batch_size=2, max_length=20, static=static)
        prefix = model(ids[:, :5], cache=cache)
        steps = [model(ids[:, t : t + 1], cache=cache) for t in range(5, 14)]
    stepped = torch.cat([prefix, *steps], dim=1)
    assert cache.length == 14
    assert (stepped - full).abs().max() <= 1e-5


def test_chunked_prefill_with_left_padding_equals_full_forward(model):
    ids, mask = padded_batch(seed=8, lengths=(12, 4))
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        cache = model.new_cache(batch_size=2, max_length=12)
        a = model(ids[:, :8], attention_mask=mask[:, :8], cache=cache)
        b = model(ids[:, 8:], attention_mask=mask[:, 8:], cache=cache)
    out = torch.cat([a, b], dim=1)
    real = mask.bool()
    assert (out - full).abs()[real].max() <= 1e-5


def test_left_padded_batch_gives_each_row_its_solo_result(model):
    ids, mask = padded_batch(seed=9, lengths=(10, 6, 1))
    batched = generate(model, ids, mask, max_new_tokens=12, stop_token_ids=(), pad_token_id=0)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask)
    for row in range(3):
        alone = ids[row : row + 1, mask[row].bool()]
        solo = generate(model, alone, max_new_tokens=12, stop_token_ids=(), pad_token_id=0)
        assert torch.equal(batched[row], solo[0])
        with torch.no_grad():
            solo_logits = model(alone)
        assert (logits[row, mask[row].bool()] - solo_logits[0]).abs().max() <= 1e-5


def test_right_padding_gives_the_same_logits_as_left_padding(model):
    ids, mask = padded_batch(seed=10, lengths=(9, 4))
    right_ids, right_mask = torch.zeros_like(ids), torch.zeros_like(mask)
    for row in range(2):
        n = int(mask[row].sum())
        right_ids[row, :n], right_mask[row, :n] = ids[row, -n:], 1
    with torch.no_grad():
        left = model(ids, attention_mask=mask)[mask.bool()]
        right = model(right_ids, attention_mask=right_mask)[right_mask.bool()]
    assert (left - right).abs().max() <= 1e-5


@pytest.mark.parametrize("sampling", [dict(), dict(do_sample=True, temperature=0.8, top_k=20, top_p=0.9, seed=3)])
def test_streaming_yields_exactly_the_non_streaming_ids(model, sampling):
    ids, mask = padded_batch(seed=11, lengths=(7, 3))
    stop = (5,)
    full = generate(model, ids, mask, max_new_tokens=16, stop_token_ids=stop, pad_token_id=0, **sampling)
    pieces = list(generate(model, ids, mask, max_new_tokens=16, stop_token_ids=stop, pad_token_id=0,
                           stream=True, **sampling))
    assert all(p.shape == (2,) for p in pieces)
    assert torch.equal(torch.stack(pieces, dim=1), full)


def test_static_cache_generation_equals_dynamic(model):
    """The static (compile-ready) cache layout gives the same greedy tokens."""
    ids, mask = padded_batch(seed=12, lengths=(8, 5))
    dynamic = generate(model, ids, mask, max_new_tokens=10, stop_token_ids=(), pad_token_id=0)
    cache = model.new_cache(2, 18, static=True)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, cache=cache)[:, -1:]
        tokens = []
        for _ in range(10):
            nxt = logits[:, -1].argmax(-1)
            tokens.append(nxt)
            logits = model(nxt[:, None], cache=cache)
    assert torch.equal(torch.stack(tokens, 1), dynamic)
    assert cache.length == 18


@pytest.mark.slow
def test_compiled_decode_step_gives_the_same_tokens(hf_checkpoints):
    model = load_pretrained(hf_checkpoints["dense_tied_gqa"])
    ids, mask = padded_batch(seed=13, lengths=(6, 4))
    eager = generate(model, ids, mask, max_new_tokens=8, stop_token_ids=(), pad_token_id=0)
    compiled = generate(model, ids, mask, max_new_tokens=8, stop_token_ids=(), pad_token_id=0, compile=True)
    assert torch.equal(eager, compiled)


def test_cache_overflow_is_a_clear_error(model):
    cache = model.new_cache(batch_size=1, max_length=4)
    with torch.no_grad(), pytest.raises(ValueError, match="KV cache is full"):
        model(torch.ones(1, 5, dtype=torch.long), cache=cache)
