"""Configuration: dataclasses with validation; YAML/JSON files are only instances of them.

``config_from_dict(cls, data)`` builds a (nested) dataclass from a dict: an unknown key or a value
of the wrong type is an error naming its full key path (``train.lr``). ``apply_overrides``
applies command-line ``key=value`` pairs (values parsed as YAML scalars). ``load_config`` reads a
YAML file into a :class:`RunConfig`; ``save_config`` writes the resolved config with a run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import UsageError
from .vision import VisionConfig

T = TypeVar("T")

DEFAULT_INSTRUCTIONS = {
    "ko": "이 영상을 한국어로 자세히 묘사해 주세요.",
    "en": "Describe this video in detail.",
}
LANGS = ("ko", "en")


class ConfigError(UsageError, ValueError):
    """A config value that is wrong: the message names the key."""


@dataclass
class FramesConfig:
    """How frames are sampled from each video (see vcap.video.read_frames)."""

    num_frames: int = 8
    strategy: str = "uniform"  # uniform | fps
    fps: float | None = None  # for strategy=fps
    max_frames: int | None = None  # cap for strategy=fps
    size: int | None = 224  # decode-time resize of the shorter side (None: native)
    backend: str = "auto"  # auto | decord | pyav

    def __post_init__(self) -> None:
        if self.strategy not in ("uniform", "fps"):
            raise ConfigError(f"frames.strategy must be 'uniform' or 'fps', got {self.strategy!r}")
        if self.strategy == "uniform" and self.num_frames < 1:
            raise ConfigError(f"frames.num_frames must be >= 1, got {self.num_frames}")
        if self.strategy == "fps" and not (self.fps and self.fps > 0):
            raise ConfigError("frames.fps must be > 0 when frames.strategy is 'fps'")
        if self.backend not in ("auto", "decord", "pyav"):
            raise ConfigError(f"frames.backend must be auto, decord or pyav, got {self.backend!r}")
        if self.size is not None and self.size < 1:
            raise ConfigError(f"frames.size must be > 0 pixels (or null for the native size), got {self.size}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"frames.max_frames must be >= 1 (or null), got {self.max_frames}")
        if self.num_frames < 1:
            raise ConfigError(f"frames.num_frames must be >= 1, got {self.num_frames}")


@dataclass
class CaptionerConfig:
    """What a captioner is made of. Paths are relative to the captioner folder when saved there.

    language_model: a Hugging Face model folder, a cached hub id (``Qwen/Qwen3-0.6B``) or
        ``preset:NAME`` (random weights of a Qwen3Config preset, for tests).
    projector: ``{"type": linear | mlp2x_gelu | pooled_mlp, ...options}``; the widths are taken
        from the vision encoder and the language model.
    adapter: a peft LoRA adapter folder applied to the language model, or None.
    tokenizer: a tokenizer.json (or folder), or None for the language model folder's own
        tokenizer.json if it has one, else the embedded default.
    """

    language_model: str = "preset:tiny"
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: dict[str, Any] = field(default_factory=lambda: {"type": "mlp2x_gelu"})
    frames: FramesConfig = field(default_factory=FramesConfig)
    adapter: str | None = None
    tokenizer: str | None = None
    vision_weights: str | None = None  # a safetensors file of the image tower (trained/random weights)
    system_prompt: str | None = None
    instructions: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_INSTRUCTIONS))
    max_new_tokens: int = 128

    def __post_init__(self) -> None:
        if "type" not in self.projector:
            raise ConfigError("projector.type is required (linear, mlp2x_gelu or pooled_mlp)")
        missing = [lang for lang in LANGS if lang not in self.instructions]
        if missing:
            raise ConfigError(f"instructions.{missing[0]} is missing (a default prompt per language: ko, en)")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


# -- generic dict <-> dataclass ---------------------------------------------------------------------

def config_from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``: unknown keys and wrong types raise ConfigError."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {_join(where, unknown[0])!r} (known: {', '.join(fields)})")
    kwargs = {name: _convert(hints[name], value, _join(where, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where + ': ' if where else ''}{e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def config_to_dict(config: Any) -> Any:
    if dataclasses.is_dataclass(config):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, dict):
        return {k: config_to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    return config


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return config_from_dict(hint, value, where)
    if hint is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        key_hint, value_hint = typing.get_args(hint) or (Any, Any)
        return {k: _convert(value_hint, v, f"{where}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item_hint, *_) = typing.get_args(hint) or (Any,)
        return [_convert(item_hint, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # PyYAML (YAML 1.1) reads 2e-4 as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where} must be float, got {value!r}") from None
    if hint in (int, float, str, bool):
        if isinstance(value, bool) and hint is not bool:
            raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
        if not isinstance(value, hint):
            raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
        return value
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (value parsed as a YAML scalar) to a nested dict, in place."""
    import yaml

    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {key}: cannot parse {raw!r} ({e})") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.setdefault(part, {}), dict):
                raise ConfigError(f"override {key}: {part} is not a section")
            node = node[part]
        node[parts[-1]] = value
    return data


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML or JSON file as a dict; a syntax error names the file and line."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


# -- training runs -----------------------------------------------------------------------------------

STAGES = ("projector", "lora", "full")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class DataConfig:
    """Manifests (JSONL) and the vision feature cache. Relative paths resolve from the working folder."""

    train: str = ""
    val: str | None = None
    feature_cache: str | None = "runs/feature_cache"  # None: recompute features every run
    max_samples: int | None = None  # use only the first N training samples
    text_only: bool = False  # train on the captions' text without videos (pretraining the language model)

    def __post_init__(self) -> None:
        if not self.train:
            raise ConfigError("data.train must name a manifest (JSONL)")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"data.max_samples must be >= 1 (or null for all), got {self.max_samples}")


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ConfigError("lora.targets must name at least one module (e.g. q_proj)")


@dataclass
class TrainConfig:
    stage: str = "projector"  # projector | lora | full
    out_dir: str = "runs/train"
    init_from: str | None = None  # a run folder or checkpoint: its projector (and adapter) weights start this stage
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3  # the language model's parameters (lora/full); the projector's too unless projector_lr
    projector_lr: float | None = None
    weight_decay: float = 0.0
    warmup_steps: int = 0
    scheduler: str = "cosine"  # cosine | linear | constant
    max_grad_norm: float | None = 1.0
    precision: str = "no"  # no | bf16 | fp16 (mixed precision via accelerate)
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    qlora: bool = False  # the language model's base weights in 4-bit NF4 (bitsandbytes)
    seed: int = 0
    save_every: int = 100  # optimizer steps between checkpoints
    keep_last: int = 2  # checkpoints kept (older ones are deleted)
    log_every: int = 10
    eval_every: int | None = None  # optimizer steps between validation losses (None: at the end)
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"train.stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.scheduler not in ("cosine", "linear", "constant"):
            raise ConfigError(f"train.scheduler must be cosine, linear or constant, got {self.scheduler!r}")
        if self.precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"train.precision must be no, bf16 or fp16, got {self.precision!r}")
        for name in ("epochs", "batch_size", "grad_accum", "save_every", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or (self.projector_lr is not None and self.projector_lr <= 0):
            raise ConfigError("train.lr and train.projector_lr must be > 0")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"train.max_grad_norm must be > 0 (or null: no clipping), got {self.max_grad_norm}")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise ConfigError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        for name in ("max_steps", "eval_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1 (or null), got {getattr(self, name)}")
        if self.qlora and self.stage != "lora":
            raise ConfigError("train.qlora needs train.stage: lora (4-bit base weights cannot be trained)")


def check_run(cfg: "RunConfig") -> None:
    if cfg.data.text_only and cfg.train.stage == "projector":
        raise ConfigError("data.text_only trains the language model alone: use train.stage full or lora")


@dataclass
class RunConfig:
    """A whole run: what to build (model), what to read (data) and how to train (train)."""

    model: CaptionerConfig = field(default_factory=CaptionerConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(train="data/train.jsonl"))
    train: TrainConfig = field(default_factory=TrainConfig)


def absolute_paths(cfg: RunConfig, base: str | os.PathLike | None = None) -> RunConfig:
    """A copy of ``cfg`` whose file and folder settings are absolute (relative ones resolved against
    ``base``, the working folder by default), as a run saves them: the run then means the same
    files from any working folder. A language model that is not a local path (``preset:``, a hub
    id) is kept as it is."""
    root = Path(base or os.getcwd())

    def absolute(value: str | None) -> str | None:
        if value is None:
            return None
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else (root / path).resolve())

    model, data, train = cfg.model, cfg.data, cfg.train
    lm = model.language_model
    if not lm.startswith("preset:") and (Path(lm).is_absolute() or (root / lm).exists()):
        lm = absolute(lm)
    pretrained = model.vision.pretrained
    if pretrained and Path(pretrained).suffix:  # a file, not an open_clip tag
        pretrained = absolute(pretrained)
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(model, language_model=lm, vision=dataclasses.replace(model.vision, pretrained=pretrained),
                                  vision_weights=absolute(model.vision_weights), tokenizer=absolute(model.tokenizer),
                                  adapter=absolute(model.adapter)),
        data=dataclasses.replace(data, train=absolute(data.train), val=absolute(data.val),
                                 feature_cache=absolute(data.feature_cache)),
        train=dataclasses.replace(train, out_dir=absolute(train.out_dir), init_from=absolute(train.init_from)),
    )


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """A YAML run config with ``key=value`` overrides applied (errors name the file and key)."""
    data = apply_overrides(read_config_file(path), overrides or [])
    try:
        cfg = config_from_dict(RunConfig, data)
        check_run(cfg)
        return cfg
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
