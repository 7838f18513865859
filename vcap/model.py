"""The video captioner: vision encoder + projector + Qwen3, composed (no subclassing, no patches).

Data flow (B videos, T frames, P patches per frame, Dv vision width, N video tokens, S prompt
length, D language-model width):

    frames (B, T, H, W, 3) uint8 --vision (frozen)--> (B, T, P, Dv) --projector--> (B, N, D)
    prompt ids (B, S) with N <|video_pad|> per row --embed_tokens--> (B, S, D)
    video embeddings placed at the <|video_pad|> positions (masked_scatter, count checked)
    --> qwen3_backbone generate (KV cache) --> ids --> (thinking, caption)

``load_captioner`` builds one from a captioner folder or a :class:`CaptionerConfig`;
``save_captioner`` writes a folder; ``VideoCaptioner.caption`` is the API every entry point uses.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from projector import build_projector, load_projector, projector_config_from_dict, save_projector
from qwen3_backbone import Qwen3Config, Qwen3ForCausalLM, load_pretrained, save_pretrained
from qwen3_backbone.chat import ThinkingSplitter, split_ids, thinking_budget, tokenize, video_message
from qwen3_backbone.generate import SAMPLING_PRESETS, SamplingConfig, generate
from qwen3_backbone.tokenizer import SPECIAL_TOKENS, Qwen3Tokenizer

from .config import LANGS, CaptionerConfig, ConfigError, config_from_dict, config_to_dict, read_config_file
from .errors import CaptionerError
from .outputs import OutputError, write_bytes, write_json
from .security import OFFLINE, Access, inside
from .video import Frames, read_frames
from .vision import VisionEncoder

VIDEO_PAD_ID = SPECIAL_TOKENS["<|video_pad|>"][0]
CONFIG_FILE = "captioner.json"

VideoInput = str | os.PathLike | Frames | np.ndarray | torch.Tensor


@dataclass
class CaptionResult:
    caption: str
    thinking: str
    lang: str
    prompt: str
    path: str | None
    num_frames: int
    timestamps: list[float]
    duration: float
    num_tokens: int  # generated tokens
    timings: dict[str, float] = field(default_factory=dict)  # seconds: read, encode, generate


@dataclass
class CaptionEvent:
    """One step of a streamed caption: new text for the thinking or the caption part."""

    kind: str  # "thinking" | "caption"
    text: str


class VideoCaptioner(nn.Module):
    def __init__(
        self,
        vision: VisionEncoder,
        projector: nn.Module,
        language_model: nn.Module,
        tokenizer: Qwen3Tokenizer,
        config: CaptionerConfig,
    ) -> None:
        super().__init__()
        self.vision = vision
        self.projector = projector
        self.language_model = language_model
        self.tokenizer = tokenizer
        self.config = config
        self.sources: tuple[Path, ...] = ()  # every file it was built from (set by build_captioner)

    # -- pieces ---------------------------------------------------------------------------------
    @property
    def lm(self) -> Qwen3ForCausalLM:
        """The backbone (under a peft wrapper, if any)."""
        model = self.language_model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    @property
    def device(self) -> torch.device:
        return self.lm.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.dtype

    def num_video_tokens(self, num_frames: int) -> int:
        return self.projector.num_output_tokens(num_frames, self.vision.num_patches)

    @torch.no_grad()
    def encode_frames(self, videos: Sequence[torch.Tensor | np.ndarray]) -> list[torch.Tensor]:
        """uint8 frames per video [(T_i, H_i, W_i, 3)] -> vision features [(T_i, P, Dv)], one forward."""
        pixels = [self.vision.preprocess(v) for v in videos]  # [(T_i, 3, S, S)]
        feats = self.vision(torch.cat(pixels))  # (sum T_i, P, Dv)
        return list(feats.split([p.shape[0] for p in pixels]))

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """Vision features (B, T, P, Dv) -> video embeddings (B, N, D) in the language model's dtype."""
        weight = next(self.projector.parameters())
        return self.projector(feats.to(weight.dtype)).to(self.dtype)

    def splice(self, input_ids: torch.Tensor, video_embeds: Sequence[torch.Tensor]) -> torch.Tensor:
        """Token embeddings (B, S, D) with row b's <|video_pad|> positions replaced by video_embeds[b] (N_b, D)."""
        embeds = self.lm.model.embed_tokens(input_ids)  # (B, S, D)
        is_pad = input_ids == VIDEO_PAD_ID  # (B, S)
        counts = is_pad.sum(dim=-1).tolist()
        for row, (count, video) in enumerate(zip(counts, video_embeds)):
            if count != video.shape[0]:
                raise ValueError(
                    f"row {row}: the prompt holds {count} <|video_pad|> tokens but the video has "
                    f"{video.shape[0]} embeddings"
                )
        flat = torch.cat(list(video_embeds)).to(embeds.dtype)  # (sum N_b, D), row-major like the mask
        return embeds.masked_scatter(is_pad[..., None], flat)

    def prompt_ids(self, num_video_tokens: int, instruction: str, thinking: bool) -> list[int]:
        messages = []
        if self.config.system_prompt:
            messages.append({"role": "system", "content": self.config.system_prompt})
        messages.append(video_message(num_video_tokens, instruction))
        ids, _ = tokenize(self.tokenizer, messages, add_generation_prompt=True, enable_thinking=thinking)
        return ids

    def instruction(self, prompt: str | None, lang: str) -> str:
        if lang not in LANGS:
            raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
        return prompt if prompt else self.config.instructions[lang]

    def read(self, video: VideoInput, frames: Any = None) -> Frames:
        """A path, already-read Frames, or a uint8 array (T, H, W, 3) -> Frames."""
        if isinstance(video, Frames):
            return video
        if isinstance(video, (np.ndarray, torch.Tensor)):
            array = np.asarray(video)
            if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
                raise ValueError(f"frames must be uint8 (T, H, W, 3), got {array.dtype} {array.shape}")
            from .video import VideoInfo

            info = VideoInfo(array.shape[0], 1.0, array.shape[2], array.shape[1])
            return Frames(array, list(range(len(array))), [float(i) for i in range(len(array))], info, "array")
        cfg = frames or self.config.frames
        return read_frames(video, num_frames=cfg.num_frames, strategy=cfg.strategy, fps=cfg.fps,
                           max_frames=cfg.max_frames, size=cfg.size, backend=cfg.backend)

    # -- captioning ---------------------------------------------------------------------------------
    def prepare(
        self, clips: Sequence[Frames], prompt: str | None, lang: str, thinking: bool,
        features: Sequence[torch.Tensor | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
        """Left-padded prompt ids (B, S), attention mask (B, S) and spliced embeddings (B, S, D).

        ``features[i]``, when given, are clip i's vision features (T, P, Dv) from the feature
        cache; the other clips are encoded here."""
        instruction = self.instruction(prompt, lang)
        features = list(features) if features is not None else [None] * len(clips)
        todo = [i for i, f in enumerate(features) if f is None]
        if todo:
            for i, f in zip(todo, self.encode_frames([clips[i].frames for i in todo])):
                features[i] = f
        feats = [f.to(self.device) for f in features]  # [(T_i, P, Dv)]
        videos = [self.project(f[None])[0] for f in feats]  # [(N_i, D)]
        rows = [self.prompt_ids(v.shape[0], instruction, thinking) for v in videos]
        S = max(len(r) for r in rows)
        ids = torch.full((len(rows), S), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), S, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, S - len(r):] = torch.tensor(r)
            mask[i, S - len(r):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.no_grad():
            embeds = self.splice(ids, videos)
        return ids, mask, embeds, instruction

    def caption(
        self,
        videos: VideoInput | Sequence[VideoInput],
        prompt: str | None = None,
        lang: str = "ko",
        thinking: bool = False,
        thinking_budget_tokens: int | None = None,
        max_new_tokens: int | None = None,
        sampling: str | SamplingConfig | None = None,
        seed: int | None = None,
        batch_size: int = 8,
        **sampling_overrides: Any,
    ) -> list[CaptionResult]:
        """Caption one or more videos (paths, Frames or uint8 arrays). Greedy unless ``sampling``
        names a preset ("thinking", "non-thinking") or a SamplingConfig, or overrides ask to sample.
        Returns one CaptionResult per video, in order."""
        if isinstance(videos, (str, os.PathLike, Frames, np.ndarray, torch.Tensor)):
            videos = [videos]
        results: list[CaptionResult] = []
        for start in range(0, len(videos), batch_size):
            chunk = list(videos[start : start + batch_size])
            t0 = time.perf_counter()
            clips = [self.read(v) for v in chunk]
            t1 = time.perf_counter()
            results += self.caption_frames(clips, chunk, prompt, lang, thinking, thinking_budget_tokens,
                                           max_new_tokens, sampling, seed, read_seconds=(t1 - t0) / len(chunk),
                                           **sampling_overrides)
        return results

    def caption_frames(
        self,
        clips: Sequence[Frames],
        sources: Sequence[VideoInput] | None = None,
        prompt: str | None = None,
        lang: str = "ko",
        thinking: bool = False,
        thinking_budget_tokens: int | None = None,
        max_new_tokens: int | None = None,
        sampling: str | SamplingConfig | None = None,
        seed: int | None = None,
        read_seconds: float = 0.0,
        features: Sequence[torch.Tensor | None] | None = None,
        **sampling_overrides: Any,
    ) -> list[CaptionResult]:
        """Caption already-read clips as one batch (what ``caption`` and ``vcap caption`` call);
        ``features`` optionally holds cached vision features per clip (see ``prepare``)."""
        t0 = time.perf_counter()
        ids, mask, embeds, instruction = self.prepare(clips, prompt, lang, thinking, features)
        t1 = time.perf_counter()
        out = self._generate(ids, mask, embeds, thinking, thinking_budget_tokens, max_new_tokens, sampling, seed,
                             stream=False, **sampling_overrides)
        t2 = time.perf_counter()
        results = []
        for i, clip in enumerate(clips):
            tokens = [t for t in out[i].tolist() if t != self.tokenizer.pad_id]
            thought, answer = split_ids(self.tokenizer, tokens, thinking)  # the same rule as caption_stream
            source = sources[i] if sources is not None else None
            results.append(CaptionResult(
                caption=answer, thinking=thought, lang=lang, prompt=instruction,
                path=str(source) if isinstance(source, (str, os.PathLike)) else (clip.path or None),
                num_frames=len(clip), timestamps=list(clip.timestamps), duration=clip.duration,
                num_tokens=len(tokens),
                timings={"read": read_seconds, "encode": (t1 - t0) / len(clips), "generate": t2 - t1},
            ))
        return results

    def caption_stream(
        self,
        video: VideoInput,
        prompt: str | None = None,
        lang: str = "ko",
        thinking: bool = False,
        thinking_budget_tokens: int | None = None,
        max_new_tokens: int | None = None,
        sampling: str | SamplingConfig | None = None,
        seed: int | None = None,
        **sampling_overrides: Any,
    ) -> Iterator[CaptionEvent]:
        """Caption one video, yielding the text as it is generated (thinking first, if on)."""
        clip = self.read(video)
        ids, mask, embeds, _ = self.prepare([clip], prompt, lang, thinking)
        steps = self._generate(ids, mask, embeds, thinking, thinking_budget_tokens, max_new_tokens, sampling, seed,
                               stream=True, **sampling_overrides)
        splitter = ThinkingSplitter(self.tokenizer, thinking)  # the same rule as caption()
        for step in steps:
            for kind, text in splitter.push(int(step[0])):
                yield CaptionEvent("thinking" if kind == "thinking" else "caption", text)
            if splitter.done:
                break
        for kind, text in splitter.finish():
            yield CaptionEvent("thinking" if kind == "thinking" else "caption", text)

    def _generate(self, ids, mask, embeds, thinking, thinking_budget_tokens, max_new_tokens, sampling, seed, stream,
                  **sampling_overrides):
        """The one call into qwen3_backbone.generate that every captioning path makes."""
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        budget = None
        if thinking and thinking_budget_tokens is not None:
            budget = thinking_budget(self.tokenizer, thinking_budget_tokens)
        return generate(
            self.lm, ids, mask, inputs_embeds=embeds,
            max_new_tokens=max_new_tokens or self.config.max_new_tokens,
            sampling=_sampling(sampling), seed=seed, stop_token_ids=(self.tokenizer.eos_id, self.tokenizer.pad_id),
            pad_token_id=self.tokenizer.pad_id, thinking_budget=budget, stream=stream, **sampling_overrides,
        )

    # -- training ---------------------------------------------------------------------------------
    def forward(
        self,
        video_features: Sequence[torch.Tensor],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        """Mean cross-entropy over the target tokens.

        video_features: per sample (T_i, P, Dv) frozen vision features (all None: text-only).
        input_ids, attention_mask, labels (B, S): right- or left-padded; labels hold the next
            token to predict at each position, -100 where there is no target.
        """
        if all(f is None for f in video_features):  # text-only samples
            embeds = self.lm.model.embed_tokens(input_ids)
        else:
            weight = next(self.projector.parameters())
            videos = [self.projector(f[None].to(weight.dtype))[0].to(self.dtype) for f in video_features]
            embeds = self.splice(input_ids, videos)
        hidden = self.lm.model(inputs_embeds=embeds, attention_mask=attention_mask)  # (B, S, D)
        target = labels != -100  # (B, S)
        logits = self.lm.lm_head(hidden[target])  # (M, V): only where there is a target
        return F.cross_entropy(logits.float(), labels[target])


def _sampling(sampling: str | SamplingConfig | None) -> SamplingConfig | None:
    if isinstance(sampling, str):
        if sampling not in SAMPLING_PRESETS:
            raise ValueError(f"unknown sampling preset {sampling!r}; known: {', '.join(SAMPLING_PRESETS)}")
        return SAMPLING_PRESETS[sampling]
    return sampling


# -- building, loading, saving ------------------------------------------------------------------------

def _model_files(model_dir: Path) -> list[Path]:
    """The files a Hugging Face model folder is loaded from (config and safetensors)."""
    return sorted(p for p in model_dir.iterdir() if p.name == "config.json" or p.name.endswith(".safetensors")
                  or p.name == "model.safetensors.index.json")


def build_language_model(spec: str, base: Path | None = None, dtype: torch.dtype = torch.float32,
                         device: str | torch.device = "cpu", access: Access = OFFLINE,
                         files: list[Path] | None = None) -> Qwen3ForCausalLM:
    """``preset:NAME`` (random weights), a model folder, a hub id (from the local cache; fetched
    only when ``access`` allows downloads), or a training run of the full stage (its newest
    checkpoint's language model). Loading is strict, safetensors only. With ``base`` (a captioner
    folder) a path must lie inside it (see vcap.security). The files read are added to ``files``."""
    from qwen3_backbone.weights import is_hub_id, resolve_hub_id, resolve_model_dir

    if spec.startswith("preset:"):
        model = Qwen3ForCausalLM(Qwen3Config.from_name(spec.split(":", 1)[1]))
        return model.to(device=device, dtype=dtype).eval()
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
    model = load_pretrained(model_dir, dtype=dtype, device=device)
    if files is not None:
        files += _model_files(model_dir)
    return model


def build_captioner(
    config: CaptionerConfig,
    base: Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    vision_dtype: torch.dtype | str | None = None,
    access: Access = OFFLINE,
) -> VideoCaptioner:
    """Construct every part a config names. With ``base`` (a captioner folder) relative paths
    resolve inside it and may not leave it unless ``access`` allows; without, they are the
    caller's own paths (relative to the working folder). ``captioner.sources`` lists every file read."""
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    vision_dtype = getattr(torch, vision_dtype) if isinstance(vision_dtype, str) else (vision_dtype or dtype)
    files: list[Path] = [base / CONFIG_FILE] if base is not None else []

    def local(p: str | None, key: str) -> Path | None:
        if p is None:
            return None
        if base is not None:
            return inside(base, p, key, access)
        return Path(p).expanduser()

    vision_config = config.vision
    if base is not None and vision_config.pretrained and Path(vision_config.pretrained).suffix:  # a file, not a tag
        vision_config = replace(vision_config, pretrained=str(local(vision_config.pretrained, "vision.pretrained")))
    vision = VisionEncoder(vision_config, access=access)
    if vision.weights_file is not None:
        files.append(vision.weights_file)
    if config.vision_weights:
        files.append(local(config.vision_weights, "vision_weights"))
        vision.load_weights(files[-1])
    vision.to(device=device, dtype=vision_dtype)

    backbone = build_language_model(config.language_model, base, dtype=dtype, device=device, access=access,
                                    files=files)
    language_model: nn.Module = backbone
    if config.adapter:
        from .adapter import CONFIG_FILE as ADAPTER_CONFIG, WEIGHTS_FILE as ADAPTER_WEIGHTS, load_adapter

        adapter_dir = local(config.adapter, "adapter")
        language_model = load_adapter(backbone, adapter_dir)
        files += [adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS]
    if base is not None and (base / "projector" / "projector.json").exists():
        projector = load_projector(base / "projector")
        files += [base / "projector" / "projector.json", base / "projector" / "projector.safetensors"]
    else:
        options = dict(config.projector)
        options.setdefault("vision_hidden_size", vision.hidden_size)
        options.setdefault("text_hidden_size", backbone.config.hidden_size)
        try:
            projector = build_projector(projector_config_from_dict(options, "projector"))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    projector.to(device=device, dtype=dtype).eval()

    tokenizer_source = local(config.tokenizer, "tokenizer") or _tokenizer_beside(files)
    tokenizer = Qwen3Tokenizer.load(tokenizer_source)  # None: the embedded default
    if tokenizer_source is not None:
        files.append(Path(tokenizer_source))
    captioner = VideoCaptioner(vision, projector, language_model, tokenizer, config).eval()
    captioner.sources = tuple(dict.fromkeys(Path(f).resolve() for f in files))
    return captioner


def _tokenizer_beside(files: list[Path]) -> Path | None:
    """The language model folder's own tokenizer.json (beside its config.json), if it has one."""
    for f in files:
        if f.name == "config.json" and (f.parent / "tokenizer.json").exists():
            return f.parent / "tokenizer.json"
    return None


def load_captioner(
    path_or_config: str | os.PathLike | CaptionerConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    vision_dtype: torch.dtype | str | None = None,
    *,
    allow_downloads: bool = False,
    allow_external_paths: bool = False,
) -> VideoCaptioner:
    """A captioner from a folder written by ``save_captioner`` (or ``vcap export``), or a config.

    Safe by default (see vcap.security): offline, safetensors only, and every file the folder's
    captioner.json names must lie inside the folder. ``allow_downloads`` lets missing hub weights
    be fetched; ``allow_external_paths`` lets the folder name files elsewhere."""
    access = Access(allow_downloads=allow_downloads, allow_external_paths=allow_external_paths)
    if isinstance(path_or_config, CaptionerConfig):
        return build_captioner(path_or_config, None, device, dtype, vision_dtype, access)
    folder = Path(path_or_config)
    if not (folder / CONFIG_FILE).is_file():
        raise CaptionerError(
            f"{folder} is not a captioner folder (no {CONFIG_FILE}); create one with `vcap export` or save_captioner"
        )
    where = str(folder / CONFIG_FILE)
    config = config_from_dict(CaptionerConfig, read_config_file(folder / CONFIG_FILE), where=where)
    return build_captioner(config, folder, device, dtype, vision_dtype, access)


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
    captioner.tokenizer.save(out / "tokenizer.json")
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
    pretrained = captioner.config.vision.pretrained
    from_file = bool(pretrained) and Path(pretrained).suffix != ""
    if not pretrained or from_file or captioner.config.vision_weights:  # anything but a published tag alone
        from safetensors.torch import save

        write_bytes(out / "vision.safetensors", save(captioner.vision.weights(), metadata={"format": "pt"}))
        config["vision_weights"] = "vision.safetensors"
        if from_file:
            config["vision"]["pretrained"] = None
    write_json(out / CONFIG_FILE, config)
    return out
