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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from projector import build_projector, load_projector, projector_config_from_dict, save_projector
from qwen3_backbone import Qwen3Config, Qwen3ForCausalLM, load_pretrained, save_pretrained
from qwen3_backbone.chat import split_thinking, thinking_budget, tokenize, video_message
from qwen3_backbone.generate import SAMPLING_PRESETS, SamplingConfig, generate
from qwen3_backbone.tokenizer import SPECIAL_TOKENS, Qwen3Tokenizer

from .config import LANGS, CaptionerConfig, config_from_dict, config_to_dict, read_config_file, write_json
from .video import Frames, read_frames
from .vision import VisionEncoder

VIDEO_PAD_ID = SPECIAL_TOKENS["<|video_pad|>"][0]
THINK_ID, END_THINK_ID = SPECIAL_TOKENS["<think>"][0], SPECIAL_TOKENS["</think>"][0]
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
            thought, answer = split_thinking(self.tokenizer.decode(tokens))
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
        decoder = self.tokenizer.stream_decoder()
        kind = "thinking" if thinking else "caption"
        pending_strip = True  # drop the blank lines around the think block, as split_thinking does
        for step in steps:
            token = int(step[0])
            if token in (self.tokenizer.eos_id, self.tokenizer.pad_id):
                break
            if token == THINK_ID:
                kind, pending_strip = "thinking", True
                continue
            if token == END_THINK_ID:
                tail = decoder.flush()
                if tail.strip():
                    yield CaptionEvent(kind, tail.rstrip())
                decoder = self.tokenizer.stream_decoder()
                kind, pending_strip = "caption", True
                continue
            text = decoder.push(token)
            if pending_strip:
                text = text.lstrip()
                pending_strip = not text
            if text:
                yield CaptionEvent(kind, text)
        tail = decoder.flush()
        if tail.strip():
            yield CaptionEvent(kind, tail.rstrip())

    def _generate(self, ids, mask, embeds, thinking, thinking_budget_tokens, max_new_tokens, sampling, seed, stream,
                  **sampling_overrides):
        """The one call into qwen3_backbone.generate that every captioning path makes."""
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

def build_language_model(spec: str, base: Path | None = None, dtype: torch.dtype = torch.float32,
                         device: str | torch.device = "cpu") -> Qwen3ForCausalLM:
    """``preset:NAME`` (random weights), a model folder, a cached hub id, or a training run of the
    full stage (its newest checkpoint's language model). Loading is strict, safetensors only."""
    if spec.startswith("preset:"):
        model = Qwen3ForCausalLM(Qwen3Config.from_name(spec.split(":", 1)[1]))
        return model.to(device=device, dtype=dtype).eval()
    path = Path(spec)
    if base is not None and not path.is_absolute() and (base / path).exists():
        path = base / path
    if path.is_dir() and not (path / "config.json").exists():
        from .checkpoint import latest_checkpoint

        checkpoint = latest_checkpoint(path)
        if checkpoint is not None and (checkpoint / "language_model").exists():
            path = checkpoint / "language_model"
    return load_pretrained(path if path.exists() else spec, dtype=dtype, device=device)


def build_captioner(
    config: CaptionerConfig,
    base: Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    vision_dtype: torch.dtype | str | None = None,
) -> VideoCaptioner:
    """Construct every part a config names; relative paths resolve against ``base``."""
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    vision_dtype = getattr(torch, vision_dtype) if isinstance(vision_dtype, str) else (vision_dtype or dtype)

    def local(p: str | None) -> Path | None:
        if p is None:
            return None
        path = Path(p).expanduser()
        return base / path if base is not None and not path.is_absolute() else path

    vision = VisionEncoder(config.vision)
    if config.vision_weights:
        vision.load_weights(local(config.vision_weights))
    vision.to(device=device, dtype=vision_dtype)

    backbone = build_language_model(config.language_model, base, dtype=dtype, device=device)
    language_model: nn.Module = backbone
    if config.adapter:
        from peft import PeftModel

        language_model = PeftModel.from_pretrained(backbone, str(local(config.adapter)), is_trainable=False)
    if base is not None and (base / "projector" / "projector.json").exists():
        projector = load_projector(base / "projector")
    else:
        options = dict(config.projector)
        options.setdefault("vision_hidden_size", vision.hidden_size)
        options.setdefault("text_hidden_size", backbone.config.hidden_size)
        projector = build_projector(projector_config_from_dict(options, "projector"))
    projector.to(device=device, dtype=dtype).eval()

    tokenizer_source = local(config.tokenizer)
    if tokenizer_source is None:
        lm_dir = local(config.language_model) if not config.language_model.startswith("preset:") else None
        if lm_dir is not None and (lm_dir / "tokenizer.json").exists():
            tokenizer_source = lm_dir / "tokenizer.json"
    tokenizer = Qwen3Tokenizer.load(tokenizer_source)
    return VideoCaptioner(vision, projector, language_model, tokenizer, config).eval()


def load_captioner(
    path_or_config: str | os.PathLike | CaptionerConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    vision_dtype: torch.dtype | str | None = None,
) -> VideoCaptioner:
    """A captioner from a folder written by ``save_captioner`` (or ``vcap export``), or a config."""
    if isinstance(path_or_config, CaptionerConfig):
        return build_captioner(path_or_config, None, device, dtype, vision_dtype)
    folder = Path(path_or_config)
    if not (folder / CONFIG_FILE).exists():
        raise FileNotFoundError(
            f"{folder} is not a captioner folder (no {CONFIG_FILE}); create one with `vcap export` or save_captioner"
        )
    config = config_from_dict(CaptionerConfig, read_config_file(folder / CONFIG_FILE), where=str(folder / CONFIG_FILE))
    return build_captioner(config, folder, device, dtype, vision_dtype)


def save_captioner(captioner: VideoCaptioner, out_dir: str | os.PathLike, save_language_model: bool = True) -> Path:
    """Write a self-contained captioner folder: config, projector, tokenizer, the language model in
    Hugging Face format (or, with ``save_language_model=False``, a reference plus the adapter),
    and the image-tower weights when they are not a published open_clip tag."""
    out = Path(out_dir)
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
    if not captioner.config.vision.pretrained:
        from safetensors.torch import save_file

        save_file(captioner.vision.weights(), str(out / "vision.safetensors"), metadata={"format": "pt"})
        config["vision_weights"] = "vision.safetensors"
    write_json(out / CONFIG_FILE, config)
    return out
