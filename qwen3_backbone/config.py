"""Qwen3Config: the architecture of a Qwen3 language model, dense or Mixture-of-Experts.

Field names are the checkpoint's own (those of the official ``config.json``), so a config reads
and writes the Hugging Face format without a translation table. Presets cover every released
Qwen3 size plus tiny shapes for tests; ``Qwen3Config.from_hf`` reads an official config.json,
including YaRN ``rope_scaling`` and the transformers-5 ``rope_parameters`` form.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROPE_TYPES = ("default", "linear", "yarn")


@dataclass
class Qwen3Config:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    num_key_value_heads: int | None = None  # None: same as num_attention_heads (MHA)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    vocab_size: int = 151936
    max_position_embeddings: int = 40960
    rope_theta: float = 1_000_000.0
    rope_scaling: dict[str, Any] | None = None  # e.g. {"rope_type": "yarn", "factor": 4.0, ...}
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    # Mixture-of-Experts (num_experts == 0 means a dense model)
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.num_attention_heads > 0 and self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"Qwen3Config: hidden_size={self.hidden_size} is not divisible by "
                    f"num_attention_heads={self.num_attention_heads}; set head_dim explicitly"
                )
            self.head_dim = self.hidden_size // max(self.num_attention_heads, 1)
        self.mlp_only_layers = [int(i) for i in self.mlp_only_layers]
        for name in (
            "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "intermediate_size", "vocab_size", "max_position_embeddings",
            "decoder_sparse_step",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Qwen3Config: {name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"Qwen3Config: num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"Qwen3Config: head_dim must be even for RoPE, got {self.head_dim}")
        if not self.rope_theta > 0:
            raise ValueError(f"Qwen3Config: rope_theta must be positive, got {self.rope_theta}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"Qwen3Config: rms_norm_eps must be positive, got {self.rms_norm_eps}")
        if self.num_experts < 0:
            raise ValueError(f"Qwen3Config: num_experts must be >= 0, got {self.num_experts}")
        if self.num_experts:
            if not 0 < self.num_experts_per_tok <= self.num_experts:
                raise ValueError(
                    f"Qwen3Config: num_experts_per_tok must be in 1..num_experts={self.num_experts}, "
                    f"got {self.num_experts_per_tok}"
                )
            if self.moe_intermediate_size <= 0:
                raise ValueError("Qwen3Config: moe_intermediate_size must be positive for an MoE model")
        bad = [i for i in self.mlp_only_layers if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise ValueError(
                f"Qwen3Config: mlp_only_layers {bad} are outside 0..{self.num_hidden_layers - 1}"
            )
        if self.rope_scaling is not None:
            self.rope_scaling = _normalise_rope_scaling(self.rope_scaling)

    # -- derived facts --------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Which layers get a sparse MoE block: exactly transformers' Qwen3MoeDecoderLayer rule."""
        return (
            layer_idx not in self.mlp_only_layers
            and self.num_experts > 0
            and (layer_idx + 1) % self.decoder_sparse_step == 0
        )

    @property
    def rope_type(self) -> str:
        return "default" if self.rope_scaling is None else self.rope_scaling["rope_type"]

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> Qwen3Config:
        """A preset by name (``Qwen3-0.6B`` ... ``Qwen3-235B-A22B``, ``tiny``, ``tiny-moe``)."""
        key = name.split("/")[-1]
        if key not in PRESETS:
            raise KeyError(f"unknown Qwen3 preset {name!r}; known: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[key], **overrides})

    @classmethod
    def from_hf(cls, source: str | Path | dict[str, Any]) -> Qwen3Config:
        """Read an official Hugging Face config: a ``config.json`` path, its folder, or its dict.

        Accepts the legacy ``rope_theta`` + ``rope_scaling`` keys and transformers-5's
        ``rope_parameters``; ``num_local_experts`` is read as ``num_experts``. Keys that describe
        training or tokens, not the architecture, are ignored. A missing required field raises a
        ``ValueError`` that names it.
        """
        raw, where = _read_hf_config(source)
        model_type = raw.get("model_type", "qwen3")
        if model_type not in ("qwen3", "qwen3_moe"):
            raise ValueError(f"{where}: model_type {model_type!r} is not a Qwen3 model (qwen3, qwen3_moe)")
        if raw.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{where}: hidden_act {raw['hidden_act']!r} is not supported (Qwen3 uses silu)")
        required = ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"]
        is_moe = model_type == "qwen3_moe"
        if is_moe:
            required += ["num_experts_per_tok", "moe_intermediate_size"]
            if "num_experts" not in raw and "num_local_experts" not in raw:
                raise ValueError(f"{where}: missing required field 'num_experts' for a qwen3_moe model")
        missing = [k for k in required if raw.get(k) is None]
        if missing:
            raise ValueError(f"{where}: missing required field(s) {', '.join(repr(k) for k in missing)}")

        rope_theta, rope_scaling = _read_rope(raw, where)
        kwargs: dict[str, Any] = {
            "hidden_size": raw["hidden_size"],
            "num_hidden_layers": raw["num_hidden_layers"],
            "num_attention_heads": raw["num_attention_heads"],
            "intermediate_size": raw["intermediate_size"],
            "num_key_value_heads": raw.get("num_key_value_heads"),
            "head_dim": raw.get("head_dim"),
            "vocab_size": raw["vocab_size"],
            # transformers' own defaults where a field is absent
            "max_position_embeddings": raw.get("max_position_embeddings", 32768),
            "rope_theta": rope_theta,
            "rope_scaling": rope_scaling,
            "rms_norm_eps": raw.get("rms_norm_eps", 1e-6),
            "tie_word_embeddings": bool(raw.get("tie_word_embeddings", False)),
            "attention_bias": bool(raw.get("attention_bias", False)),
        }
        if is_moe:
            kwargs.update(
                num_experts=raw.get("num_experts", raw.get("num_local_experts")),
                num_experts_per_tok=raw["num_experts_per_tok"],
                moe_intermediate_size=raw["moe_intermediate_size"],
                norm_topk_prob=bool(raw.get("norm_topk_prob", False)),
                decoder_sparse_step=raw.get("decoder_sparse_step", 1),
                mlp_only_layers=list(raw.get("mlp_only_layers") or []),
            )
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None

    def to_hf(self) -> dict[str, Any]:
        """The official config.json form (readable by transformers and by ``from_hf``)."""
        out: dict[str, Any] = {
            "architectures": ["Qwen3MoeForCausalLM" if self.is_moe else "Qwen3ForCausalLM"],
            "model_type": "qwen3_moe" if self.is_moe else "qwen3",
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "attention_dropout": 0.0,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "use_sliding_window": False,
            "sliding_window": None,
        }
        if self.is_moe:
            out.update(
                num_experts=self.num_experts,
                num_experts_per_tok=self.num_experts_per_tok,
                moe_intermediate_size=self.moe_intermediate_size,
                norm_topk_prob=self.norm_topk_prob,
                decoder_sparse_step=self.decoder_sparse_step,
                mlp_only_layers=list(self.mlp_only_layers),
            )
        return out

    # -- size -----------------------------------------------------------------------------------
    def num_parameters(self, active: bool = False) -> int:
        """Parameter count from the shapes alone (``active``: per token, routed experts top-k)."""
        d, hd = self.hidden_size, self.head_dim
        attn = d * hd * (2 * self.num_attention_heads + 2 * self.num_key_value_heads) + 2 * hd
        if self.attention_bias:
            attn += hd * (self.num_attention_heads + 2 * self.num_key_value_heads) + d
        total = 0
        for i in range(self.num_hidden_layers):
            if self.is_moe_layer(i):
                experts = self.num_experts_per_tok if active else self.num_experts
                mlp = d * self.num_experts + experts * 3 * d * self.moe_intermediate_size
            else:
                mlp = 3 * d * self.intermediate_size
            total += attn + mlp + 2 * d
        embed = self.vocab_size * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return total + embed + head + d


def _read_hf_config(source: str | Path | dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(the config dict, where it came from) for a config.json path, its folder or a dict."""
    if isinstance(source, dict):
        return dict(source), "config dict"
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")), str(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no config.json at {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _read_rope(raw: dict[str, Any], where: str) -> tuple[float, dict[str, Any] | None]:
    params = raw.get("rope_parameters")
    if isinstance(params, dict):  # transformers-5 form: theta and scaling together
        theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = raw.get("rope_theta", 10000.0)
        scaling = dict(raw["rope_scaling"]) if raw.get("rope_scaling") else {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    try:
        return float(theta), _normalise_rope_scaling(scaling)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _normalise_rope_scaling(scaling: dict[str, Any]) -> dict[str, Any] | None:
    scaling = dict(scaling)
    rope_type = scaling.pop("rope_type", scaling.pop("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"rope_scaling type {rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    if rope_type == "default":
        return None
    factor = scaling.get("factor")
    if not isinstance(factor, (int, float)) or factor < 1:
        raise ValueError(f"rope_scaling.factor must be a number >= 1, got {factor!r}")
    return {"rope_type": rope_type, **scaling}


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


# Official config.json values of every released Qwen3 size (Qwen/Qwen3-* on the Hugging Face hub).
_COMMON: dict[str, Any] = dict(vocab_size=151936, max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6)
_MOE: dict[str, Any] = dict(num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[])

PRESETS: dict[str, dict[str, Any]] = {
    "Qwen3-0.6B": dict(_COMMON, hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, intermediate_size=3072, tie_word_embeddings=True),
    "Qwen3-1.7B": dict(_COMMON, hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, intermediate_size=6144, tie_word_embeddings=True),
    "Qwen3-4B": dict(_COMMON, hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, intermediate_size=9728, tie_word_embeddings=True),
    "Qwen3-8B": dict(_COMMON, hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, intermediate_size=12288, tie_word_embeddings=False),
    "Qwen3-14B": dict(_COMMON, hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=8,
                      head_dim=128, intermediate_size=17408, tie_word_embeddings=False),
    "Qwen3-32B": dict(_COMMON, hidden_size=5120, num_hidden_layers=64, num_attention_heads=64, num_key_value_heads=8,
                      head_dim=128, intermediate_size=25600, tie_word_embeddings=False),
    "Qwen3-30B-A3B": dict(_COMMON, **_MOE, hidden_size=2048, num_hidden_layers=48, num_attention_heads=32,
                          num_key_value_heads=4, head_dim=128, intermediate_size=6144, moe_intermediate_size=768,
                          tie_word_embeddings=False),
    "Qwen3-235B-A22B": dict(_COMMON, **_MOE, hidden_size=4096, num_hidden_layers=94, num_attention_heads=64,
                            num_key_value_heads=4, head_dim=128, intermediate_size=12288, moe_intermediate_size=1536,
                            tie_word_embeddings=False),
    # Tiny shapes for tests and the quickstart (the real vocabulary, so the real tokenizer fits).
    "tiny": dict(_COMMON, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, intermediate_size=128, tie_word_embeddings=True),
    "mini": dict(_COMMON, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=32, intermediate_size=384, tie_word_embeddings=True),  # the quickstart's LM
    "tiny-moe": dict(_COMMON, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     head_dim=16, intermediate_size=128, num_experts=8, num_experts_per_tok=2,
                     moe_intermediate_size=32, norm_topk_prob=True, tie_word_embeddings=False),
}
