"""Building, loading and saving captioners: the one place a captioner folder is read or written.

- :func:`load_captioner` opens a captioner folder (``captioner.json`` beside its files) or builds
  from a :class:`~vcap.config.CaptionerConfig`, safely by default (vcap/security.py);
- :func:`build_captioner` constructs every part a config names (vision encoder, language model
  with its adapter, projector, tokenizer) and records every file it read (``captioner.sources``);
- :func:`save_captioner` writes a self-contained folder that ``load_captioner`` opens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from projector import build_projector, load_projector, projector_config_from_dict, save_projector
from qwen3_backbone import Qwen3Config, Qwen3ForCausalLM, load_pretrained, pack_for_cpu_inference, save_pretrained
from qwen3_backbone.tokenizer import Qwen3Tokenizer

from .config import CaptionerConfig, ConfigError
from .config_io import config_from_dict, config_to_dict, read_config_file
from .errors import CaptionerError
from .model import VideoCaptioner
from .outputs import OutputError, write_bytes, write_json
from .processor import VideoProcessor
from .security import OFFLINE, Access, inside
from .vision import VisionEncoder, settings_tag

CONFIG_FILE = "captioner.json"


def _model_files(model_dir: Path) -> list[Path]:
    """The files a Hugging Face model folder is loaded from (config and safetensors)."""
    return sorted(p for p in model_dir.iterdir() if p.name == "config.json" or p.name.endswith(".safetensors")
                  or p.name == "model.safetensors.index.json")


def resolve_dtype(name: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """A dtype by name; ``auto``: bfloat16 where ``device`` computes it natively (CUDA from Ampere
    on, CPUs with AVX512-BF16 or AMX), else float32. A GPU that only emulates bf16 (a T4, a V100)
    gets float32: set float16 there explicitly for half the memory."""
    if isinstance(name, torch.dtype):
        return name
    if name != "auto":
        return getattr(torch, name)
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    return torch.bfloat16 if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def build_language_model(spec: str, base: Path | None = None, *, dtype: torch.dtype = torch.float32,
                         device: str | torch.device = "cpu", access: Access = OFFLINE,
                         files: list[Path] | None = None, load_in_4bit: bool = False) -> Qwen3ForCausalLM:
    """``preset:NAME`` (random weights), a model folder, a hub id (from the local cache; fetched
    only when ``access`` allows downloads), or a training run of the full stage (its newest
    checkpoint's language model). Loading is strict, safetensors only. With ``base`` (a captioner
    folder) a path must lie inside it (see vcap.security). The files read are added to ``files``.
    ``load_in_4bit``: the decoder's linear weights in NF4, quantized as they are read."""
    from qwen3_backbone.quantize import quantize_4bit
    from qwen3_backbone.weights import is_hub_id, resolve_hub_id, resolve_model_dir

    if spec.startswith("preset:"):
        model = Qwen3ForCausalLM(Qwen3Config.from_name(spec.split(":", 1)[1])).to(device=device, dtype=dtype)
        if load_in_4bit:
            quantize_4bit(model, compute_dtype=dtype)
        return model.eval()
    path = Path(spec).expanduser()
    in_folder = base is not None and (path.is_absolute() or ".." in path.parts or (base / path).exists())
    if base is not None and not in_folder and is_hub_id(spec):  # never a folder of the working directory
        model_dir = resolve_hub_id(spec, download=access.allow_downloads)
    else:
        if base is not None:  # a captioner folder names a path inside itself
            path = inside(base, spec, "language_model", access)
        if path.is_dir() and not (path / "config.json").exists():
            from .checkpoint import latest_checkpoint

            checkpoint = latest_checkpoint(path)
            if checkpoint is not None and (checkpoint / "language_model").exists():
                path = checkpoint / "language_model"
        model_dir = resolve_model_dir(path if path.exists() else spec, download=access.allow_downloads)
    model = load_pretrained(model_dir, dtype=dtype, device=device, load_in_4bit=load_in_4bit)
    if files is not None:
        files += _model_files(model_dir)
    return model


@dataclass
class _Sources:
    """Where a captioner's files come from (``base``: its folder, or None for the caller's own
    paths), what the caller allows, and every file read so far."""

    base: Path | None
    access: Access
    files: list[Path] = field(default_factory=list)

    def path(self, value: str | None, key: str) -> Path | None:
        """A path from the config: inside the captioner folder (vcap.security), or the caller's own."""
        if value is None:
            return None
        return inside(self.base, value, key, self.access) if self.base is not None else Path(value).expanduser()


def build_captioner(
    config: CaptionerConfig,
    base: Path | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    vision_dtype: torch.dtype | str | None = None,
    access: Access = OFFLINE,
    load_in_4bit: bool = False,
) -> VideoCaptioner:
    """Construct every part a config names, in ``dtype`` (default: the config's, ``auto`` resolved
    for ``device``). With ``base`` (a captioner folder) relative paths resolve inside it and may not
    leave it unless ``access`` allows; without, they are the caller's own paths (relative to the
    working folder). ``captioner.sources`` lists every file read. ``load_in_4bit``: the language
    model's decoder weights in NF4 (bitsandbytes), quantized as they are read."""
    dtype = resolve_dtype(dtype or config.dtype, device)
    vision_dtype = resolve_dtype(vision_dtype or dtype, device)
    sources = _Sources(base, access, [base / CONFIG_FILE] if base is not None else [])
    vision = _vision(config, sources).to(device=device, dtype=vision_dtype)
    backbone = build_language_model(config.language_model, base, dtype=dtype, device=device, access=access,
                                    files=sources.files, load_in_4bit=load_in_4bit)
    language_model: nn.Module = backbone
    if config.adapter:
        from .adapter import CONFIG_FILE as ADAPTER_CONFIG, WEIGHTS_FILE as ADAPTER_WEIGHTS, load_adapter

        adapter_dir = sources.path(config.adapter, "adapter")
        language_model = load_adapter(backbone, adapter_dir)
        sources.files += [adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS]
    projector = _projector(config, vision, backbone, sources).to(device=device, dtype=dtype).eval()
    tokenizer_source = sources.path(config.tokenizer, "tokenizer") or _tokenizer_beside(sources.files)
    tokenizer = Qwen3Tokenizer.load(tokenizer_source)  # None: the embedded default
    if tokenizer_source is not None:
        sources.files.append(Path(tokenizer_source))
    captioner = VideoCaptioner(vision, projector, language_model, VideoProcessor(tokenizer, config), config).eval()
    captioner.sources = tuple(dict.fromkeys(Path(f).resolve() for f in sources.files))
    return captioner


def _vision(config: CaptionerConfig, sources: _Sources) -> VisionEncoder:
    """The image tower: open_clip's architecture, its tag's or file's weights, then ``vision_weights``."""
    vision_config = config.vision
    if sources.base is not None and vision_config.pretrained and Path(vision_config.pretrained).suffix:  # a file
        vision_config = replace(vision_config, pretrained=str(sources.path(vision_config.pretrained, "vision.pretrained")))
    vision = VisionEncoder(vision_config, access=sources.access)
    if vision.weights_file is not None:
        sources.files.append(vision.weights_file)
    if config.vision_weights:
        sources.files.append(sources.path(config.vision_weights, "vision_weights"))
        vision.load_weights(sources.files[-1])
    return vision


def _projector(config: CaptionerConfig, vision: VisionEncoder, backbone: nn.Module, sources: _Sources) -> nn.Module:
    """The folder's trained projector, or a new one of the config's type, sized to the two models."""
    if sources.base is not None and (sources.base / "projector" / "projector.json").exists():
        sources.files += [sources.base / "projector" / "projector.json",
                          sources.base / "projector" / "projector.safetensors"]
        return load_projector(sources.base / "projector")
    options = dict(config.projector)
    options.setdefault("vision_hidden_size", vision.hidden_size)
    options.setdefault("text_hidden_size", backbone.config.hidden_size)
    try:
        return build_projector(projector_config_from_dict(options, "projector"))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _tokenizer_beside(files: list[Path]) -> Path | None:
    """The language model folder's own tokenizer.json (beside its config.json), if it has one."""
    for f in files:
        if f.name == "config.json" and (f.parent / "tokenizer.json").exists():
            return f.parent / "tokenizer.json"
    return None


def load_captioner(
    path_or_config: str | os.PathLike | CaptionerConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    vision_dtype: torch.dtype | str | None = None,
    *,
    allow_downloads: bool = False,
    allow_external_paths: bool = False,
    load_in_4bit: bool = False,
) -> VideoCaptioner:
    """A captioner from a folder written by ``save_captioner`` (or ``vcap export``), or a config.

    ``dtype``: None takes the captioner's own (``auto``: bfloat16 where the device computes it
    natively, else float32). Safe by default (see vcap.security): offline, safetensors only, and
    every file the folder's captioner.json names must lie inside the folder. ``allow_downloads``
    lets missing hub weights be fetched; ``allow_external_paths`` lets the folder name files
    elsewhere. ``load_in_4bit`` streams the language model in as NF4."""
    access = Access(allow_downloads=allow_downloads, allow_external_paths=allow_external_paths)
    options = dict(device=device, dtype=dtype, vision_dtype=vision_dtype, access=access, load_in_4bit=load_in_4bit)
    if isinstance(path_or_config, CaptionerConfig):
        return pack_for_inference(build_captioner(path_or_config, None, **options))
    folder = Path(path_or_config)
    if not (folder / CONFIG_FILE).is_file():
        raise CaptionerError(
            f"{folder} is not a captioner folder (no {CONFIG_FILE}); create one with `vcap export` or save_captioner"
        )
    where = str(folder / CONFIG_FILE)
    config = config_from_dict(CaptionerConfig, read_config_file(folder / CONFIG_FILE), where=where)
    return pack_for_inference(build_captioner(config, folder, **options))


def pack_for_inference(captioner: VideoCaptioner) -> VideoCaptioner:
    """In bf16 on a CPU with native bf16, the language model's linear weights are reordered into
    oneDNN's blocked layout (qwen3_backbone.pack_for_cpu_inference: decoding ~2x faster, the same
    tokens; no extra memory but a tied head's packed copy). A captioner holding a separate adapter
    stays as it is. To train a loaded captioner, ``qwen3_backbone.unpack_weights(captioner.backbone)``
    first."""
    if (captioner.language_model is captioner.backbone and captioner.dtype == torch.bfloat16
            and captioner.device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        pack_for_cpu_inference(captioner.backbone)
    return captioner


def save_captioner(captioner: VideoCaptioner, out_dir: str | os.PathLike, save_language_model: bool = True) -> Path:
    """Write a self-contained captioner folder: config, projector, tokenizer, the language model in
    Hugging Face format (or, with ``save_language_model=False``, a reference plus the adapter),
    and the image-tower weights unless they are a published open_clip tag. Every path in the
    written captioner.json is inside the folder.

    ``out_dir`` must be missing or empty; ``vcap export`` writes into a fresh temporary folder."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise OutputError(f"{out} is not empty; save a captioner into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    config = config_to_dict(captioner.config)
    save_projector(captioner.projector, out / "projector")
    captioner.processor.tokenizer.save(out / "tokenizer.json")
    config["tokenizer"] = "tokenizer.json"
    if save_language_model:
        model = captioner.language_model
        if hasattr(model, "merge_and_unload"):
            raise ValueError("merge the LoRA adapter first (vcap export does), or save with save_language_model=False")
        save_pretrained(model, out / "language_model")
        config["language_model"], config["adapter"] = "language_model", None
    elif hasattr(captioner.language_model, "save_pretrained"):
        captioner.language_model.save_pretrained(str(out / "adapter"))
        config["adapter"] = "adapter"
    # The image tower's weights always travel with the folder (a tag's too: the folder must not
    # depend on a cache); the tag it came from stays as vision.tag, for its architecture settings.
    from safetensors.torch import save

    write_bytes(out / "vision.safetensors", save(captioner.vision.weights(), metadata={"format": "pt"}))
    config["vision_weights"] = "vision.safetensors"
    config["vision"]["tag"] = settings_tag(captioner.config.vision)
    config["vision"]["pretrained"] = None
    write_json(out / CONFIG_FILE, config)
    return out
