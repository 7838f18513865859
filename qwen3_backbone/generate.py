"""Batched autoregressive generation with a preallocated KV cache.

A batch of prompts of different lengths is left padded, prefilled once, then decoded one token
per row per step; each row stops on its own stop token and is padded afterwards. ``stream=True``
returns an iterator of per-step tokens instead of the finished tensor. Sampling follows
transformers' order (repetition penalty, then temperature, top-k, top-p, min-p) plus vLLM's
presence penalty; Qwen3's recommended settings are named presets.

Notation as in model.py (B batch, S prompt length, V vocabulary).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .model import Qwen3ForCausalLM
from .special_tokens import SPECIAL_TOKENS

IM_END_ID = SPECIAL_TOKENS["<|im_end|>"][0]
ENDOFTEXT_ID = SPECIAL_TOKENS["<|endoftext|>"][0]
THINK_START_ID = SPECIAL_TOKENS["<think>"][0]
THINK_END_ID = SPECIAL_TOKENS["</think>"][0]
DEFAULT_STOP_IDS = (IM_END_ID, ENDOFTEXT_ID)


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen. ``do_sample=False`` is greedy (argmax)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    min_p: float = 0.0  # 0.0: off
    presence_penalty: float = 0.0  # subtracted once from every token already generated (vLLM)
    repetition_penalty: float = 1.0  # transformers' multiplicative penalty over prompt + output

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature} (use do_sample=False for greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SamplingConfig:
        if name not in SAMPLING_PRESETS:
            raise KeyError(f"unknown sampling preset {name!r}; known: {', '.join(SAMPLING_PRESETS)}")
        return cls(**{**asdict(SAMPLING_PRESETS[name]), **overrides})


# Qwen3's recommended settings (model card, "Best Practices").
SAMPLING_PRESETS: dict[str, SamplingConfig] = {
    "greedy": SamplingConfig(),
    "thinking": SamplingConfig(do_sample=True, temperature=0.6, top_p=0.95, top_k=20, min_p=0.0),
    "non-thinking": SamplingConfig(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, min_p=0.0),
}


@dataclass(frozen=True)
class ThinkingBudget:
    """Cap on thinking tokens: after ``max_tokens`` inside <think> without </think>, the row is
    fed ``stop_ids`` (Qwen's early-stop text, ending in </think>) and then answers.
    Build it with ``qwen3_backbone.chat.thinking_budget(tokenizer, n)``."""

    max_tokens: int
    stop_ids: tuple[int, ...]
    think_start_id: int = THINK_START_ID
    think_end_id: int = THINK_END_ID


def generate(
    model: Qwen3ForCausalLM,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    inputs_embeds: torch.Tensor | None = None,
    max_new_tokens: int = 256,
    sampling: SamplingConfig | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    presence_penalty: float | None = None,
    repetition_penalty: float | None = None,
    stop_token_ids: Sequence[int] = DEFAULT_STOP_IDS,
    pad_token_id: int = ENDOFTEXT_ID,
    seed: int | None = None,
    thinking_budget: ThinkingBudget | None = None,
    compile: bool = False,
    stream: bool = False,
    visible: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
) -> torch.Tensor | Iterator[torch.Tensor]:
    """Generate up to ``max_new_tokens`` per row.

    input_ids (B, S) and attention_mask (B, S): left-padded prompts (1 = token, 0 = padding).
    inputs_embeds (B, S, D): optional prompt embeddings to prefill instead of embedding
        ``input_ids`` (the captioner's video splice); ``input_ids`` then only feed the
        repetition penalty and thinking-budget bookkeeping and may be omitted.
    Sampling: a ``SamplingConfig`` (or preset) and/or the individual keyword overrides.
    Returns the new tokens (B, n), each row ending with its stop token and padded with
    ``pad_token_id`` after it; with ``stream=True``, an iterator of (B,) tensors, one per step.
    visible: optionally called with each step's chosen ids (B,) before they are fed back; returns
        which prompt positions (B, S) bool each of them may attend to (None: all), for example
        only the frames of the event being captioned (see ``Qwen3ForCausalLM.forward``).
    """
    overrides = {
        k: v for k, v in dict(
            do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
            presence_penalty=presence_penalty, repetition_penalty=repetition_penalty,
        ).items() if v is not None
    }
    base = asdict(sampling) if sampling is not None else {}
    config = SamplingConfig(**{**base, **overrides})
    steps = _decode_steps(
        model, input_ids, attention_mask, inputs_embeds, max_new_tokens, config,
        tuple(stop_token_ids), pad_token_id, seed, thinking_budget, compile, visible,
    )
    if stream:
        return steps
    tokens = list(steps)
    if not tokens:
        B = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        return torch.empty(B, 0, dtype=torch.long, device=model.device)
    return torch.stack(tokens, dim=1)


@torch.inference_mode()
def _decode_steps(
    model: Qwen3ForCausalLM,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    max_new_tokens: int,
    config: SamplingConfig,
    stop_ids: tuple[int, ...],
    pad_id: int,
    seed: int | None,
    budget: ThinkingBudget | None,
    compile: bool,
    visible: Callable[[torch.Tensor], torch.Tensor | None] | None,
) -> Iterator[torch.Tensor]:
    if input_ids is None and inputs_embeds is None:
        raise ValueError("generate needs input_ids or inputs_embeds")
    prompt = input_ids if inputs_embeds is None else inputs_embeds
    B, S = prompt.shape[:2]
    device = model.device
    if attention_mask is None:
        attention_mask = torch.ones(B, S, dtype=torch.long, device=device)
    attention_mask = attention_mask.to(device)
    if max_new_tokens <= 0:
        return

    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    penalties = _Penalties(config, input_ids, attention_mask, model.config.vocab_size, B, device)
    thinking = _ThinkingState(budget, input_ids, attention_mask) if budget is not None else None
    stop = torch.tensor(stop_ids, dtype=torch.long, device=device)

    cache = model.new_cache(B, S + max_new_tokens, static=compile)
    if inputs_embeds is not None:
        logits = model(inputs_embeds=inputs_embeds.to(device), attention_mask=attention_mask, cache=cache, logits_to_keep=1)
    else:
        logits = model(input_ids.to(device), attention_mask=attention_mask, cache=cache, logits_to_keep=1)
    decode = _compiled_decode_step() if compile else _decode_step
    finished = torch.zeros(B, dtype=torch.bool, device=device)

    for step in range(max_new_tokens):
        scores = penalties.apply(logits[:, -1].float())  # (B, V)
        next_ids = _choose(scores, config, generator)  # (B,)
        if thinking is not None:
            next_ids = thinking.step(next_ids)
        next_ids = torch.where(finished, torch.full_like(next_ids, pad_id), next_ids)
        yield next_ids
        finished |= torch.isin(next_ids, stop)
        if step == max_new_tokens - 1 or bool(finished.all()):
            return
        penalties.observe(next_ids, finished)
        keys = visible(next_ids) if visible is not None else None  # (B, S) or None
        if keys is None:
            logits = decode(model, next_ids[:, None], cache)
        else:  # a restricted step is not compiled: its mask changes from step to step
            logits = _decode_step(model, next_ids[:, None], cache, keys.to(device)[:, None, :])


def _decode_step(model: Qwen3ForCausalLM, ids: torch.Tensor, cache: Any, visible: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row (B, 1) -> logits (B, 1, V); ``visible`` (B, 1, K0): see model.forward."""
    if visible is None:
        return model(ids, cache=cache)
    return model(ids, cache=cache, visible=visible)


_COMPILED: list[Any] = []


def _compiled_decode_step() -> Any:
    """The decode step compiled once per process (static cache shapes, so no recompiles)."""
    if not _COMPILED:
        _COMPILED.append(torch.compile(_decode_step, dynamic=False))
    return _COMPILED[0]


def _choose(scores: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """scores (B, V) fp32 -> chosen token ids (B,): argmax, or a draw from the warped distribution."""
    if not config.do_sample:
        return scores.argmax(dim=-1)
    probs = warp_scores(scores, config).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def warp_scores(scores: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p filtering (removed tokens get -inf): (B, V) -> (B, V)."""
    scores = scores / config.temperature
    if config.top_k and config.top_k < scores.shape[-1]:
        kth = torch.topk(scores, config.top_k, dim=-1).values[:, -1:]  # (B, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        sorted_probs = sorted_scores.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # (B, V) mass of strictly better tokens
        drop_sorted = mass_before >= config.top_p  # the smallest set reaching top_p is kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    if config.min_p > 0.0:
        probs = scores.softmax(dim=-1)
        threshold = config.min_p * probs.max(dim=-1, keepdim=True).values
        scores = scores.masked_fill(probs < threshold, float("-inf"))
    return scores


class _Penalties:
    """Repetition penalty over prompt + output (transformers) and presence penalty over the output (vLLM)."""

    def __init__(
        self, config: SamplingConfig, input_ids: torch.Tensor | None, mask: torch.Tensor, V: int, B: int, device: torch.device
    ) -> None:
        self.config = config
        self.seen = self.generated = None
        if config.repetition_penalty != 1.0:
            self.seen = torch.zeros(B, V, dtype=torch.bool, device=device)  # (B, V)
            if input_ids is not None:
                ids = input_ids.to(device).clamp(0, V - 1)
                self.seen.scatter_(1, ids, mask.bool())
        if config.presence_penalty != 0.0:
            self.generated = torch.zeros(B, V, dtype=torch.bool, device=device)  # (B, V)

    def apply(self, scores: torch.Tensor) -> torch.Tensor:
        if self.seen is not None:
            p = self.config.repetition_penalty
            penalised = torch.where(scores < 0, scores * p, scores / p)
            scores = torch.where(self.seen, penalised, scores)
        if self.generated is not None:
            scores = scores - self.config.presence_penalty * self.generated.float()
        return scores

    def observe(self, next_ids: torch.Tensor, finished: torch.Tensor) -> None:
        index = next_ids[:, None]
        for table in (self.seen, self.generated):
            if table is not None:
                table.scatter_(1, index, ~finished[:, None] | table.gather(1, index))


class _ThinkingState:
    """Per-row count of thinking tokens; forces the early-stop text when a row hits its budget."""

    def __init__(self, budget: ThinkingBudget, input_ids: torch.Tensor | None, mask: torch.Tensor) -> None:
        self.budget = budget
        B = mask.shape[0]
        self.inside = [False] * B
        self.count = [0] * B
        self.forced: list[deque[int]] = [deque() for _ in range(B)]
        if input_ids is not None:  # a prompt may already end inside an open <think>
            for row, (ids, m) in enumerate(zip(input_ids.tolist(), mask.tolist())):
                ids = [t for t, keep in zip(ids, m) if keep]
                opened = max((i for i, t in enumerate(ids) if t == budget.think_start_id), default=-1)
                closed = max((i for i, t in enumerate(ids) if t == budget.think_end_id), default=-1)
                self.inside[row] = opened > closed

    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        ids = next_ids.tolist()
        for row, token in enumerate(ids):
            if self.forced[row]:
                ids[row] = token = self.forced[row].popleft()
            elif token == self.budget.think_start_id:
                self.inside[row], self.count[row] = True, 0
                if self.budget.max_tokens <= 0:
                    self.inside[row] = False
                    self.forced[row].extend(self.budget.stop_ids)
                continue
            if token == self.budget.think_end_id:
                self.inside[row] = False
            elif self.inside[row]:
                self.count[row] += 1
                if self.count[row] >= self.budget.max_tokens:
                    self.inside[row] = False
                    self.forced[row].extend(self.budget.stop_ids)
        return torch.tensor(ids, dtype=next_ids.dtype, device=next_ids.device)
