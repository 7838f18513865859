"""Training data: manifests, tokenized samples, datasets over the feature store, collation and
each epoch's batches.

Manifest: JSONL, one sample per line, video paths relative to the manifest's folder:

    {"video": "clips/a.mp4", "caption": "빨간 공이 굴러갑니다.", "lang": "ko"}
    {"video": "clips/b.mp4", "conversations": [{"from": "human", "value": "<video>\\nWhat happens?"},
                                                {"from": "gpt", "value": "A ball rolls."}]}

``read_manifest`` reports every bad line with its number. Vision features come from the feature
store (``vcap/features.py``), read per item; a video that cannot be read is skipped and
reported, never a crash.

A sample is tokenized with the official chat template: the user turn holds the video placeholder
(as many <|video_pad|> as the projector outputs) and the instruction; the caption is rendered as
the template renders a non-thinking answer, and only the answer tokens (and its <|im_end|>) are
in the loss.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qwen3_backbone.chat import tokenize

from .config import LANGS, RunConfig, manifest_paths
from .errors import UsageError
from .events import check_events
from .features import FeatureCache, encoder_fingerprint, extract_features
from .processor import VideoLayout
from .windows import caption_runs, event_time_queries, training_windows, visibility

log = logging.getLogger("vcap.train")

IGNORE_INDEX = -100
VIDEO_MARKER = "<video>"


class ManifestError(UsageError, ValueError):
    """A manifest with bad lines; ``problems`` lists (line number, message)."""

    def __init__(self, path: Path, problems: list[tuple[int, str]]) -> None:
        self.path, self.problems = path, problems
        shown = "\n".join(f"  {path}:{line}: {message}" for line, message in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{path}: {len(problems)} bad line(s)\n{shown}{more}")


@dataclass
class Sample:
    video: Path
    turns: list[tuple[str, str]]  # (instruction, answer) pairs; the video goes with the first
    lang: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # other keys of the line (e.g. attributes)

    @property
    def caption(self) -> str:
        return self.turns[-1][1]


def read_manifest(path: str | os.PathLike, instructions: dict[str, str] | None = None,
                  dense_instructions: dict[str, str] | None = None) -> list[Sample]:
    """Parse and validate a manifest; raises ManifestError listing every bad line. A ``caption``
    line is asked with ``instructions[lang]``, or with ``events`` ``dense_instructions[lang]``
    (default: vcap.config's defaults)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest not found: {path}")
    lines = manifest_lines(path, instructions, dense_instructions)
    problems = [(number, reason) for number, _, _, reason in lines if reason is not None]
    if problems:
        raise ManifestError(path, problems)
    if not lines:
        raise ManifestError(path, [(0, "no samples")])
    return [sample for _, _, sample, _ in lines]


def manifest_lines(path: Path, instructions: dict[str, str] | None = None,
                   dense_instructions: dict[str, str] | None = None) -> list[tuple[int, Any, Sample | None, str | None]]:
    """Every non-empty line, parsed and validated on its own: (line number, its JSON or None, the
    sample or None, what is wrong or None). A bad line does not hide the rest."""
    lines = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                lines.append((number, None, None, f"not valid JSON ({e.msg})"))
                continue
            try:
                lines.append((number, record, parse_sample(record, path.parent, instructions, dense_instructions), None))
            except ValueError as e:
                lines.append((number, record, None, str(e)))
    return lines


def parse_sample(record: Any, base: Path, instructions: dict[str, str] | None = None,
                 dense_instructions: dict[str, str] | None = None) -> Sample:
    """One manifest line's sample (video paths relative to ``base``); ValueError says what is wrong."""
    if not isinstance(record, dict):
        raise ValueError("each line must be a JSON object")
    video = record.get("video")
    if not isinstance(video, str) or not video:
        raise ValueError("missing 'video' (a path relative to the manifest)")
    video_path = Path(video) if os.path.isabs(video) else base / video
    lang = record.get("lang")
    if lang is not None and lang not in LANGS:
        raise ValueError(f"'lang' must be one of {', '.join(LANGS)}, got {lang!r}")
    extra = {k: v for k, v in record.items() if k not in ("video", "caption", "lang", "conversations")}
    if "events" in record:  # dense captions (ActivityNet layout); the caption is their text
        duration = record.get("duration")
        extra["events"] = check_events(record["events"], duration if isinstance(duration, (int, float)) else None)
    if "conversations" in record:
        return Sample(video_path, _conversation_turns(record["conversations"]), lang, extra)
    caption = record.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError("needs a non-empty 'caption' (with 'lang') or 'conversations'")
    if lang is None:
        raise ValueError("a 'caption' needs 'lang' (ko or en)")
    from .config import DEFAULT_DENSE_INSTRUCTIONS, DEFAULT_INSTRUCTIONS

    if "events" in extra:  # the caption lists the events: asked for as a dense caption
        instruction = (dense_instructions or DEFAULT_DENSE_INSTRUCTIONS).get(lang, DEFAULT_DENSE_INSTRUCTIONS[lang])
    else:
        instruction = (instructions or DEFAULT_INSTRUCTIONS).get(lang, DEFAULT_INSTRUCTIONS[lang])
    return Sample(video_path, [(instruction, caption.strip())], lang, extra)


def _conversation_turns(conversations: Any) -> list[tuple[str, str]]:
    """LLaVA-style [{"from": "human"|"gpt", "value": ...}] -> (instruction, answer) pairs."""
    if not isinstance(conversations, list) or len(conversations) < 2:
        raise ValueError("'conversations' must be a list of at least two turns")
    turns = []
    for i in range(0, len(conversations) - 1, 2):
        human, gpt = conversations[i], conversations[i + 1]
        if not (isinstance(human, dict) and isinstance(gpt, dict)):
            raise ValueError(f"conversations[{i}]: each turn must be an object with 'from' and 'value'")
        if human.get("from") != "human" or gpt.get("from") != "gpt":
            raise ValueError(f"conversations[{i}]: turns must alternate 'human' then 'gpt'")
        question, answer = human.get("value"), gpt.get("value")
        if not isinstance(question, str) or not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"conversations[{i}]: 'value' must be non-empty text")
        if (VIDEO_MARKER in question) != (i == 0):
            raise ValueError(f"conversations[{i}]: the '{VIDEO_MARKER}' marker belongs in the first human turn only")
        turns.append((question.replace(VIDEO_MARKER, "").strip(), answer.strip()))
    if len(conversations) % 2:
        raise ValueError("'conversations' must end with a 'gpt' turn")
    return turns


def chat_messages(sample: Sample, video: VideoLayout | None, system_prompt: str | None = None) -> list[dict[str, Any]]:
    """The sample as a chat; ``video`` is where the video goes in the first turn (None leaves it
    out: text-only training)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for i, (question, answer) in enumerate(sample.turns):
        if "events" in sample.extra:  # every event line ends with a newline, the last one too: on
            answer += "\n"           # it the model says whether another event follows (vcap/windows.py)
        if i == 0 and video is not None:
            user = video.message(question)
        else:
            user = {"role": "user", "content": question}
        messages += [user, {"role": "assistant", "content": answer}]
    return messages


def tokenize_sample(tokenizer, sample: Sample, video: VideoLayout | None,
                    system_prompt: str | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels): labels[i] is the token to predict after position i, or IGNORE_INDEX."""
    ids, mask = tokenize(tokenizer, chat_messages(sample, video, system_prompt))
    labels = [ids[i + 1] if mask[i + 1] else IGNORE_INDEX for i in range(len(ids) - 1)] + [IGNORE_INDEX]
    return ids, labels


def collate(items: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch of {"features", "input_ids", "labels"} (and optionally a dense sample's
    "windows" and "event_times", see vcap/windows.py) into tensors."""
    S = max(len(item["input_ids"]) for item in items)
    B = len(items)
    input_ids = torch.full((B, S), pad_id, dtype=torch.long)
    labels = torch.full((B, S), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros(B, S, dtype=torch.long)
    event_times = torch.zeros(B, S, dtype=torch.bool)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        input_ids[row, :n] = torch.tensor(item["input_ids"])
        labels[row, :n] = torch.tensor(item["labels"])
        attention_mask[row, :n] = 1
        event_times[row, torch.from_numpy(item.get("event_times", np.zeros(0, dtype=np.int64)))] = True
    return {
        "video_features": [item["features"] for item in items],  # None for text-only samples
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "visible": visibility([item.get("windows", []) for item in items], S),  # None without event windows
        "event_times": event_times if event_times.any() else None,  # targets that are event times (B, S)
    }


@dataclass(frozen=True)
class DenseOptions:
    """How dense samples (with events) are trained: ``window_jitter`` seconds of random movement of
    each event window's edges (vcap/windows.py); ``seed`` fixes it per sample."""

    window_jitter: float = 0.0
    seed: int = 0


class CaptionDataset(torch.utils.data.Dataset):
    """Tokenized samples; each item's vision features are read from the feature store when the item
    is (so memory follows the batch, not the dataset). Samples whose video has no stored features
    (it could not be read) are left out. ``cache=None``: a text-only dataset (no video in the prompt).

    A sample with events also carries its event windows (with the captioner's ``event_windows``)
    and which of its targets are event times (vcap/windows.py)."""

    def __init__(self, samples: Sequence[Sample], cache: FeatureCache | None, captioner,
                 dense: DenseOptions = DenseOptions()) -> None:
        self.cache = cache
        self.samples: list[Sample] = []
        self.tokens: list[tuple[np.ndarray, np.ndarray]] = []  # (input_ids, labels) as int32
        self.windows: list[list[tuple[np.ndarray, np.ndarray]]] = []  # per sample: vcap.windows.training_windows
        self.event_times: list[np.ndarray] = []  # per sample: vcap.windows.event_time_queries
        for sample in samples:
            found = cache.times(sample.video) if cache is not None else ([], None)
            if found is None:  # no stored features (the video could not be read)
                continue
            times, end = found
            video = captioner.video_layout(times, end) if times else None  # with time labels, if the config says so
            ids, labels = tokenize_sample(captioner.tokenizer, sample, video, captioner.config.system_prompt)
            self.tokens.append((np.asarray(ids, dtype=np.int32), np.asarray(labels, dtype=np.int32)))
            self.samples.append(sample)
            windows, event_times = [], np.zeros(0, dtype=np.int64)
            if "events" in sample.extra:
                trained = [False] + [label != IGNORE_INDEX for label in labels[:-1]]  # ids[j] is a target
                runs = caption_runs(captioner.tokenizer, ids, trained)
                event_times = event_time_queries(labels, runs)
                if captioner.config.event_windows and times:
                    rng = np.random.default_rng([dense.seed, len(self.samples)])
                    windows = training_windows(runs, ids, captioner.group_times(times), dense.window_jitter, rng)
            self.windows.append(windows)
            self.event_times.append(event_times)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ids, labels = self.tokens[index]
        features = self.cache.get(self.samples[index].video) if self.cache is not None else None
        return {"features": features, "input_ids": ids, "labels": labels, "windows": self.windows[index],
                "event_times": self.event_times[index]}


# -- a run's datasets and batches -------------------------------------------------------------------------

def build_datasets(cfg: RunConfig, captioner, progress: bool, rank: int = 0, world: int = 1,
                   barrier=lambda: None, *, device: torch.device | None = None) -> tuple[CaptionDataset, CaptionDataset | None]:
    """A run's training and validation sets: manifests read, vision features stored (each of
    ``world`` processes extracts its share on ``device``, then all wait at ``barrier``; unreadable
    videos are skipped and logged), samples tokenized."""
    prompts = captioner.config.instructions, captioner.config.dense_instructions
    train_samples = [s for path in manifest_paths(cfg.data.train) for s in read_manifest(path, *prompts)]
    if cfg.data.max_samples:
        train_samples = train_samples[: cfg.data.max_samples]
    val_samples = [s for path in manifest_paths(cfg.data.val) for s in read_manifest(path, *prompts)]
    cache = None
    if not cfg.data.text_only:
        folder = cfg.data.feature_cache or Path(cfg.train.out_dir) / "feature_cache"  # None: this run's own
        cache = FeatureCache(folder, encoder_fingerprint(captioner), getattr(torch, cfg.data.feature_dtype))
        videos = list(dict.fromkeys(s.video for s in train_samples + val_samples))
        for video, reason in extract_features(captioner, videos[rank::world], cache, progress=progress,
                                                  device=device).items():
            log.warning("skipped unreadable video %s: %s", video, reason)
        barrier()
    train_set = CaptionDataset(train_samples, cache, captioner,
                               DenseOptions(cfg.train.event_window_jitter, cfg.train.seed))
    val_set = CaptionDataset(val_samples, cache, captioner) if val_samples else None
    skipped = len(train_samples) - len(train_set) + (len(val_samples) - len(val_set) if val_set else 0)
    log.info("%straining samples: %d (%d skipped: their video could not be read); validation samples: %d",
             "text-only " if cache is None else "", len(train_set), skipped, len(val_set) if val_set else 0)
    if len(train_set) == 0:
        raise UsageError(f"{', '.join(manifest_paths(cfg.data.train))}: no readable training samples (see {cfg.train.out_dir}/train.log)")
    return train_set, val_set


def epoch_batches(num_samples: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """The batches of one epoch: a permutation fixed by (seed, epoch), then this process's share.

    With several processes every one gets the same number of batches (the list is padded with
    batches from its start, as torch's DistributedSampler pads), since each optimizer step is a
    collective all of them must join."""
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    batches = [order[i : i + batch_size] for i in range(0, num_samples, batch_size)]
    if world > 1:
        per_process = math.ceil(len(batches) / world)
        batches += batches[: per_process * world - len(batches)]
    return batches[rank::world]
