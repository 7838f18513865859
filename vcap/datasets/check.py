"""``vcap data check``: is a dataset ready to train on? Validates every manifest line, probes every
video in worker processes, reports what the data looks like, and writes a clean manifest of the
usable samples plus a list of the rest, each with its reason.

A video is usable when its container opens, it has a video stream with frames and a frame rate,
and one frame decodes (the frame in the middle, the way captioning reads). A sample is usable when
its line is valid, its video is, and its events (if any) lie within the video. Probe results are
cached by path, size and modification time (``--cache``, default
``~/.cache/vcap/video-probes.jsonl``), so a rerun over 100k videos only probes new or changed
files.

For each input ``NAME.jsonl`` it writes ``NAME.clean.jsonl`` (the usable lines, unchanged but for
video paths made relative to the clean manifest's folder) and ``NAME.rejected.jsonl`` (``{"line",
"video", "reason"}``), beside the input or in ``--out-dir``. The report (stdout) gives, per split
(the manifest's name) and language: samples, usable samples, caption length in Qwen3 tokens, video
duration and resolution (of the usable samples), and with ``--captioner`` the visual tokens each
sample would get.

Exit codes: 0 every sample usable, 1 some are not, 2 usage error.
"""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..data import Sample, manifest_lines
from ..errors import UsageError
from ..events import check_events
from ..outputs import check_output_file, json_line, read_jsonl, recognises, write_jsonl


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vcap" / "video-probes.jsonl"


@dataclass(frozen=True)
class CheckOptions:
    manifests: tuple[Path, ...]
    out_dir: Path | None = None  # None: beside each manifest
    captioner: Path | None = None  # a captioner folder or captioner.json / training YAML: visual tokens per sample
    workers: int = 2
    cache: Path | None = field(default_factory=default_cache)  # None: no cache
    progress: bool = True

    def __post_init__(self) -> None:
        for path in self.manifests:
            if not path.is_file():
                raise UsageError(f"{path}: no such manifest")
        if self.workers < 1:
            raise UsageError(f"--workers must be at least 1, got {self.workers}")


@dataclass
class Line:
    """One manifest line: the sample, or why it could not be read."""

    number: int
    record: dict[str, Any] | None
    sample: Sample | None
    reason: str | None = None


@dataclass
class CheckResult:
    lines: dict[Path, list[Line]]
    probes: dict[Path, dict[str, Any]]  # video -> probe result
    outputs: dict[Path, tuple[Path, Path]]  # manifest -> (clean, rejected)
    report: str = ""

    @property
    def all_usable(self) -> bool:
        return all(line.reason is None for lines in self.lines.values() for line in lines)


# -- probing ----------------------------------------------------------------------------------------

def probe_video(path: str) -> dict[str, Any]:
    """In a worker: the header's facts and whether one frame decodes, or the reason it cannot."""
    from ..video import VideoReadError, probe, read_frames

    try:
        info = probe(path)
        if info.num_frames < 1 or info.fps <= 0:
            return {"ok": False, "reason": "no video frames (or no frame rate) in the video stream"}
        read_frames(path, num_frames=1, size=32)  # the middle frame, as captioning samples
    except VideoReadError as e:
        return {"ok": False, "reason": e.reason}
    except Exception as e:  # noqa: BLE001 - whatever a decoder raises is this file's problem
        return {"ok": False, "reason": f"{type(e).__name__}: {e}"}
    return {"ok": True, "duration": round(info.duration, 3), "fps": round(info.fps, 3), "num_frames": info.num_frames,
            "width": info.width, "height": info.height}


class ProbeCache:
    """Probe results keyed by (path, size, modification time), appended one JSON line at a time."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.known = path, {}
        if path is not None and path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                    self.known[(entry["path"], entry["size"], entry["mtime_ns"])] = entry["result"]
                except (ValueError, KeyError, TypeError):
                    continue  # a torn or foreign line: that file is probed again

    @staticmethod
    def key(video: Path) -> tuple[str, int, int] | None:
        try:
            st = video.stat()
        except OSError:
            return None
        return str(video.resolve()), st.st_size, st.st_mtime_ns

    def get(self, video: Path) -> dict[str, Any] | None:
        key = self.key(video)
        return self.known.get(key) if key else None

    def put(self, video: Path, result: dict[str, Any]) -> None:
        key = self.key(video)
        if self.path is None or key is None:
            return
        self.known[key] = result
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:  # one short line per write: appends do not interleave
            f.write(json_line({"path": key[0], "size": key[1], "mtime_ns": key[2], "result": result}))


def probe_all(videos: list[Path], options: CheckOptions) -> dict[Path, dict[str, Any]]:
    """Every video's probe result: from the cache, else from the worker processes."""
    from ..caption.reading import start_workers
    from ..progress import progress_bar

    cache = ProbeCache(options.cache)
    results: dict[Path, dict[str, Any]] = {}
    todo = []
    for video in videos:
        cached = cache.get(video)
        if not video.is_file():
            results[video] = {"ok": False, "reason": "not a file" if video.exists() else "no such file"}
        elif cached is not None:
            results[video] = cached
        else:
            todo.append(video)
    if not todo:
        return results
    bar = progress_bar(len(todo), "probing videos", "video", enabled=options.progress)
    pool = start_workers(min(options.workers, len(todo)), quiet=True)
    try:
        jobs = {pool.submit(probe_video, str(video)): video for video in todo}
        for job in futures.as_completed(jobs):
            video = jobs[job]
            try:
                results[video] = job.result()
            except futures.process.BrokenProcessPool:
                raise
            except Exception as e:  # noqa: BLE001 - a worker's exception belongs to its file
                results[video] = {"ok": False, "reason": f"{type(e).__name__}: {e}"}
            cache.put(video, results[video])
            bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return results


# -- lines and samples --------------------------------------------------------------------------------

def read_lines(manifest: Path) -> list[Line]:
    """Every non-empty line, parsed and validated on its own (a bad line does not hide the rest)."""
    return [Line(number, record if isinstance(record, dict) else None, sample, reason)
            for number, record, sample, reason in manifest_lines(manifest)]


def judge(line: Line, probes: dict[Path, dict[str, Any]]) -> str | None:
    """Why a parsed sample cannot be used, or None."""
    probe = probes[line.sample.video]
    if not probe["ok"]:
        return f"video {line.sample.video}: {probe['reason']}"
    if "events" in line.sample.extra:
        try:
            check_events(line.sample.extra["events"], probe["duration"])
        except ValueError as e:
            return str(e)
    return None


# -- visual tokens per sample ----------------------------------------------------------------------------

def visual_token_counter(source: Path) -> Callable[[dict[str, Any]], int]:
    """From a captioner folder, its captioner.json or a training YAML: probe result -> the visual
    tokens the captioner gives that video (its frame sampling, image tower grid and projector).
    The image tower is built with random weights and the projector on the meta device: no weights
    are read."""
    import torch

    from ..builder import CONFIG_FILE
    from ..config import CaptionerConfig
    from ..config_io import config_from_dict, load_config, read_config_file
    from ..processor import frames_within
    from ..video import VideoInfo, sample_indices
    from ..vision import VisionEncoder
    from projector import build_projector, projector_config_from_dict

    file = source / CONFIG_FILE if source.is_dir() else source
    if not file.is_file():
        raise UsageError(f"--captioner {source}: no captioner folder, captioner.json or training config there")
    if file.suffix in (".yaml", ".yml"):
        config = load_config(file).model
    else:
        config = config_from_dict(CaptionerConfig, read_config_file(file), where=str(file))
    vision = VisionEncoder(replace(config.vision, pretrained=None, tag=None))  # random weights: only its grid is used
    saved = file.parent / "projector" / "projector.json"
    if saved.exists():
        options = json.loads(saved.read_text(encoding="utf-8"))
    else:
        options = {"vision_hidden_size": vision.hidden_size, "text_hidden_size": 8, **config.projector}
    with torch.device("meta"):  # the projector's weights are never used either
        projector = build_projector(projector_config_from_dict(options, str(saved)))
    frames = config.frames
    limit = frames_within(frames.token_budget, lambda n: projector.num_output_tokens(n, vision.num_patches))

    def count(probe: dict[str, Any]) -> int:
        info = VideoInfo(probe["num_frames"], probe["fps"], probe["width"], probe["height"])
        n = len(sample_indices(info, frames.num_frames, frames.strategy, fps=frames.fps, max_frames=frames.max_frames,
                               min_frames=frames.min_frames, frame_limit=limit))
        return projector.num_output_tokens(n, vision.num_patches)

    return count


# -- the whole check --------------------------------------------------------------------------------

def check_dataset(options: CheckOptions, tokenizer=None) -> CheckResult:
    """Validate, probe, write the clean manifests and rejection lists, and build the report."""
    outputs = {}
    for manifest in options.manifests:  # refuse an unwritable or foreign output before any work
        folder = options.out_dir or manifest.parent
        stem = manifest.name.removesuffix(".jsonl")
        clean, rejected = folder / f"{stem}.clean.jsonl", folder / f"{stem}.rejected.jsonl"
        if clean.resolve() == manifest.resolve() or rejected.resolve() == manifest.resolve():
            raise UsageError(f"{manifest}: the check's outputs would replace the manifest itself; rename it")
        check_output_file(clean, "clean manifest", "--out-dir", is_ours=recognises(_read_manifest_output))
        check_output_file(rejected, "list of rejected samples", "--out-dir", is_ours=recognises(_read_rejected))
        outputs[manifest] = (clean, rejected)
    counter = visual_token_counter(options.captioner) if options.captioner else None
    lines = {manifest: read_lines(manifest) for manifest in options.manifests}
    videos = sorted({line.sample.video for ls in lines.values() for line in ls if line.sample is not None})
    probes = probe_all(videos, options)
    for manifest, ls in lines.items():
        for line in ls:
            if line.sample is not None:
                line.reason = judge(line, probes)
        clean, rejected = outputs[manifest]
        write_jsonl(clean, [_moved(line.record, line.sample.video, clean.parent) for line in ls if line.reason is None])
        write_jsonl(rejected, [{"line": line.number, "video": str(line.sample.video) if line.sample else None,
                                "reason": line.reason} for line in ls if line.reason is not None])
    result = CheckResult(lines, probes, outputs)
    result.report = format_report(result, tokenizer, counter)
    return result


def _moved(record: dict[str, Any], video: Path, folder: Path) -> dict[str, Any]:
    try:
        relative = os.path.relpath(video, folder)
    except ValueError:
        relative = str(video.resolve())
    return {**record, "video": relative}


def _read_manifest_output(path: Path) -> list:
    return read_jsonl(path, lambda r: isinstance(r, dict) and "video" in r, "video", "clean manifest")


def _read_rejected(path: Path) -> list:
    return read_jsonl(path, lambda r: isinstance(r, dict) and set(r) == {"line", "video", "reason"}, "line",
                      "list of rejected samples")


def _spread(values: list[float], digits: int = 0) -> str:
    if not values:
        return "-"
    shown = [round(v, digits) if digits else int(round(v)) for v in (min(values), statistics.median(values), max(values))]
    return " / ".join(str(v) for v in shown)


def format_report(result: CheckResult, tokenizer=None, counter: Callable[[dict[str, Any]], int] | None = None) -> str:
    """Markdown: one row per split and language, then the reasons samples were rejected."""
    if tokenizer is None:
        from qwen3_backbone.tokenizer import Qwen3Tokenizer

        tokenizer = Qwen3Tokenizer.load(None)
    header = ["split", "lang", "samples", "usable", "caption tokens min / median / max", "duration s min / median / max",
              "resolutions (most common)"] + (["visual tokens min / median / max"] if counter else [])
    rows = []
    for manifest, lines in result.lines.items():
        split = manifest.name.removesuffix(".jsonl")
        groups: dict[str, list[Line]] = {}
        for line in lines:
            groups.setdefault(line.sample.lang or "-" if line.sample else "(unreadable line)", []).append(line)
        for lang, group in sorted(groups.items()):
            usable = [line for line in group if line.reason is None]
            answers = [" ".join(a for _, a in line.sample.turns) for line in usable]
            tokens = [len(ids) for ids in tokenizer.encode_batch(answers)] if answers else []
            probes = [result.probes[line.sample.video] for line in usable]
            sizes = Counter(f"{p['width']}x{p['height']}" for p in probes)
            row = [split, lang, str(len(group)), str(len(usable)), _spread(tokens),
                   _spread([p["duration"] for p in probes], 1),
                   ", ".join(f"{size} ({n})" for size, n in sizes.most_common(3)) or "-"]
            if counter:
                row.append(_spread([counter(p) for p in probes]))
            rows.append(row)
    text = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    reasons = Counter(_kind(line.reason) for lines in result.lines.values() for line in lines if line.reason)
    if reasons:
        text += ["", "rejected samples, by reason:"] + [f"  {n:>6}  {reason}" for reason, n in reasons.most_common()]
    return "\n".join(text)


def _kind(reason: str) -> str:
    """A reason without the file it names, so that equal problems count together."""
    return reason.split(": ", 1)[1] if reason.startswith("video ") and ": " in reason else reason


# -- the `vcap data check` command ----------------------------------------------------------------------

def add_arguments(parser) -> None:
    from ..cli import positive_int

    parser.add_argument("manifests", nargs="+", help="manifests to check (each one a split, named by its file)")
    parser.add_argument("--out-dir", help="where NAME.clean.jsonl and NAME.rejected.jsonl go (default: beside each manifest)")
    parser.add_argument("--captioner", help="a captioner folder, captioner.json or training YAML: report the visual "
                                            "tokens each sample would get")
    parser.add_argument("--workers", type=positive_int, default=min(8, os.cpu_count() or 1),
                        help="probing processes (default: the CPUs, at most 8)")
    parser.add_argument("--cache", default=str(default_cache()), help="probe cache (default %(default)s)")
    parser.add_argument("--no-cache", action="store_true", help="probe every video again and cache nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    options = CheckOptions(tuple(Path(m) for m in args.manifests), Path(args.out_dir) if args.out_dir else None,
                           Path(args.captioner) if args.captioner else None, args.workers,
                           None if args.no_cache else Path(args.cache), progress=not args.quiet)
    result = check_dataset(options)
    print(result.report)
    for manifest, (clean, rejected) in result.outputs.items():
        lines = result.lines[manifest]
        bad = sum(1 for line in lines if line.reason)
        print(f"{manifest}: {len(lines) - bad} usable -> {clean}; {bad} not -> {rejected}")
    return 0 if result.all_usable else 1
