"""The training loss: cross-entropy of the language model's head over the target tokens, computed a
chunk of tokens at a time so that no vocabulary-sized tensor outlives its chunk.

The head's logits over Qwen3's 151,936-token vocabulary are the largest tensors of a training
step: autograd would keep (targets x vocabulary) float32 logits, their log-softmax and, in the
backward pass, a gradient of the same size (4 samples x 300 targets: 0.7 GB, three times over).
Here the forward pass scores one chunk of target tokens at a time and, when gradients are wanted,
also computes that chunk's gradient with respect to the hidden states (and the head's weight, when
it trains: the full stage, where it is tied to the embeddings), since d loss / d logits is just
softmax - one-hot. Backward then only scales what forward stored. This is Liger-Kernel's "fused
linear cross-entropy" written in plain torch; under autocast the chunk's matmuls run in bfloat16
while the softmax stays float32.

The loss and gradients equal ``F.cross_entropy(hidden @ weight.T, targets)`` (tests/vcap/test_loss.py);
with per-target ``weights``, its weighted mean (sum of w_i x loss_i over the sum of w_i).
"""

from __future__ import annotations

import torch

CHUNK_TOKENS = 128  # target tokens scored at once: 128 x 151,936 float32 logits = 78 MB


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int = CHUNK_TOKENS, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets``.

    hidden (M, H): the hidden states at the target positions; weight (V, H): the head's weight;
    targets (M,): the token ids to predict; weights (M,): optionally, each target's weight in the
    mean (a weighted mean)."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        total = _LinearCrossEntropy.apply(hidden, weight, targets, chunk, weights)
    else:
        total = _score(hidden, weight, targets, chunk, weights, want_hidden=False, want_weight=False)[0]
    if weights is None:
        return total / max(len(targets), 1)
    return total / weights.sum().clamp(min=1e-12)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, weights):  # grad mode is off in here
        total, grad_hidden, grad_weight = _score(hidden, weight, targets, chunk, weights,
                                                 want_hidden=ctx.needs_input_grad[0], want_weight=ctx.needs_input_grad[1])
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (None if grad_hidden is None else grad_hidden * grad_total.to(grad_hidden.dtype),
                None if grad_weight is None else grad_weight * grad_total.to(grad_weight.dtype), None, None, None)


def _score(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
           weights: torch.Tensor | None, *, want_hidden: bool,
           want_weight: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(sum of -log p(target), each weighted by ``weights`` if given; d sum / d hidden or None;
    d sum / d weight or None), chunk by chunk.

    Every chunk's logits are written into one buffer and turned into the softmax in place: on CPU,
    a fresh (chunk x vocabulary) tensor per chunk costs more in first-touched pages than the
    matmul that fills it (docs/benchmarks.md, "The loss on CPU")."""
    exact = torch.promote_types(hidden.dtype, torch.float32)  # the softmax's dtype: float32 (float64 stays)
    total = torch.zeros((), dtype=exact, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if want_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=exact, device=weight.device) if want_weight else None
    device = hidden.device.type
    matmul_dtype = (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
                    else torch.promote_types(hidden.dtype, weight.dtype))
    w = weight.to(matmul_dtype)  # cast once, not per chunk
    buffer = torch.empty(min(chunk, len(targets)), len(weight), dtype=exact, device=hidden.device)  # (c, V)
    for start in range(0, len(targets), chunk):
        h, y = hidden[start:start + chunk].to(matmul_dtype), targets[start:start + chunk]
        probs = buffer[:len(y)]
        if matmul_dtype == exact:
            torch.matmul(h, w.T, out=probs)  # (c, V) logits
        else:
            probs.copy_(h @ w.T)  # a bfloat16 matmul under autocast, its logits in float32
        probs -= probs.amax(dim=1, keepdim=True)  # each row's largest logit at 0: exp cannot overflow
        picked = probs.gather(1, y[:, None])[:, 0]  # (c,) the targets' logits, shifted
        probs.exp_()
        sums = probs.sum(dim=1)  # (c,)
        log_p = picked - sums.log()  # (c,) log softmax at the targets
        row_weight = None if weights is None else weights[start:start + chunk].to(exact)  # (c,)
        total -= log_p.sum() if row_weight is None else (log_p * row_weight).sum()
        if not (want_hidden or want_weight):
            continue
        probs /= sums[:, None]  # the softmax
        probs[torch.arange(len(y), device=y.device), y] -= 1.0  # d loss / d logits = softmax - one-hot
        if row_weight is not None:
            probs *= row_weight[:, None]
        grad_logits = probs.to(matmul_dtype)
        if grad_hidden is not None:
            grad_hidden[start:start + chunk] = grad_logits @ w  # (c, H)
        if grad_weight is not None:
            grad_weight += grad_logits.T @ h  # (V, H)
    if grad_weight is not None:
        grad_weight = grad_weight.to(weight.dtype)
    return total, grad_hidden, grad_weight
