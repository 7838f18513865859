"""How a caption is asked for and decoded, as one value: :class:`GenerationOptions`.

Every captioning path takes it (``VideoCaptioner.caption`` / ``caption_frames`` /
``caption_stream``, ``vcap caption``, ``vcap eval``, the demo), and ``vcap caption``'s resume key
hashes it, so an option can never be passed to the wrong parameter by position. It is frozen and
checked when made: a bad value fails before any video is read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from qwen3_backbone.generate import SAMPLING_PRESETS, SamplingConfig

from .config import LANGS, ConfigError


@dataclass(frozen=True)
class GenerationOptions:
    lang: str = "ko"  # caption language: ko | en
    prompt: str | None = None  # the instruction; None: the captioner's default for ``lang``
    thinking: bool = False  # Qwen3's thinking mode
    thinking_budget: int | None = None  # tokens of thinking before Qwen3's early-stop text
    sampling: str | None = None  # None: greedy; or a Qwen3 preset: "thinking", "non-thinking"
    temperature: float | None = None  # overrides of the preset (with a preset only: greedy ignores them)
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None  # for sampling
    max_new_tokens: int | None = None  # None: the captioner's default
    dense: bool = False  # ask for the video's timed events (the dense instruction) and parse them

    def __post_init__(self) -> None:
        checks = [
            (self.lang in LANGS, f"lang must be one of {', '.join(LANGS)}, got {self.lang!r}"),
            (self.sampling in (None, *SAMPLING_PRESETS),
             f"sampling must be None (greedy) or one of {', '.join(SAMPLING_PRESETS)}, got {self.sampling!r}"),
            (self.thinking_budget is None or self.thinking_budget >= 0, "thinking_budget must be >= 0 tokens"),
            (self.temperature is None or self.temperature > 0, "temperature must be > 0 (greedy: no sampling)"),
            (self.top_p is None or 0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k is None or self.top_k >= 0, "top_k must be >= 0 (0: off)"),
            (self.max_new_tokens is None or self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @classmethod
    def of(cls, options: GenerationOptions | None = None, **changes: Any) -> GenerationOptions:
        """``options`` (or the defaults) with keyword changes: what ``caption(..., lang="en")`` builds.
        ``thinking_budget_tokens`` is the keyword ``caption`` took before this class: the same as
        ``thinking_budget``."""
        if "thinking_budget_tokens" in changes:
            changes["thinking_budget"] = changes.pop("thinking_budget_tokens")
        unknown = sorted(set(changes) - set(cls.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unknown caption option {unknown[0]!r} (known: {', '.join(cls.__dataclass_fields__)})")
        return replace(options or cls(), **changes)

    def sampling_config(self) -> SamplingConfig:
        """The backbone's sampling settings: the preset with the overrides, or greedy."""
        base = asdict(SAMPLING_PRESETS[self.sampling]) if self.sampling else {}
        overrides = {k: v for k, v in (("temperature", self.temperature), ("top_p", self.top_p),
                                       ("top_k", self.top_k)) if v is not None}
        return SamplingConfig(**{**base, **overrides})

    def identity(self) -> dict[str, Any]:
        """Every option, as resume keys hash them; ``dense`` only when on, so that keys made before
        it existed stay the same."""
        options = asdict(self)
        if not options["dense"]:
            del options["dense"]
        return options

    def key(self) -> str:
        """A short hash of every option (part of ``vcap caption``'s resume key)."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:12]
