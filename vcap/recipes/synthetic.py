"""Synthetic captioned clips: moving shapes with controlled attributes, captions in Korean and English.

Each clip is a real H.264 mp4 (written with PyAV) showing ``count`` shapes of one ``shape``,
``colour`` and ``size`` crossing the frame in one ``direction`` over a ``background``. Captions
state every attribute, in English and Korean; ``parse_attributes`` reads them back, which gives
the quickstart its attribute accuracy. A split's manifest is JSONL, two lines per clip (one per
language): ``{"video", "caption", "lang", "attributes"}``.

``make_dataset`` keeps a quarter of the 864 attribute combinations out of training, so the test
split can hold combinations the model never saw. Everything is deterministic for a seed.

    vcap synth --out data/synthetic --n 200 --seed 0
"""

from __future__ import annotations

import argparse
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {  # name -> RGB
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "purple": (160, 60, 220),
}
BACKGROUNDS = {"black": (10, 10, 10), "gray": (120, 120, 120)}
DIRECTIONS = ("left_to_right", "right_to_left", "top_to_bottom", "bottom_to_top")
SIZES = ("small", "large")
COUNTS = (1, 2, 3)

EN_COUNT = {1: "One", 2: "Two", 3: "Three"}
EN_DIRECTION = {
    "left_to_right": "from left to right",
    "right_to_left": "from right to left",
    "top_to_bottom": "from top to bottom",
    "bottom_to_top": "from bottom to top",
}
KO_SHAPE = {"circle": "원", "square": "사각형", "triangle": "삼각형"}
KO_COLOUR = {"red": "빨간색", "green": "초록색", "blue": "파란색", "yellow": "노란색", "white": "흰색", "purple": "보라색"}
KO_BACKGROUND = {"black": "검은색", "gray": "회색"}
KO_SIZE = {"small": "작은", "large": "큰"}
KO_COUNT = {1: "한 개", 2: "두 개", 3: "세 개"}
KO_DIRECTION = {
    "left_to_right": "왼쪽에서 오른쪽으로",
    "right_to_left": "오른쪽에서 왼쪽으로",
    "top_to_bottom": "위에서 아래로",
    "bottom_to_top": "아래에서 위로",
}


@dataclass(frozen=True)
class ClipAttributes:
    shape: str
    colour: str
    count: int
    direction: str
    size: str
    background: str

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("shape", self.shape, SHAPES), ("colour", self.colour, COLOURS), ("count", self.count, COUNTS),
            ("direction", self.direction, DIRECTIONS), ("size", self.size, SIZES),
            ("background", self.background, BACKGROUNDS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def caption(attrs: ClipAttributes, lang: str) -> str:
    """The reference caption stating every attribute."""
    if lang == "en":
        noun = attrs.shape + ("s" if attrs.count > 1 else "")
        verb = "move" if attrs.count > 1 else "moves"
        return (f"{EN_COUNT[attrs.count]} {attrs.size} {attrs.colour} {noun} {verb} "
                f"{EN_DIRECTION[attrs.direction]} on a {attrs.background} background.")
    if lang == "ko":
        return (f"{KO_BACKGROUND[attrs.background]} 배경에서 {KO_SIZE[attrs.size]} {KO_COLOUR[attrs.colour]} "
                f"{KO_SHAPE[attrs.shape]} {KO_COUNT[attrs.count]}가 {KO_DIRECTION[attrs.direction]} 움직입니다.")
    raise ValueError(f"lang must be 'ko' or 'en', got {lang!r}")


def parse_attributes(text: str, lang: str) -> dict[str, object]:
    """Read the attributes a caption states (None where it states none, or more than one)."""
    text_l = text.lower()

    def one(table: dict) -> object:
        found = [key for key, word in table.items() if word.lower() in text_l]
        return found[0] if len(found) == 1 else None

    if lang == "en":
        words = set(text_l.replace(".", " ").replace(",", " ").split())
        shape = [s for s in SHAPES if s in words or s + "s" in words]
        return {
            "shape": shape[0] if len(shape) == 1 else None,
            "colour": _only([c for c in COLOURS if c in words]),
            "count": _only([n for n, w in EN_COUNT.items() if w.lower() in words]),
            "direction": one(EN_DIRECTION),
            "size": _only([s for s in SIZES if s in words]),
            "background": _only([b for b in BACKGROUNDS if f"{b} background" in text_l]),
        }
    if lang == "ko":
        return {
            "shape": one(KO_SHAPE),  # 원 / 사각형 / 삼각형: no word contains another
            "colour": one(KO_COLOUR),
            "count": one(KO_COUNT),
            "direction": one(KO_DIRECTION),
            "size": one(KO_SIZE),
            "background": _only([b for b, w in KO_BACKGROUND.items() if f"{w} 배경" in text]),
        }
    raise ValueError(f"lang must be 'ko' or 'en', got {lang!r}")


def _only(found: list) -> object:
    return found[0] if len(found) == 1 else None


def states_all_attributes(text: str, lang: str, attrs: ClipAttributes | dict) -> bool:
    truth = asdict(attrs) if isinstance(attrs, ClipAttributes) else dict(attrs)
    return parse_attributes(text, lang) == truth


def judge_attributes(caption: str, lang: str, sample) -> bool | None:
    """vcap.evaluate's judge for synthetic clips: whether ``caption`` states every attribute of the
    sample's clip (None for a sample without ``attributes``)."""
    attrs = sample.extra.get("attributes")
    return None if attrs is None else states_all_attributes(caption, lang, attrs)


# -- rendering --------------------------------------------------------------------------------------

def render_frames(attrs: ClipAttributes, size: int = 96, num_frames: int = 24, seed: int = 0) -> np.ndarray:
    """The clip as uint8 frames (T, H, W, 3): shapes crossing the frame at constant speed."""
    rng = np.random.default_rng(seed)
    radius = (0.09 if attrs.size == "small" else 0.16) * size
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    frames[:] = np.array(BACKGROUNDS[attrs.background], dtype=np.uint8)
    colour = np.array(COLOURS[attrs.colour], dtype=np.uint8)
    horizontal = attrs.direction in ("left_to_right", "right_to_left")
    # lanes across the direction of motion, with a little jitter
    lanes = (np.arange(attrs.count) + 0.5) / attrs.count * size
    lanes = lanes + rng.uniform(-0.04, 0.04, attrs.count) * size
    start, end = radius * 1.1, size - radius * 1.1
    if attrs.direction in ("right_to_left", "bottom_to_top"):
        start, end = end, start
    offsets = rng.uniform(-0.05, 0.05, attrs.count) * size  # objects need not move in lockstep
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for t in range(num_frames):
        progress = start + (end - start) * t / max(num_frames - 1, 1)
        for lane, offset in zip(lanes, offsets):
            along = float(np.clip(progress + offset, radius, size - radius))
            cx, cy = (along, lane) if horizontal else (lane, along)
            frames[t][_shape_mask(attrs.shape, xx, yy, cx, cy, radius)] = colour
    return frames


def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    if shape == "square":
        return (np.abs(xx - cx) <= r * 0.85) & (np.abs(yy - cy) <= r * 0.85)
    # triangle pointing up: inside three half-planes
    top, left, right = (cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)

    def side(a, b):
        return (b[0] - a[0]) * (yy - a[1]) - (b[1] - a[1]) * (xx - a[0])

    return (side(top, right) >= 0) & (side(right, left) >= 0) & (side(left, top) >= 0)


def write_mp4(frames: np.ndarray, path: str | os.PathLike, fps: int = 12) -> Path:
    """Write uint8 frames (T, H, W, 3) as H.264 (yuv420p) with PyAV, atomically."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    T, H, W, _ = frames.shape
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast", "tune": "zerolatency"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path


# -- datasets ---------------------------------------------------------------------------------------

def all_combinations() -> list[ClipAttributes]:
    return [
        ClipAttributes(shape, colour, count, direction, size, background)
        for shape in SHAPES for colour in COLOURS for count in COUNTS for direction in DIRECTIONS
        for size in SIZES for background in BACKGROUNDS
    ]


def split_combinations(seed: int = 0, train_share: float = 0.75) -> tuple[list[ClipAttributes], list[ClipAttributes]]:
    """The 864 attribute combinations split into those training may show and those it never does.

    Every single attribute value, and every pair of values, still occurs in training; what the
    unseen part holds out is whole combinations. (Holding out whole (shape, colour) pairs is too
    hard for the quickstart's stand-in encoder, whose random patch features are linear in colour:
    shape learned in five colours does not carry over to a sixth.)
    """
    rng = random.Random(f"combinations-{seed}")
    combos = all_combinations()
    rng.shuffle(combos)
    cut = round(len(combos) * train_share)
    return combos[:cut], combos[cut:]


def make_dataset(
    out_dir: str | os.PathLike,
    *,
    n_train: int = 200,
    n_val: int = 24,
    n_test: int = 48,
    seed: int = 0,
    size: int = 96,
    num_frames: int = 24,
    fps: int = 12,
    unseen_share: float = 0.5,
    progress: bool = True,
) -> dict[str, Path]:
    """Write train/val/test clips and manifests under ``out_dir``; returns the manifest paths.

    Train and val use only the training combinations; ``unseen_share`` of the test clips show
    combinations training never shows, the rest are new clips of seen combinations. Existing
    clips are kept (a rerun only writes what is missing).
    """
    from ..outputs import check_output_file, read_jsonl, recognises, write_jsonl
    from ..progress import progress_bar

    out = Path(out_dir)
    for split in ("train", "val", "test"):  # a manifest already there must be one this writes
        check_output_file(out / f"{split}.jsonl", "synthetic manifest", "--out", is_ours=recognises(
            lambda path: read_jsonl(path, lambda r: isinstance(r, dict) and "attributes" in r and "video" in r,
                                    "video", "synthetic manifest")))
    rng = random.Random(seed)
    seen_combos, unseen_combos = split_combinations(seed)
    unseen = set(unseen_combos)
    n_unseen = round(n_test * unseen_share)
    plan = {
        "train": [seen_combos[i % len(seen_combos)] for i in range(n_train)],
        "val": rng.sample(seen_combos, n_val),
        "test": rng.sample(seen_combos, n_test - n_unseen) + rng.sample(unseen_combos, n_unseen),
    }
    rng.shuffle(plan["train"])
    manifests = {}
    total = sum(len(v) for v in plan.values())
    bar = progress_bar(total, "synthetic clips", "clip", enabled=progress)
    for split, clips in plan.items():
        lines = []
        for i, attrs in enumerate(clips):
            name = f"{split}/{split}_{i:05d}.mp4"
            path = out / name
            clip_seed = rng.randrange(2**31)
            if not path.exists():
                write_mp4(render_frames(attrs, size=size, num_frames=num_frames, seed=clip_seed), path, fps)
            record = asdict(attrs)
            for lang in ("en", "ko"):
                lines.append({"video": name, "caption": caption(attrs, lang), "lang": lang, "attributes": record,
                              "unseen_combination": attrs in unseen})
            bar.update(1)
        manifest = out / f"{split}.jsonl"
        write_jsonl(manifest, lines)
        manifests[split] = manifest
    bar.close()
    return manifests


# -- the `vcap synth` command ------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import non_negative_int, positive_int

    parser.add_argument("--out", required=True, help="output folder (clips in train/ val/ test/, plus *.jsonl)")
    parser.add_argument("--n", type=positive_int, default=200, help="training clips (default 200)")
    parser.add_argument("--n-val", type=non_negative_int, default=24, help="validation clips (default 24)")
    parser.add_argument("--n-test", type=non_negative_int, default=48,
                        help="test clips (default 48), half of them attribute combinations training never shows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=positive_int, default=96, help="frame width and height in pixels (default 96)")
    parser.add_argument("--frames", type=positive_int, default=24, help="frames per clip (default 24)")
    parser.add_argument("--fps", type=positive_int, default=12, help="frames per second (default 12)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    manifests = make_dataset(args.out, n_train=args.n, n_val=args.n_val, n_test=args.n_test, seed=args.seed,
                             size=args.size, num_frames=args.frames, fps=args.fps, progress=not args.quiet)
    for split, path in manifests.items():
        print(f"{split}: {path}")
    return 0
