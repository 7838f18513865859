"""The video captioner: vision encoder + projector + Qwen3, composed (no subclassing, no patches).

Notation: B videos, T frames, P patches per frame, Dv vision width, N video tokens, S prompt
length, D language-model width.

    frames (B, T, H, W, 3) uint8 --vision (frozen)--> (B, T, P, Dv) --projector--> (B, N, D)
    prompt ids (B, S) with N <|video_pad|> per row --embed_tokens--> (B, S, D)   [the processor]
    video embeddings placed at the <|video_pad|> positions (masked_scatter, count checked)
    --> qwen3_backbone generate (KV cache) --> ids --> (thinking, caption)       [the processor]

The model encodes, projects, splices, computes the training loss and generates; the
:class:`~vcap.processor.VideoProcessor` beside it reads videos, builds prompts and splits the
output; ``vcap/builder.py`` builds, loads and saves captioners. ``caption`` is the API every entry
point uses, with one :class:`~vcap.generation.GenerationOptions` value.

Names: ``language_model`` is the language model as trained and saved (wrapped by peft when an
adapter is on it); ``backbone`` is the ``Qwen3ForCausalLM`` inside it.
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
from torch import nn

from qwen3_backbone import Qwen3ForCausalLM
from qwen3_backbone.chat import thinking_budget
from qwen3_backbone.generate import generate
from qwen3_backbone.tokenizer import Qwen3Tokenizer

from .config import CaptionerConfig
from .events import parse_events
from .generation import GenerationOptions
from .loss import linear_cross_entropy
from .processor import VIDEO_PAD_ID, VideoInput, VideoLayout, VideoProcessor, frames_within, group_times
from .video import Frames
from .vision import VisionEncoder
from .windows import VideoKeys, WindowedDecoding


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
    timings: dict[str, float] = field(default_factory=dict)  # seconds for this clip: read, encode, generate
    sampling: dict[str, Any] = field(default_factory=dict)  # how the frames were chosen (Frames.plan)
    time_source: str = "decoder"  # "frame index" when raw frames came without times (see Frames)
    events: list[dict[str, Any]] | None = None  # with options.dense: the caption read as timed events
    unreadable_lines: list[str] | None = None  # with options.dense: caption lines that are not events


@dataclass
class CaptionEvent:
    """One step of a streamed caption: new text for the thinking or the caption part."""

    kind: str  # "thinking" | "caption"
    text: str


def _events(caption: str) -> dict[str, Any]:
    """A dense caption's events and the lines that are not events (vcap.events.parse_events)."""
    parsed = parse_events(caption)
    return {"events": parsed.events, "unreadable_lines": [text for _, text in parsed.unreadable]}


class VideoCaptioner(nn.Module):
    def __init__(
        self,
        vision: VisionEncoder,
        projector: nn.Module,
        language_model: nn.Module,
        processor: VideoProcessor,
        config: CaptionerConfig,
    ) -> None:
        super().__init__()
        self.vision = vision
        self.projector = projector
        self.language_model = language_model
        self.processor = processor
        self.config = config
        self.sources: tuple[Path, ...] = ()  # every file it was built from (set by vcap.builder)

    # -- pieces ---------------------------------------------------------------------------------
    @property
    def backbone(self) -> Qwen3ForCausalLM:
        """The Qwen3 model (inside the peft wrapper, if any)."""
        model = self.language_model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    @property
    def tokenizer(self) -> Qwen3Tokenizer:
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.dtype

    def read(self, video: VideoInput, frames: Any = None, window: tuple[float, float] | None = None) -> Frames:
        """A path, Frames or uint8 array -> Frames (see VideoProcessor.read), within the token budget."""
        return self.processor.read(video, frames, window, self.frame_limit(frames))

    def frame_limit(self, frames: Any = None) -> int | None:
        """The most frames whose visual tokens fit ``frames.token_budget`` (None: no budget); at
        least one frame."""
        return frames_within((frames or self.config.frames).token_budget, self.num_video_tokens)

    def num_video_tokens(self, num_frames: int) -> int:
        return self.projector.num_output_tokens(num_frames, self.vision.num_patches)

    def video_layout(self, timestamps: Sequence[float], end: float | None = None) -> VideoLayout:
        """Where a video of frames sampled at ``timestamps`` (seconds) from a span that stops at
        ``end`` goes in the prompt: its tokens, with ``frames.timestamps: text`` its temporal groups,
        each labelled with its time, and with ``frames.end_label`` the end's label after them."""
        T = len(timestamps)
        frames = self.config.frames
        times = list(timestamps) if frames.timestamps == "text" else None
        if frames.end_label and end is None:
            raise ValueError("frames.end_label: where the frames' span ends is needed")
        return VideoLayout.of(self.num_video_tokens(T), self.projector.temporal_groups(T), times,
                              end if frames.end_label else None)

    def group_times(self, timestamps: Sequence[float]) -> list[float]:
        """The time of each temporal group of a video sampled at ``timestamps``: its frames' mean."""
        return group_times(self.projector.temporal_groups(len(timestamps)), timestamps)

    @torch.no_grad()
    def encode(self, videos: Sequence[torch.Tensor | np.ndarray]) -> list[torch.Tensor]:
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
        embeds = self.backbone.model.embed_tokens(input_ids)  # (B, S, D)
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

    def prepare(self, clips: Sequence[Frames], options: GenerationOptions,
                features: Sequence[torch.Tensor | None] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
        """Left-padded prompt ids (B, S), attention mask (B, S), spliced embeddings (B, S, D) and the
        instruction. ``features[i]``, when given, are clip i's vision features (T, P, Dv) from the
        feature cache; the other clips are encoded here."""
        instruction = self.processor.instruction(options.prompt, options.lang, options.dense)
        features = list(features) if features is not None else [None] * len(clips)
        todo = [i for i, f in enumerate(features) if f is None]
        for i, f in zip(todo, self.encode([clips[i].frames for i in todo]) if todo else []):
            features[i] = f
        videos = [self.project(f.to(self.device)[None])[0] for f in features]  # [(N_i, D)]
        ids, mask = self.processor.prompts([self.video_layout(c.timestamps, c.end) for c in clips], instruction,
                                           options.thinking)
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.no_grad():
            embeds = self.splice(ids, videos)
        return ids, mask, embeds, instruction

    def generate(self, ids: torch.Tensor, mask: torch.Tensor, embeds: torch.Tensor, options: GenerationOptions,
                 stream: bool = False, timestamps: Sequence[Sequence[float]] | None = None,
                 ) -> torch.Tensor | Iterator[torch.Tensor]:
        """The one call into qwen3_backbone.generate that every captioning path makes: new ids
        (B, n), or with ``stream`` an iterator of (B,) steps. ``timestamps``: each row's frame
        times, which ``event_windows`` needs."""
        visible = None
        if self.config.event_windows:
            if timestamps is None:
                raise ValueError("a captioner with event_windows needs each row's frame timestamps to generate")
            keys = [VideoKeys.of(row, self.group_times(times)) for row, times in zip(ids.cpu().numpy(), timestamps)]
            visible = WindowedDecoding(self.tokenizer, keys, ids.shape[1])
        budget = None
        if options.thinking and options.thinking_budget is not None:
            budget = thinking_budget(self.tokenizer, options.thinking_budget)
        return generate(
            self.backbone, ids, mask, inputs_embeds=embeds,
            max_new_tokens=options.max_new_tokens or self.config.max_new_tokens,
            sampling=options.sampling_config(), seed=options.seed,
            stop_token_ids=(self.tokenizer.eos_id, self.tokenizer.pad_id),
            pad_token_id=self.tokenizer.pad_id, thinking_budget=budget, stream=stream, visible=visible,
        )

    # -- captioning ---------------------------------------------------------------------------------
    def caption(self, videos: VideoInput | Sequence[VideoInput], options: GenerationOptions | None = None,
                batch_size: int = 8, **option_changes: Any) -> list[CaptionResult]:
        """Caption one or more videos (paths, Frames or uint8 arrays), in batches; one
        CaptionResult per video, in order. Greedy unless ``options.sampling`` names a preset.
        Keyword arguments (``lang="en"``, ``thinking=True``, ...) change ``options``."""
        options = GenerationOptions.of(options, **option_changes)
        if isinstance(videos, (str, os.PathLike, Frames, np.ndarray, torch.Tensor)):
            videos = [videos]
        results: list[CaptionResult] = []
        for start in range(0, len(videos), batch_size):
            chunk = list(videos[start : start + batch_size])
            t0 = time.perf_counter()
            clips = [self.read(v) for v in chunk]
            results += self.caption_frames(clips, options, sources=chunk,
                                           read_seconds=(time.perf_counter() - t0) / len(chunk))
        return results

    def caption_frames(self, clips: Sequence[Frames], options: GenerationOptions | None = None, *,
                       sources: Sequence[VideoInput] | None = None, read_seconds: float = 0.0,
                       features: Sequence[torch.Tensor | None] | None = None) -> list[CaptionResult]:
        """Caption already-read clips as one batch (what ``caption``, ``vcap caption`` and ``vcap eval``
        call); ``features`` optionally holds cached vision features per clip. Timings are per clip."""
        options = options or GenerationOptions()
        t0 = time.perf_counter()
        ids, mask, embeds, instruction = self.prepare(clips, options, features)
        t1 = time.perf_counter()
        out = self.generate(ids, mask, embeds, options, timestamps=[c.timestamps for c in clips])
        t2 = time.perf_counter()
        results = []
        for i, clip in enumerate(clips):
            tokens = [t for t in out[i].tolist() if t != self.tokenizer.pad_id]
            thought, answer = self.processor.decode(tokens, options.thinking)  # the rule caption_stream uses
            source = sources[i] if sources is not None else None
            results.append(CaptionResult(
                caption=answer, thinking=thought, lang=options.lang, prompt=instruction,
                path=str(source) if isinstance(source, (str, os.PathLike)) else (clip.path or None),
                num_frames=len(clip), timestamps=list(clip.timestamps), duration=clip.duration,
                num_tokens=len(tokens),
                timings={"read": read_seconds, "encode": (t1 - t0) / len(clips), "generate": (t2 - t1) / len(clips)},
                time_source=clip.time_source, sampling=dict(clip.plan),
                **(_events(answer) if options.dense else {}),
            ))
        return results

    def caption_stream(self, video: VideoInput, options: GenerationOptions | None = None,
                       **option_changes: Any) -> Iterator[CaptionEvent]:
        """Caption one video, yielding the text as it is generated (thinking first, if on)."""
        options = GenerationOptions.of(options, **option_changes)
        clip = self.read(video)
        ids, mask, embeds, _ = self.prepare([clip], options)
        splitter = self.processor.splitter(options.thinking)  # the rule caption() uses
        for step in self.generate(ids, mask, embeds, options, stream=True, timestamps=[clip.timestamps]):
            for kind, text in splitter.push(int(step[0])):
                yield CaptionEvent("thinking" if kind == "thinking" else "caption", text)
            if splitter.done:
                break
        for kind, text in splitter.finish():
            yield CaptionEvent("thinking" if kind == "thinking" else "caption", text)

    # -- training ---------------------------------------------------------------------------------
    def forward(
        self,
        video_features: Sequence[torch.Tensor | None],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        visible: torch.Tensor | None = None,
        loss_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy over the target tokens (weighted by ``loss_weights`` if given).

        video_features: per sample (T_i, P, Dv) frozen vision features (all None: text-only).
        input_ids, attention_mask, labels (B, S): right- or left-padded; labels hold the next
            token to predict at each position, -100 where there is no target.
        visible (B, S, S) bool: optionally, the keys each query may see (event windows, vcap/windows.py).
        loss_weights (B, S): optionally, each target's weight in the mean (vcap.train.loss_weights).
        """
        if all(f is None for f in video_features):  # text-only samples
            embeds = self.backbone.model.embed_tokens(input_ids)
        else:
            videos = [self.project(f[None])[0] for f in video_features]  # [(N_i, D)]
            embeds = self.splice(input_ids, videos)
        hidden = self.backbone.model(inputs_embeds=embeds, attention_mask=attention_mask, visible=visible)  # (B, S, D)
        target = labels != -100  # (B, S)
        # (M, D) -> mean -log p over the M targets; the (M, V) logits only ever a chunk at a time
        weights = None if loss_weights is None else loss_weights[target]
        return linear_cross_entropy(hidden[target], self.backbone.lm_head.weight, labels[target], weights=weights)
