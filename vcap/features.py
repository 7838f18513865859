"""The vision feature store: the frozen encoder's features per video, on disk, read per batch.

The vision encoder is frozen, so a video's features (T, P, Dv) are computed once and kept in a
:class:`FeatureCache`: one safetensors file per video, keyed by the file's identity (absolute
path, size, modification time) and the encoder's (its config, a weights fingerprint, the frame
sampling), so a changed file or encoder never reuses stale features. Files are stored in
``data.feature_dtype`` (bfloat16 by default: half of float32) and written atomically; training
reads each sample's features when its batch needs them, so resident memory does not grow with
the number of clips. With several processes each extracts its own share of the videos.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .video import VideoReadError


class FeatureCache:
    """Features per video: ``<folder>/<key>.safetensors`` (one tensor, ``features``; the sampled
    frames' times and where their span ends in its metadata, for time-labelled prompts)."""

    def __init__(self, folder: str | os.PathLike, encoder_key: str, dtype: torch.dtype = torch.bfloat16) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.encoder_key = encoder_key
        self.dtype = dtype

    def key(self, video: Path) -> str:
        stat = video.stat()
        identity = f"{video.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.encoder_key}"
        return hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()[:32]  # any file name

    def path(self, video: Path) -> Path | None:
        """The cache file of ``video`` (None when the video itself cannot be read)."""
        try:
            return self.folder / f"{self.key(video)}.safetensors"
        except OSError:
            return None

    def times(self, video: Path) -> tuple[list[float], float | None] | None:
        """The stored frames' times and the end of the span they were sampled from, in seconds
        (from the header); None when nothing usable is stored (files written before times were
        stored give None too, and are extracted again). The end is None in files written before
        ends were stored: they are extracted again only for a captioner with ``frames.end_label``."""
        from safetensors import safe_open

        path = self.path(video)
        if path is None or not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                count = int(f.get_slice("features").get_shape()[0])
                meta = f.metadata() or {}
                times, end = json.loads(meta.get("timestamps", "null")), json.loads(meta.get("end", "null"))
        except Exception:  # a damaged cache file is recomputed, not trusted
            return None
        if not isinstance(times, list) or len(times) != count:
            return None
        return [float(t) for t in times], float(end) if isinstance(end, (int, float)) else None

    def get(self, video: Path) -> torch.Tensor | None:
        """The stored features (T, P, Dv) in the stored dtype, or None."""
        from safetensors.torch import load_file

        path = self.path(video)
        if path is None or not path.exists():
            return None
        try:
            return load_file(str(path))["features"]
        except Exception:  # a damaged cache file is recomputed, not trusted
            return None

    def put(self, video: Path, features: torch.Tensor, timestamps: Sequence[float], end: float) -> None:
        """Store a video's features (T, P, Dv), its T frames' times and the end of the span they were
        sampled from, in seconds."""
        from safetensors.torch import save

        from .outputs import escape_surrogates, write_bytes

        if len(timestamps) != features.shape[0]:
            raise ValueError(f"{len(timestamps)} timestamps for {features.shape[0]} frames of features")
        data = save({"features": features.detach().to("cpu", self.dtype).contiguous()},
                    metadata={"video": escape_surrogates(str(video)),
                              "timestamps": json.dumps([float(t) for t in timestamps]),
                              "end": json.dumps(float(end))})
        write_bytes(self.path(video), data)


def encoder_fingerprint(captioner) -> str:
    """Identity of the frozen encoder and frame sampling (part of every cache key)."""
    from .config_io import config_to_dict, identity_dict

    digest = hashlib.sha256()
    digest.update(json.dumps(config_to_dict(captioner.config.vision), sort_keys=True).encode())
    sampling = identity_dict(captioner.config)["frames"]  # as stored before newer settings existed
    for key in ("timestamps", "end_label"):  # they change the prompt only, not the features
        sampling.pop(key, None)
    digest.update(json.dumps(sampling, sort_keys=True).encode())
    for name, tensor in sorted(captioner.vision.visual.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().flatten()[:64].numpy().tobytes())  # cheap weight fingerprint
        digest.update(str(float(tensor.float().sum())).encode())
    return digest.hexdigest()[:16]


def extract_features(captioner, videos: Sequence[Path], cache: FeatureCache, progress: bool = True,
                     batch: int = 8, device: torch.device | str | None = None) -> dict[Path, str]:
    """Store the features of every readable video of ``videos`` that the cache does not hold yet;
    returns the reason for each video that could not be read. Nothing is kept in memory. With
    ``device`` (the GPU a run trains on) the vision tower runs there meanwhile, then goes back."""
    todo = [video for video in dict.fromkeys(videos) if not _stored(cache, video, captioner.config.frames.end_label)]
    home = captioner.vision.device
    if device is None or not todo or torch.device(device) == home:
        return _extract(captioner, todo, cache, progress, batch)
    captioner.vision.to(device)
    try:
        return _extract(captioner, todo, cache, progress, batch)
    finally:
        captioner.vision.to(home)


def _stored(cache: FeatureCache, video: Path, end_label: bool) -> bool:
    """Whether the cache holds what a captioner needs of ``video``: its features and times, and
    with ``end_label`` where their span ends."""
    found = cache.times(video)
    return found is not None and (found[1] is not None or not end_label)


def _extract(captioner, todo: list[Path], cache: FeatureCache, progress: bool, batch: int) -> dict[Path, str]:
    from .progress import progress_bar

    failed: dict[Path, str] = {}
    bar = progress_bar(len(todo), "vision features", "video", enabled=progress and bool(todo))
    for start in range(0, len(todo), batch):
        chunk, clips = [], []
        for video in todo[start : start + batch]:
            try:
                clips.append(captioner.read(str(video)))
                chunk.append(video)
            except VideoReadError as e:
                failed[video] = e.reason
        if clips:
            for video, clip, feats in zip(chunk, clips, captioner.encode([c.frames for c in clips])):
                cache.put(video, feats, clip.timestamps, clip.end)
        bar.update(len(todo[start : start + batch]))
    bar.close()
    return failed
