"""The chunked head + cross-entropy against torch's own F.cross_entropy over full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vcap.loss import linear_cross_entropy


def reference(hidden, weight, targets):
    return F.cross_entropy(hidden @ weight.T, targets)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
@pytest.mark.parametrize("train_weight", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_and_gradients_match_cross_entropy(chunk, train_weight, weighted):
    """Against F.cross_entropy; with per-target weights, against its weighted mean."""
    torch.manual_seed(0)
    hidden = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(300, 16, dtype=torch.float64, requires_grad=train_weight)
    targets = torch.randint(0, 300, (50,))
    weights = torch.where(torch.rand(50) < 0.3, 3.0, 1.0).double() if weighted else None
    ours = linear_cross_entropy(hidden, weight, targets, chunk=chunk, weights=weights)
    (ours * 3).backward()  # an upstream gradient other than 1 reaches both inputs
    grads = hidden.grad.clone(), weight.grad.clone() if train_weight else None
    hidden.grad = None
    weight.grad = None
    if weighted:
        theirs = (F.cross_entropy(hidden @ weight.T, targets, reduction="none") * weights).sum() / weights.sum()
        assert not torch.allclose(theirs, reference(hidden, weight, targets))  # the weights count
    else:
        theirs = reference(hidden, weight, targets)
    (theirs * 3).backward()
    assert torch.allclose(ours, theirs, rtol=1e-10)
    assert torch.allclose(grads[0], hidden.grad, rtol=1e-8, atol=1e-12)
    if train_weight:
        assert torch.allclose(grads[1], weight.grad, rtol=1e-8, atol=1e-12)


def test_without_gradients_it_only_scores():
    torch.manual_seed(1)
    hidden, weight, targets = torch.randn(9, 8), torch.randn(40, 8), torch.randint(0, 40, (9,))
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets, chunk=4)
    assert loss.grad_fn is None and torch.allclose(loss, reference(hidden, weight, targets), rtol=1e-5)


def test_tied_weights_and_autocast_gradients_reach_the_shared_parameter():
    """The full stage trains the tied embeddings: the head's gradient adds to the embedding's, and
    under bfloat16 autocast the result stays close to float32's."""
    torch.manual_seed(2)
    embed = torch.nn.Embedding(64, 8)
    ids, targets = torch.randint(0, 64, (20,)), torch.randint(0, 64, (20,))
    losses, grads = [], []
    for bf16 in (False, True):
        embed.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = linear_cross_entropy(torch.tanh(embed(ids)), embed.weight, targets, chunk=6)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append(embed.weight.grad.clone())
    embed.zero_grad()
    reference(torch.tanh(embed(ids)), embed.weight, targets).backward()
    assert torch.allclose(grads[0], embed.weight.grad, atol=1e-6)
    assert grads[1].dtype == torch.float32 and torch.allclose(grads[1], grads[0], atol=2e-2)
    assert abs(losses[1] - losses[0]) < 2e-2
