"""Configuration schemas: dataclasses validated in ``__post_init__``; YAML/JSON files are only
instances of them (``vcap/config_io.py`` reads, converts and overrides them).

- :class:`CaptionerConfig` (with :class:`FramesConfig` and ``vcap.vision.VisionConfig``): what a
  captioner is made of, as saved in ``captioner.json``;
- :class:`RunConfig` = :class:`CaptionerConfig` + :class:`DataConfig` + :class:`TrainConfig`:
  a training run, as written in ``configs/*.yaml``.

Every check lives in the class it checks, so no caller can forget one; an error names the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError
from .vision import VisionConfig

DEFAULT_INSTRUCTIONS = {
    "ko": "이 영상을 한국어로 자세히 묘사해 주세요.",
    "en": "Describe this video in detail.",
}
# what a dense caption (timed events, vcap.events' layout) is asked for with, per language
DEFAULT_DENSE_INSTRUCTIONS = {
    "ko": "이 영상에서 일어나는 일을 시간 순서대로 한 줄에 하나씩 '분:초.초 - 분:초.초: 설명' 형식으로 적어 주세요.",
    "en": "List the events of this video in order, one per line, as 'm:ss.s - m:ss.s: description'.",
}
LANGS = ("ko", "en")
DTYPES = ("auto", "float32", "bfloat16", "float16")


class ConfigError(UsageError, ValueError):
    """A config value that is wrong: the message names the key."""


@dataclass
class FramesConfig:
    """How frames are sampled from each video (see vcap.video.read_frames)."""

    num_frames: int = 8
    strategy: str = "uniform"  # uniform | fps
    fps: float | None = None  # for strategy=fps
    max_frames: int | None = None  # cap for strategy=fps
    min_frames: int | None = None  # floor for strategy=fps (short clips: spread evenly instead)
    token_budget: int | None = None  # most visual tokens per video: fewer frames are sampled to fit
    size: int | None = 224  # decode-time resize of the shorter side (None: native)
    backend: str = "auto"  # auto | decord | pyav
    timestamps: str = "none"  # text: each frame group's time as text before its tokens (Qwen3-VL); none
    end_label: bool = False  # with timestamps text: after the last group, where the video stops, as one more label

    def __post_init__(self) -> None:
        if self.strategy not in ("uniform", "fps"):
            raise ConfigError(f"frames.strategy must be 'uniform' or 'fps', got {self.strategy!r}")
        if self.strategy == "uniform" and self.num_frames < 1:
            raise ConfigError(f"frames.num_frames must be >= 1, got {self.num_frames}")
        if self.strategy == "fps" and not (self.fps and self.fps > 0):
            raise ConfigError("frames.fps must be > 0 when frames.strategy is 'fps'")
        if self.timestamps not in ("text", "none"):
            raise ConfigError(f"frames.timestamps must be 'text' or 'none', got {self.timestamps!r}")
        if self.end_label and self.timestamps != "text":
            raise ConfigError("frames.end_label needs frames.timestamps: text (it is one more time label)")
        if self.backend not in ("auto", "decord", "pyav"):
            raise ConfigError(f"frames.backend must be auto, decord or pyav, got {self.backend!r}")
        if self.size is not None and self.size < 1:
            raise ConfigError(f"frames.size must be > 0 pixels (or null for the native size), got {self.size}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"frames.max_frames must be >= 1 (or null), got {self.max_frames}")
        if self.min_frames is not None and not 1 <= self.min_frames <= (self.max_frames or self.min_frames):
            raise ConfigError(f"frames.min_frames must be >= 1 and <= max_frames (or null), got {self.min_frames}")
        if self.token_budget is not None and self.token_budget < 1:
            raise ConfigError(f"frames.token_budget must be >= 1 visual token (or null), got {self.token_budget}")
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
    event_windows: see vcap/windows.py; captioners saved without it keep captioning as before.
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
    dense_instructions: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_DENSE_INSTRUCTIONS))
    max_new_tokens: int = 128
    # dense captions: an event's caption attends only to the video tokens within the times its
    # line has just written (vcap/windows.py), in training and captioning alike
    event_windows: bool = False
    # weights' dtype: auto | float32 | bfloat16 | float16. auto: bfloat16 where the device has it
    # natively (CUDA, CPUs with AVX512-BF16/AMX) else float32 when captioning; for training, the
    # frozen weights in bfloat16 (what is trained stays float32)
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if "type" not in self.projector:
            raise ConfigError("projector.type is required (linear, mlp2x_gelu or pooled_mlp)")
        for key in ("instructions", "dense_instructions"):
            missing = [lang for lang in LANGS if lang not in getattr(self, key)]
            if missing:
                raise ConfigError(f"{key}.{missing[0]} is missing (a default prompt per language: ko, en)")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


# -- training runs -----------------------------------------------------------------------------------

STAGES = ("projector", "lora", "full")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def manifest_paths(value: str | list[str] | None) -> list[str]:
    """``data.train`` or ``data.val`` as a list of manifests (none for None)."""
    return [] if value is None else [value] if isinstance(value, str) else list(value)


@dataclass
class DataConfig:
    """Manifests (JSONL) and the vision feature cache. Relative paths resolve from the working folder."""

    train: str | list[str] = ""  # a manifest, or a list of manifests trained on together (mixed tasks)
    val: str | list[str] | None = None
    feature_cache: str | None = "runs/feature_cache"  # None: a cache inside the run folder, for this run only
    feature_dtype: str = "bfloat16"  # how stored features are kept: bfloat16 | float16 | float32
    max_samples: int | None = None  # use only the first N training samples
    text_only: bool = False  # train on the captions' text without videos (pretraining the language model)

    def __post_init__(self) -> None:
        if not self.train or not all(manifest_paths(self.train)):
            raise ConfigError("data.train must name a manifest (JSONL) or a list of them")
        if self.val is not None and not all(manifest_paths(self.val)):
            raise ConfigError("data.val must name a manifest (JSONL), a list of them, or null")
        if self.feature_dtype not in ("bfloat16", "float16", "float32"):
            raise ConfigError(f"data.feature_dtype must be bfloat16, float16 or float32, got {self.feature_dtype!r}")
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
    precision: str = "no"  # no | bf16 | fp16 (mixed precision: torch autocast)
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    qlora: bool = False  # the language model's base weights in 4-bit NF4 (bitsandbytes)
    fsdp: bool = False  # shard weights, gradients and optimizer state across processes (PyTorch FSDP2; torchrun)
    seed: int = 0
    save_every: int = 100  # optimizer steps between checkpoints
    keep_last: int = 2  # checkpoints kept (older ones are deleted)
    log_every: int = 10
    eval_every: int | None = None  # optimizer steps between validation losses (None: at the end)
    tensorboard: bool = False
    # dense samples (with events): the loss weight of their event times and line ends against 1
    # for caption text, and how far (seconds) each event window's edges move at random in training
    # (with the captioner's event_windows), as far as the model's own times will be off
    event_time_weight: float = 1.0
    event_window_jitter: float = 0.0

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
        if self.event_time_weight <= 0:
            raise ConfigError(f"train.event_time_weight must be > 0, got {self.event_time_weight}")
        if self.event_window_jitter < 0:
            raise ConfigError(f"train.event_window_jitter must be >= 0 seconds, got {self.event_window_jitter}")
        if self.qlora and self.stage != "lora":
            raise ConfigError("train.qlora needs train.stage: lora (4-bit base weights cannot be trained)")
        if self.fsdp and self.qlora:
            raise ConfigError("train.fsdp shards bf16 weights; 4-bit base weights (train.qlora) are not sharded. "
                              "Use train.qlora on one GPU, or train.fsdp with bf16 LoRA (train.qlora: false)")


@dataclass
class RunConfig:
    """A whole run: what to build (model), what to read (data) and how to train (train)."""

    model: CaptionerConfig = field(default_factory=CaptionerConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(train="data/train.jsonl"))
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.data.text_only and self.train.stage == "projector":
            raise ConfigError("data.text_only trains the language model alone: use train.stage full or lora")
