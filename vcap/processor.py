"""The processor beside the model, as in transformers: videos and text in, model inputs out;
generated ids in, thinking and caption out. It holds no weights.

- :meth:`VideoProcessor.read`: a path, read ``Frames`` or a uint8 array (T, H, W, 3) -> ``Frames``,
  sampled as the captioner's ``frames`` config says;
- :meth:`VideoProcessor.prompts`: per video, the chat prompt with its N ``<|video_pad|>`` tokens
  (a :class:`VideoLayout`: one block, or with ``frames.timestamps: text`` one block per temporal
  group after its time as text, ``<2.5 seconds>``, as Qwen3-VL writes videos; Qwen3's chat
  template; the instruction is always plain text), left-padded into ids (B, S) and an attention
  mask (B, S);
- :meth:`VideoProcessor.splitter` / :meth:`VideoProcessor.decode`: generated ids -> thinking and
  caption, by one rule for streams and whole outputs (``qwen3_backbone.chat.ThinkingSplitter``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qwen3_backbone.chat import ThinkingSplitter, split_ids, tokenize, video_message
from qwen3_backbone.tokenizer import SPECIAL_TOKENS, Qwen3Tokenizer

from .config import CaptionerConfig, FramesConfig
from .video import Frames, VideoInfo, read_frames

VIDEO_PAD_ID = SPECIAL_TOKENS["<|video_pad|>"][0]  # a video token's place in a prompt

VideoInput = str | os.PathLike | Frames | np.ndarray | torch.Tensor


def time_label(seconds: float) -> str:
    """A frame group's time as Qwen3-VL's processor writes it before the group's tokens."""
    return f"<{seconds:.1f} seconds>"


@dataclass(frozen=True)
class VideoLayout:
    """A video's place in the prompt: ``num_tokens`` <|video_pad|> in one block, or with
    ``frames.timestamps: text`` one block per temporal group after its time label
    (``groups``: (label, tokens) in order), and with ``frames.end_label`` the label of where the
    video stops after the last block (``end``)."""

    num_tokens: int
    groups: tuple[tuple[str, int], ...] = ()
    end: str = ""

    @classmethod
    def of(cls, num_tokens: int, frame_groups: Sequence[range], timestamps: Sequence[float] | None,
           end: float | None = None) -> VideoLayout:
        """From the projector's output size and temporal groups and the frames' times (None: no
        time labels). A merged group is labelled with the mean time of its frames; ``end`` (None:
        no end label), the end of the span the frames were sampled from, is labelled after them."""
        if timestamps is None:
            return cls(num_tokens)
        per = num_tokens // len(frame_groups)
        groups = tuple((time_label(t), per) for t in group_times(frame_groups, timestamps))
        return cls(num_tokens, groups, time_label(end) if end is not None else "")

    def message(self, text: str) -> dict:
        """The user turn: the video, then (after its end label, if any) ``text``, as plain text."""
        return video_message(self.num_tokens, self.end + text, self.groups)


def group_times(frame_groups: Sequence[range], timestamps: Sequence[float]) -> list[float]:
    """Each temporal group's time: the mean time (seconds) of its frames."""
    return [sum(timestamps[t] for t in g) / len(g) for g in frame_groups]


def frames_within(budget: int | None, tokens_for: Callable[[int], int]) -> int | None:
    """The most frames whose visual tokens (``tokens_for(frames)``, growing with the frames) fit a
    token budget; at least one; None without a budget."""
    if budget is None:
        return None
    low, high = 1, max(1, budget)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if tokens_for(mid) <= budget else (low, mid - 1)
    return low


def read_options(frames: FramesConfig, frame_limit: int | None = None) -> dict[str, Any]:
    """``vcap.video.read_frames``'s keyword arguments for a frames config: the one place a config
    becomes a way of sampling (the library, ``vcap caption``'s workers and the demo all use it).
    ``frame_limit``: the most frames the captioner's ``token_budget`` allows (see
    ``VideoCaptioner.frame_limit``)."""
    return {"num_frames": frames.num_frames, "strategy": frames.strategy, "fps": frames.fps,
            "max_frames": frames.max_frames, "min_frames": frames.min_frames, "frame_limit": frame_limit,
            "size": frames.size, "backend": frames.backend}


class VideoProcessor:
    def __init__(self, tokenizer: Qwen3Tokenizer, config: CaptionerConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config

    def read(self, video: VideoInput, frames: FramesConfig | None = None,
             window: tuple[float, float] | None = None, frame_limit: int | None = None) -> Frames:
        """A path, already-read Frames, or a uint8 array (T, H, W, 3) -> Frames; a path is sampled
        as ``frames`` (default: the captioner's) says, within ``window`` (start, end) seconds if given,
        and at most ``frame_limit`` frames (the token budget's; see ``read_options``)."""
        if isinstance(video, Frames):
            return video
        if isinstance(video, (np.ndarray, torch.Tensor)):
            array = np.asarray(video)
            if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
                raise ValueError(f"frames must be uint8 (T, H, W, 3), got {array.dtype} {array.shape}")
            info = VideoInfo(array.shape[0], 1.0, array.shape[2], array.shape[1])  # no times: frame indices
            return Frames(array, list(range(len(array))), [float(i) for i in range(len(array))], info, "array",
                          time_source="frame index")
        start, end = window if window is not None else (0.0, None)
        return read_frames(video, start=start, end=end, **read_options(frames or self.config.frames, frame_limit))

    def instruction(self, prompt: str | None, lang: str, dense: bool = False) -> str:
        """The user's prompt, or the captioner's default instruction for ``lang`` (with ``dense``, the
        one that asks for timed events)."""
        if prompt:
            return prompt
        return (self.config.dense_instructions if dense else self.config.instructions)[lang]

    def prompt_ids(self, video: VideoLayout, instruction: str, thinking: bool) -> list[int]:
        """One prompt: [system], user turn with the video and the instruction, generation prompt."""
        messages = []
        if self.config.system_prompt:
            messages.append({"role": "system", "content": self.config.system_prompt})
        messages.append(video.message(instruction))
        ids, _ = tokenize(self.tokenizer, messages, add_generation_prompt=True, enable_thinking=thinking)
        return ids

    def prompts(self, videos: Sequence[VideoLayout], instruction: str,
                thinking: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids (B, S) and attention mask (B, S), one row per video."""
        rows = [self.prompt_ids(v, instruction, thinking) for v in videos]
        S = max(len(r) for r in rows)
        ids = torch.full((len(rows), S), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), S, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, S - len(row):] = torch.tensor(row)
            mask[i, S - len(row):] = 1
        return ids, mask

    def splitter(self, thinking: bool) -> ThinkingSplitter:
        """A streaming splitter of generated ids into ("thinking" | "answer", text) pieces."""
        return ThinkingSplitter(self.tokenizer, thinking)

    def decode(self, ids: Sequence[int], thinking: bool) -> tuple[str, str]:
        """Generated ids (padding dropped) -> (thinking, caption), as a stream would show them."""
        return split_ids(self.tokenizer, [t for t in ids if t != self.tokenizer.pad_id], thinking)
