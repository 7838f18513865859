"""Caption-word pre-training of an open_clip image tower, for when no pretrained weights exist.

The captioner's vision encoder is meant to be a pretrained CLIP tower, frozen. Offline there is
none to download, so the quickstart pre-trains its small stand-in tower first, on the training
clips and their captions only, much as CLIP itself was made from captioned images: every frame
learns to predict which words its clip's captions use (a multi-label bag-of-words loss over the
caption vocabulary, the CatLIP recipe), read through a linear head on the mean of the tokens the
captioner will take from the tower. The head is then dropped; the tower's weights are written as
a safetensors file, which a captioner config loads with ``vision_weights`` and keeps frozen.

    pretrain_vision(cfg.model, "data/train.jsonl", "vision.safetensors", VisionPretrainConfig(steps=300))

Words are the captions' lower-cased, whitespace-separated words without punctuation (Korean
words keep their particles, so 개가 and 개 are separate targets; that is enough for a tower that
only has to see what the captions talk about). Unreadable videos are skipped and reported.
Every clip's frames are decoded into memory once (clips x frames_per_clip x H x W x 3 bytes: 79 MB
for the quickstart's 400 clips of 16 frames at 64 px), which suits the small collections and
towers this is for; a real collection should start from a pretrained tower instead.

Notation: N frames in a batch, P tokens per frame, Dv tower width, V caption words.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import CaptionerConfig
from ..outputs import write_bytes
from ..data import read_manifest
from ..processor import read_options
from ..video import VideoReadError, read_frames
from ..vision import VisionEncoder

log = logging.getLogger(__name__)


@dataclass
class VisionPretrainConfig:
    steps: int = 300
    batch_size: int = 64  # frames per step, drawn at random from all clips
    lr: float = 2e-3  # one-cycle schedule up to this rate
    weight_decay: float = 0.05
    frames_per_clip: int = 16  # frames decoded from each clip (sampled and resized as the captioner does)
    seed: int = 0


def caption_words(text: str) -> list[str]:
    """The words a caption uses: lower case, split on whitespace, punctuation dropped."""
    return [w for w in re.sub(r"[^\w\s]", " ", text.lower()).split() if w]


def load_clips(manifest: str | os.PathLike, model: CaptionerConfig, frames_per_clip: int
               ) -> tuple[np.ndarray, list[set[str]], list[str]]:
    """Frames (clips, T, H, W, 3) of every readable video in the manifest, each clip's caption words,
    and the problems with the videos that could not be read."""
    words: dict[Path, set[str]] = {}
    for sample in read_manifest(manifest):
        words.setdefault(sample.video, set()).update(w for _, answer in sample.turns for w in caption_words(answer))
    sampling = {**read_options(model.frames), "num_frames": frames_per_clip, "strategy": "uniform"}
    clips, clip_words, skipped = [], [], []
    for video, bag in words.items():
        try:
            clips.append(read_frames(video, **sampling).frames)
        except VideoReadError as e:
            skipped.append(str(e))
            continue
        clip_words.append(bag)
    if not clips:
        raise ValueError(f"{manifest}: no readable video to pre-train the vision tower on")
    return np.stack(clips), clip_words, skipped


def pretrain_vision(model: CaptionerConfig, manifest: str | os.PathLike, out_file: str | os.PathLike,
                    cfg: VisionPretrainConfig | None = None, progress: bool = True) -> dict[str, float]:
    """Pre-train ``model.vision`` (from its random initial weights) on the manifest's clips; write the
    tower's weights to ``out_file`` (safetensors, atomically). Returns the first and last losses."""
    from safetensors.torch import save
    from ..progress import progress_bar

    cfg = cfg or VisionPretrainConfig()
    frames, clip_words, skipped = load_clips(manifest, model, cfg.frames_per_clip)
    for problem in skipped:
        log.warning("skipped: %s", problem)
    vocab = {word: i for i, word in enumerate(sorted(set().union(*clip_words)))}
    targets = torch.zeros(len(clip_words), len(vocab))  # (clips, V): 1 where the clip's captions use the word
    for i, bag in enumerate(clip_words):
        targets[i, [vocab[w] for w in bag]] = 1.0
    T = frames.shape[1]
    frames = torch.from_numpy(frames).flatten(0, 1)  # (clips*T, H, W, 3) uint8
    targets = targets.repeat_interleave(T, dim=0)  # (clips*T, V): a frame shares its clip's words

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        tower = VisionEncoder(model.vision, freeze=False).train()
        head = nn.Linear(tower.hidden_size, len(vocab))
        params = [*tower.parameters(), *head.parameters()]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
        order = torch.Generator().manual_seed(cfg.seed)
        losses = []
        bar = progress_bar(cfg.steps, "vision tower", "step", enabled=progress)
        for _ in range(cfg.steps):
            batch = torch.randint(len(frames), (cfg.batch_size,), generator=order)
            tokens = tower(tower.preprocess(frames[batch]))  # (N, P, Dv)
            logits = head(tokens.mean(dim=1))  # (N, V)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            bar.update(1)
        bar.close()

    write_bytes(out_file, save(tower.weights(), metadata={"format": "pt", "vocabulary_size": str(len(vocab)),
                                                          "steps": str(cfg.steps), "clips": str(len(clip_words))}))
    return {"first_loss": losses[0], "last_loss": losses[-1], "clips": len(clip_words), "skipped": len(skipped)}
