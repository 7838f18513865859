"""The frozen vision encoder: an open_clip image tower that turns frames into patch tokens.

``VisionEncoder(VisionConfig(model_name="ViT-B-32", pretrained=..., feature_layer=-2))``:
- ``pretrained`` is an open_clip tag (e.g. ``laion2b_s34b_b79k``, ``openai``), served from the
  local Hugging Face cache as ``open_clip_model.safetensors``; a local ``.safetensors`` file; or
  None for random weights (tests and the offline quickstart), drawn from ``seed`` so that the
  same config always builds the same encoder. Only safetensors are read. Offline and uncached, a
  tag fails at once with a message saying how to pass a local file.
- A tag also sets the architecture and preprocessing it was trained with (QuickGELU for the
  ``openai`` weights, SigLIP's mean and std ...). Weights from a local file say which tag they
  are with ``tag`` (or ``quick_gelu`` explicitly); a file for a model whose tags disagree on
  QuickGELU is refused without one, since the wrong activation gives a silently wrong tower.
- ``feature_layer`` picks the block whose output is used (-1 last, -2 second to last as LLaVA
  does); blocks after it are pruned so they never run. A ViT's blocks are its transformer
  blocks; a ModifiedResNet's (open_clip's ``RN50`` family) are its stem and its four stages,
  whose (C, H, W) feature map becomes H*W tokens of width C.
- ``use_cls_token`` keeps a ViT's class token in front of the patch tokens.
- ``model_overrides`` changes the architecture of a built-in open_clip model (a tiny tower for
  tests). Only the keys in :data:`ALLOWED_OVERRIDES` are accepted, with plain values: they shape
  the network and nothing else (no file paths, no downloads, no loader options). Any other key is
  an error naming it.
- Frozen by default (eval mode, no gradients).

Only the image tower is built (the text tower is a stub), so a model whose text side lives on the
hub builds offline. ``model_name`` is one of open_clip's built-in models; open_clip's ``hf-hub:``
and ``local-dir:`` schemes fetch configs and weights, so they need downloads allowed (see
``vcap/security.py``), as does a tag that is not in the local Hugging Face cache.

``preprocess`` applies the preprocessing open_clip returns with the model (resize of the shorter
side with its interpolation, centre crop, mean/std) to a batch of uint8 frames with tensor ops.
``hidden_size``, ``num_patches``, ``image_size`` and ``preprocess_cfg`` describe the outputs so the
projector and the captioner can be built from them.

Notation: N images (B*T frames), P patch tokens per image, Dv = hidden_size.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import UsageError
from .security import OFFLINE, Access


class VisionLoadError(UsageError, RuntimeError):
    """Vision weights that cannot be found or read (says what to do)."""


# open_clip model_cfg keys a config may override: each shapes the network and nothing else.
# Left out on purpose: anything naming a file, a hub model or a module (timm_*, hf_*,
# tokenizer_*, pretrained paths), loader options (weights_only, cache_dir) and free-form kwargs.
ALLOWED_OVERRIDES: dict[str, frozenset[str] | None] = {
    "embed_dim": None,
    "quick_gelu": None,
    "vision_cfg": frozenset({
        "layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "ls_init_value",
        "patch_dropout", "attentional_pool", "attn_pooler_queries", "attn_pooler_heads", "no_ln_pre",
        "pos_embed_type", "final_ln_after_pool", "pool_type", "block_type", "qk_norm", "scaled_cosine_attn",
        "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc"}),
    # accepted for configs written before only the image tower was built; not used
    "text_cfg": frozenset({"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "ls_init_value",
                           "embed_cls", "pad_id", "no_causal_mask", "final_ln_after_pool", "pool_type", "proj_bias",
                           "proj_type"}),
}
TEXT_STUB = {"context_length": 2, "vocab_size": 2, "width": 8, "heads": 1, "layers": 1}  # never run
HUB_SCHEMES = ("hf-hub:", "local-dir:")


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def check_overrides(overrides: dict[str, Any]) -> None:
    """Raise ValueError naming the first key of ``model_overrides`` that is not allowed."""
    for key, value in overrides.items():
        if key not in ALLOWED_OVERRIDES:
            raise ValueError(f"vision.model_overrides.{key} is not allowed; allowed: {', '.join(ALLOWED_OVERRIDES)}")
        inner = ALLOWED_OVERRIDES[key]
        if inner is None:
            if not _plain(value):
                raise ValueError(f"vision.model_overrides.{key} must be a number or a flag, got {value!r}")
            continue
        if not isinstance(value, dict):
            raise ValueError(f"vision.model_overrides.{key} must be a mapping, got {value!r}")
        for name, item in value.items():
            if name not in inner:
                raise ValueError(f"vision.model_overrides.{key}.{name} is not allowed (only keys that shape the "
                                 f"network: {', '.join(sorted(inner))})")
            if not _plain(item):
                raise ValueError(f"vision.model_overrides.{key}.{name} must be a number, a flag, a word or a list "
                                 f"of numbers, got {item!r}")


@dataclass
class VisionConfig:
    model_name: str = "ViT-B-32"
    pretrained: str | None = None  # open_clip tag, a local .safetensors path, or None (random)
    seed: int = 0  # random weights are drawn from this seed: the same config is the same encoder
    feature_layer: int = -2  # which block's output: -1 last, -2 second to last (LLaVA)
    use_cls_token: bool = False
    tag: str | None = None  # the open_clip tag local weights were published as: its settings apply
    quick_gelu: bool | None = None  # None: as the tag says (False without a tag)
    download: bool = False  # kept so that older captioner.json files load; only the caller allows downloads
    model_overrides: dict[str, Any] | None = None  # architecture keys of open_clip's model_cfg (ALLOWED_OVERRIDES)

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name:
            raise ValueError("vision.model_name must be an open_clip model name, e.g. 'ViT-B-32'")
        if not isinstance(self.feature_layer, int) or self.feature_layer == 0:
            raise ValueError(f"vision.feature_layer must be a non-zero block index (-1 last), got {self.feature_layer!r}")
        if self.download:
            raise ValueError("vision.download: a config cannot allow downloads; the caller does "
                             "(--allow-downloads on the command line, allow_downloads=True in Python)")
        if self.model_overrides:
            check_overrides(self.model_overrides)


def resolve_pretrained(model_name: str, pretrained: str, download: bool = False) -> Path:
    """A local safetensors file for a tag or path; fails fast (offline) with instructions. A tag
    is read from the local Hugging Face cache, and fetched only with ``download=True``."""
    path = Path(pretrained).expanduser()
    if path.suffix or os.sep in pretrained:
        if not path.exists():
            raise VisionLoadError(f"vision weights not found: {path}")
        if path.suffix != ".safetensors":
            raise VisionLoadError(f"{path}: vcap loads vision weights from .safetensors files only (no pickle)")
        return path
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise VisionLoadError(f"open_clip has no pretrained tag {pretrained!r} for {model_name} (known: {tags})")
    repo = (cfg.get("hf_hub") or "").strip("/")
    if not repo:
        raise VisionLoadError(
            f"{model_name}/{pretrained} is only published as a pickle file; pass a .safetensors export instead"
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, "open_clip_model.safetensors", local_files_only=not download))
    except Exception as e:
        if download:
            raise VisionLoadError(f"could not download {repo}/open_clip_model.safetensors: {e}") from e
        raise VisionLoadError(
            f"open_clip weights {model_name}/{pretrained} are not in the local Hugging Face cache, and vcap does "
            f"not download by default.\nDownload them once, e.g.\n"
            f"  hf download {repo} open_clip_model.safetensors --local-dir ./{repo.split('/')[-1]}\n"
            f"then pass pretrained='./{repo.split('/')[-1]}/open_clip_model.safetensors', or allow downloads "
            f"(--allow-downloads on the command line, allow_downloads=True in Python)."
        ) from None


class VisionEncoder(nn.Module):
    """open_clip image tower -> patch tokens (N, P, Dv), frozen."""

    def __init__(self, config: VisionConfig, freeze: bool = True, access: Access = OFFLINE) -> None:
        super().__init__()
        import open_clip
        from open_clip.modified_resnet import ModifiedResNet

        self.config = config
        model, self.weights_file = _create_model(config, access)  # weights_file: what was loaded, if any
        self.visual = model.visual
        preprocess = {k: v for k, v in tag_settings(config).items() if k != "quick_gelu"}  # as the weights were trained
        self.preprocess_cfg: dict[str, Any] = {**open_clip.get_model_preprocess_cfg(model), **preprocess}
        del model  # the text tower is not needed

        self.is_resnet = isinstance(self.visual, ModifiedResNet)
        if self.is_resnet and config.use_cls_token:
            raise ValueError(f"vision.use_cls_token: {config.model_name} is a ResNet, it has no class token")
        depth = len(RESNET_BLOCKS) if self.is_resnet else len(self.visual.transformer.resblocks)
        index = config.feature_layer if config.feature_layer > 0 else depth + config.feature_layer
        if not 0 <= index < depth:
            raise ValueError(f"vision.feature_layer={config.feature_layer} is outside a {depth}-block model")
        self.block_index = index
        if self.is_resnet:
            _prune_resnet(self.visual, index)
        else:
            self.visual.prune_intermediate_layers([index], prune_norm=True, prune_head=True)
        if freeze:
            self.requires_grad_(False)
            self.eval()

        size = self.preprocess_cfg.get("size", 224)
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        # pixels per token: a ViT's patch; a ResNet's stride (4 after the stem and stage 1, then x2 per stage)
        patch = (4 * 2 ** max(index - 1, 0),) * 2 if self.is_resnet else self.visual.patch_size
        self.grid = (self.image_size[0] // patch[0], self.image_size[1] // patch[1])
        self.register_buffer("mean", torch.tensor(self.preprocess_cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.preprocess_cfg["std"]).view(1, 3, 1, 1), persistent=False)

    @property
    def hidden_size(self) -> int:
        if self.is_resnet:  # channels of the chosen block's output: its last batch norm's
            if self.block_index == 0:
                return int(self.visual.bn3.num_features)  # the stem's third convolution
            return int(getattr(self.visual, RESNET_BLOCKS[self.block_index])[-1].bn3.num_features)
        return int(self.visual.transformer.width)

    @property
    def num_patches(self) -> int:
        """Tokens per image: the patch grid, plus one with the class token."""
        return self.grid[0] * self.grid[1] + int(self.config.use_cls_token)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def weights(self) -> dict[str, torch.Tensor]:
        """The (pruned) image tower's weights, for a captioner folder's vision.safetensors."""
        return {k: v.detach().cpu().contiguous() for k, v in self.visual.state_dict().items()}

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load weights written by :meth:`weights` (strict: every key, every shape)."""
        from qwen3_backbone.weights import load_state_strict, read_safetensors

        load_state_strict(self.visual, read_safetensors(path), path,
                          "vision weights saved for another vision model or feature_layer?")

    def train(self, mode: bool = True) -> VisionEncoder:
        # a frozen encoder stays in eval mode even inside a model put in training mode
        return super().train(mode and any(p.requires_grad for p in self.parameters()))

    def preprocess(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 frames (N, H, W, 3) -> normalised pixels (N, 3, S, S) in fp32, as open_clip does."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        x = torch.as_tensor(frames).to(self.device).permute(0, 3, 1, 2)  # (N, 3, H, W) uint8
        mode = InterpolationMode.BICUBIC if self.preprocess_cfg.get("interpolation", "bicubic") == "bicubic" \
            else InterpolationMode.BILINEAR
        target = self.image_size
        resize_mode = self.preprocess_cfg.get("resize_mode", "shortest")
        if resize_mode == "squash":
            x = TF.resize(x, list(target), interpolation=mode, antialias=True)
        else:  # "shortest": shorter side to the target, then a centre crop
            x = TF.resize(x, min(target), interpolation=mode, antialias=True)
            x = TF.center_crop(x, list(target))
        x = x.float() / 255.0
        return (x - self.mean) / self.std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (N, 3, S, S) -> patch tokens (N, P, Dv), from block ``feature_layer``."""
        dtype = next(self.visual.parameters()).dtype
        if self.is_resnet:
            out = self.visual.forward_intermediates(pixels.to(dtype), indices=[self.block_index], stop_early=True,
                                                    intermediates_only=True, output_fmt="NCHW")
            return out["image_intermediates"][0].flatten(2).transpose(1, 2)  # (N, Dv, h, w) -> (N, P=h*w, Dv)
        out = self.visual.forward_intermediates(
            pixels.to(dtype), indices=[self.block_index], stop_early=True, intermediates_only=True,
            output_fmt="NLC", output_extra_tokens=self.config.use_cls_token,
        )
        tokens = out["image_intermediates"][0]  # (N, P_grid, Dv)
        if self.config.use_cls_token:
            tokens = torch.cat([out["image_intermediates_prefix"][0], tokens], dim=1)  # (N, 1 + P_grid, Dv)
        return tokens

    def encode_frames(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 video frames (B, T, H, W, 3) -> patch tokens (B, T, P, Dv), one forward for the batch."""
        frames = torch.as_tensor(frames)
        B, T = frames.shape[:2]
        tokens = self(self.preprocess(frames.reshape(B * T, *frames.shape[2:])))  # (B*T, P, Dv)
        return tokens.reshape(B, T, *tokens.shape[1:])


RESNET_BLOCKS = ("stem", "layer1", "layer2", "layer3", "layer4")  # a ModifiedResNet's blocks, in order


def _prune_resnet(visual: nn.Module, index: int) -> None:
    """Drop a ModifiedResNet's stages after block ``index`` and its attention pool (never run)."""
    for name in RESNET_BLOCKS[index + 1:]:
        setattr(visual, name, nn.Identity())
    visual.attnpool = nn.Identity()


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _create_model(config: VisionConfig, access: Access) -> tuple[nn.Module, Path | None]:
    """open_clip's model for the config (the image tower real, the text tower a stub) with its
    pretrained weights loaded, and the weights file (None for random weights)."""
    import open_clip

    if config.model_name.startswith(HUB_SCHEMES):
        access.check_download(f"vision.model_name {config.model_name!r}",
                              "Use one of open_clip's built-in model names (open_clip.list_models()) with "
                              "pretrained= a local .safetensors file,")
    elif config.model_name not in open_clip.list_models():
        raise VisionLoadError(f"vision.model_name {config.model_name!r} is not an open_clip model "
                              f"(see open_clip.list_models(), e.g. ViT-B-32, ViT-L-14, RN50)")
    weights = resolve_pretrained(config.model_name, config.pretrained, access.allow_downloads) if config.pretrained else None
    quick_gelu = bool(tag_settings(config).get("quick_gelu"))
    quiet = _DropMessage("No pretrained weights loaded")  # random weights here are deliberate
    logging.getLogger().addFilter(quiet)
    try:
        with torch.random.fork_rng(devices=[]):  # reproducible random weights; the caller's RNG untouched
            torch.manual_seed(config.seed)
            model = open_clip.create_model(config.model_name, pretrained=None, load_weights=False,
                                           pretrained_image=False, pretrained_text=False,
                                           force_quick_gelu=quick_gelu, **_model_overrides(config))
    except RuntimeError as e:
        raise VisionLoadError(f"open_clip cannot build {config.model_name!r}: {e}") from None
    finally:
        logging.getLogger().removeFilter(quiet)
    if weights is not None:
        _load_safetensors(model, weights)
    return model, weights


def settings_tag(config: VisionConfig) -> str | None:
    """The open_clip tag whose settings the tower takes: ``pretrained`` when it is a tag, else ``tag``."""
    if config.pretrained and not Path(config.pretrained).suffix and os.sep not in config.pretrained:
        return config.pretrained
    return config.tag


def tag_settings(config: VisionConfig) -> dict[str, Any]:
    """QuickGELU and preprocessing (mean, std, interpolation, resize_mode) as the weights were trained:
    from the tag's open_clip pretrained config, ``quick_gelu`` overriding. Refuses local weights that
    do not say which they need (see the module docstring)."""
    import open_clip

    tag = settings_tag(config)
    if tag is not None and config.model_name.startswith(HUB_SCHEMES):
        return {}
    if tag is not None and not open_clip.get_pretrained_cfg(config.model_name, tag):
        raise VisionLoadError(f"vision.tag: open_clip has no tag {tag!r} for {config.model_name} "
                              f"(known: {', '.join(open_clip.list_pretrained_tags_by_model(config.model_name))})")
    settings = {k: v for k, v in (open_clip.get_pretrained_cfg(config.model_name, tag) if tag else {}).items()
                if k in ("quick_gelu", "mean", "std", "interpolation", "resize_mode")}
    if config.quick_gelu is not None:
        settings["quick_gelu"] = config.quick_gelu
    elif tag is None and config.pretrained:  # local weights that do not say
        tags = open_clip.list_pretrained_tags_by_model(config.model_name)
        kinds = {bool(open_clip.get_pretrained_cfg(config.model_name, t).get("quick_gelu")) for t in tags}
        if len(kinds) > 1:
            quick = [t for t in tags if open_clip.get_pretrained_cfg(config.model_name, t).get("quick_gelu")]
            raise VisionLoadError(
                f"vision.pretrained {config.pretrained!r}: {config.model_name} weights differ in their activation "
                f"(QuickGELU for {', '.join(quick[:3])}, ...; GELU for others). Say which tag the file was "
                f"published as (vision.tag: openai) or set vision.quick_gelu: true|false")
    return settings


def _model_overrides(config: VisionConfig) -> dict[str, Any]:
    """The keyword arguments passed to open_clip's model: the allowed overrides merged into the
    built-in config's sections, and a stub text tower (only the image tower is used)."""
    import open_clip

    overrides = dict(config.model_overrides or {})
    overrides.pop("text_cfg", None)
    base = {} if config.model_name.startswith(HUB_SCHEMES) else open_clip.get_model_config(config.model_name) or {}
    kwargs = {key: {**base.get(key, {}), **value} if isinstance(value, dict) else value
              for key, value in overrides.items()}
    return {**kwargs, "text_cfg": dict(TEXT_STUB)}


def _load_safetensors(model: nn.Module, path: Path) -> None:
    from qwen3_backbone.weights import load_state_strict, read_safetensors

    state = read_safetensors(path)
    if any(k.startswith("visual.") for k in state):  # a whole CLIP checkpoint: keep the image tower
        state = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    load_state_strict(model.visual, state, path, "weights for another open_clip model?")
