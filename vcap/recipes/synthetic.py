"""Synthetic captioned clips: moving shapes with controlled attributes, captions in Korean and English.

Each clip is a real H.264 mp4 (written with PyAV) showing ``count`` shapes of one ``shape``,
``colour`` and ``size`` crossing the frame in one ``direction`` over a ``background``. Captions
state every attribute, in English and Korean; ``parse_attributes`` reads them back, which gives
the quickstart its attribute accuracy. A split's manifest is JSONL, two lines per clip (one per
language): ``{"video", "caption", "lang", "attributes"}``.

``make_dataset`` keeps a quarter of the 864 attribute combinations out of training, so the test
split can hold combinations the model never saw. Everything is deterministic for a seed.

    vcap synth --out data/synthetic --n 200 --seed 0
    vcap synth --out data/dense --events 2-3          # 6-12 s clips of 2-3 consecutive events, for dense captions
"""

from __future__ import annotations

import argparse
import hashlib
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
    scene = _Scene(attrs, size, np.random.default_rng(seed))
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        scene.draw(frames[t], t / max(num_frames - 1, 1))
    return frames


class _Scene:
    """One event's shapes: where they run (lanes across the motion, with a little jitter) and how
    far along they are at a given fraction of the event."""

    def __init__(self, attrs: ClipAttributes, size: int, rng: np.random.Generator) -> None:
        self.attrs = attrs
        self.radius = (0.09 if attrs.size == "small" else 0.16) * size
        self.lanes = (np.arange(attrs.count) + 0.5) / attrs.count * size + rng.uniform(-0.04, 0.04, attrs.count) * size
        self.start, self.end = self.radius * 1.1, size - self.radius * 1.1
        if attrs.direction in ("right_to_left", "bottom_to_top"):
            self.start, self.end = self.end, self.start
        self.offsets = rng.uniform(-0.05, 0.05, attrs.count) * size  # objects need not move in lockstep
        self.yy, self.xx = np.mgrid[0:size, 0:size].astype(np.float32)
        self.size = size

    def draw(self, frame: np.ndarray, fraction: float) -> None:
        """Paint the background and the shapes ``fraction`` (0..1) of the way across."""
        attrs, radius = self.attrs, self.radius
        frame[:] = np.array(BACKGROUNDS[attrs.background], dtype=np.uint8)
        colour = np.array(COLOURS[attrs.colour], dtype=np.uint8)
        horizontal = attrs.direction in ("left_to_right", "right_to_left")
        progress = self.start + (self.end - self.start) * fraction
        for lane, offset in zip(self.lanes, self.offsets):
            along = float(np.clip(progress + offset, radius, self.size - radius))
            cx, cy = (along, lane) if horizontal else (lane, along)
            frame[_shape_mask(attrs.shape, self.xx, self.yy, cx, cy, radius)] = colour


@dataclass(frozen=True)
class TimedEvent:
    """One event of a multi-event clip: its attributes over [start, end) seconds."""

    attrs: ClipAttributes
    start: float
    end: float


def render_events(events: list[TimedEvent], size: int = 96, fps: int = 12, seed: int = 0) -> np.ndarray:
    """A multi-event clip as uint8 frames (T, H, W, 3), frame t showing the time t / fps: during
    each event its own shapes cross the frame over its own background, from its start to its end."""
    rng = np.random.default_rng(seed)
    scenes = [_Scene(e.attrs, size, rng) for e in events]
    frames = np.empty((max(1, round(events[-1].end * fps)), size, size, 3), dtype=np.uint8)
    for t in range(len(frames)):
        now = t / fps
        k = next((i for i, e in enumerate(events) if e.start <= now < e.end), len(events) - 1)
        e = events[k]
        scenes[k].draw(frames[t], min(1.0, max(0.0, (now - e.start) / (e.end - e.start))))
    return frames


SHORTEST_EVENT = 1.5  # seconds: the shortest event of a multi-event clip


def plan_events(rng: random.Random, count: int, duration: float,
                shortest: float = SHORTEST_EVENT) -> list[tuple[float, float]]:
    """``count`` consecutive [start, end) spans covering ``duration`` seconds, each at least
    ``shortest`` long, with boundaries at random times (to the hundredth of a second)."""
    while True:
        cuts = sorted(round(rng.uniform(shortest, duration - shortest), 2) for _ in range(count - 1))
        edges = [0.0, *cuts, round(duration, 2)]
        if all(b - a >= shortest for a, b in zip(edges, edges[1:])):
            return list(zip(edges, edges[1:]))


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


def _clip_name(split: str, index: int, plan: tuple) -> str:
    """A clip's file name: its split and index, and a digest of everything it is rendered from, so a
    rerun with other settings (more clips, another size) writes new clips instead of keeping old
    files whose content the new manifest would no longer describe."""
    digest = hashlib.sha256(repr(plan).encode("utf-8")).hexdigest()[:10]
    return f"{split}/{split}_{index:05d}_{digest}.mp4"


def _check_manifests(out: Path, key: str) -> None:
    """Before any clip is written: a split manifest already in ``out`` must be one this module wrote
    (each line with ``video`` and ``key``), never a file of the user's."""
    from ..outputs import check_output_file, read_jsonl, recognises

    def is_ours(r) -> bool:
        return isinstance(r, dict) and key in r and "video" in r

    for split in ("train", "val", "test"):
        check_output_file(out / f"{split}.jsonl", "synthetic manifest", "--out",
                          is_ours=recognises(lambda path: read_jsonl(path, is_ours, "video", "synthetic manifest")))


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
    clips are kept (a rerun only writes what is missing; a clip's name changes with what it shows).
    """
    from ..outputs import write_jsonl
    from ..progress import progress_bar

    out = Path(out_dir)
    _check_manifests(out, "attributes")
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
            clip_seed = rng.randrange(2**31)
            name = _clip_name(split, i, (attrs, clip_seed, size, num_frames, fps))
            path = out / name
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


def make_dense_dataset(
    out_dir: str | os.PathLike,
    *,
    n_train: int = 200,
    n_val: int = 24,
    n_test: int = 48,
    seed: int = 0,
    size: int = 96,
    fps: int = 12,
    events: tuple[int, int] = (2, 3),
    seconds: tuple[float, float] = (6.0, 12.0),
    unseen_share: float = 0.5,
    progress: bool = True,
) -> dict[str, Path]:
    """Multi-event clips for dense captioning: each clip lasts ``seconds`` (uniform) and holds
    ``events`` (uniform) consecutive events, each with its own shape, colour, count, direction,
    size and background, the boundaries at random times (never on a frame-sampling grid). A split's
    manifest has two lines per clip (en, ko): the events' text as ``caption`` (vcap.events' layout)
    and the ``events`` with their ``attributes`` and ``unseen_combination``. Training and validation
    events use the training combinations only; ``unseen_share`` of the test events use held-out ones.
    Existing clips are kept (a clip's name changes with what it shows)."""
    from ..errors import UsageError
    from ..events import events_text
    from ..outputs import write_jsonl
    from ..progress import progress_bar

    low, high = events
    if not 1 <= low <= high:
        raise UsageError(f"events must be MIN-MAX with 1 <= MIN <= MAX, got {low}-{high}")
    if not 0 < seconds[0] <= seconds[1] or seconds[0] < SHORTEST_EVENT * high:
        raise UsageError(f"clips of {seconds[0]:g}-{seconds[1]:g} s cannot hold {high} events of at least "
                         f"{SHORTEST_EVENT:g} s each")
    out = Path(out_dir)
    _check_manifests(out, "events")
    rng = random.Random(f"dense-{seed}")
    seen_combos, unseen_combos = split_combinations(seed)
    clips = {split: [rng.randint(low, high) for _ in range(n)] for split, n in (("train", n_train), ("val", n_val),
                                                                              ("test", n_test))}
    test_slots = sum(clips["test"])
    held_out = set(rng.sample(range(test_slots), round(test_slots * unseen_share)))  # which test events are unseen
    bar = progress_bar(n_train + n_val + n_test, "synthetic multi-event clips", "clip", enabled=progress)
    manifests, slot = {}, 0
    for split, counts in clips.items():
        lines = []
        for i, count in enumerate(counts):
            spans = plan_events(rng, count, round(rng.uniform(*seconds), 2))
            timed = []
            for start, end in spans:
                unseen = split == "test" and slot in held_out
                slot += split == "test"
                timed.append((TimedEvent(rng.choice(unseen_combos if unseen else seen_combos), start, end), unseen))
            clip_seed = rng.randrange(2**31)
            name = _clip_name(split, i, (tuple(timed), clip_seed, size, fps))
            if not (out / name).exists():
                write_mp4(render_events([e for e, _ in timed], size=size, fps=fps, seed=clip_seed), out / name, fps)
            for lang in ("en", "ko"):
                events_ = [{"start": e.start, "end": e.end, "caption": caption(e.attrs, lang),
                            "attributes": asdict(e.attrs), "unseen_combination": unseen} for e, unseen in timed]
                lines.append({"video": name, "caption": events_text(events_), "lang": lang, "events": events_,
                              "duration": spans[-1][1]})
            bar.update(1)
        manifests[split] = write_jsonl(out / f"{split}.jsonl", lines)
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
    parser.add_argument("--events", type=_span(int), metavar="MIN-MAX",
                        help="multi-event clips for dense captioning, with MIN to MAX consecutive events each (e.g. 2-3)")
    parser.add_argument("--seconds", type=_span(float), default=(6.0, 12.0), metavar="MIN-MAX",
                        help="with --events: clip length in seconds (default 6-12)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _span(kind: type):
    def parse(text: str):
        low, sep, high = text.partition("-")
        try:
            values = (kind(low), kind(high if sep else low))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected MIN-MAX (e.g. 2-3), got {text!r}") from None
        if not 0 < values[0] <= values[1]:
            raise argparse.ArgumentTypeError(f"expected 0 < MIN <= MAX, got {text!r}")
        return values

    return parse


def run(args: argparse.Namespace) -> int:
    if args.events:
        manifests = make_dense_dataset(args.out, n_train=args.n, n_val=args.n_val, n_test=args.n_test, seed=args.seed,
                                       size=args.size, fps=args.fps, events=args.events, seconds=args.seconds,
                                       progress=not args.quiet)
    else:
        manifests = make_dataset(args.out, n_train=args.n, n_val=args.n_val, n_test=args.n_test, seed=args.seed,
                                 size=args.size, num_frames=args.frames, fps=args.fps, progress=not args.quiet)
    for split, path in manifests.items():
        print(f"{split}: {path}")
    return 0
