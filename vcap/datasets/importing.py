"""``vcap data import FORMAT SOURCE --videos DIR --out MANIFEST.jsonl``: a public caption dataset
or a fine-tuning framework's file -> a vcap manifest. Formats: msrvtt, vatex, activitynet,
youcook2, webvid, llava-video, sharegpt (LLaMA-Factory / ms-swift), sharegpt4video; the README's
"Your data" section shows each one's layout and where its videos are looked for.

Each caption becomes one manifest line (MSR-VTT's 20 captions of a video are 20 samples; every
epoch sees each of them once). A conversation stays one sample, written as vcap's
``conversations``; events (ActivityNet, YouCook2) are kept as ``events`` with the target text the
model learns (one ``m:ss.s - m:ss.s: caption`` line per event) as the caption. A caption's
language is ``--lang``, or with ``--lang auto`` detected per caption: Hangul means Korean, other
CJK scripts are languages vcap does not caption (skipped and counted), anything else English.

A malformed record is reported with the file and its JSON path or CSV line and skipped (exit 1).
Records whose video file is missing are counted and listed in ``MANIFEST.missing.jsonl``; with
``--strict`` either stops the import before anything is written. The manifest is written
atomically; video paths in it are relative to its folder.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..caption.discovery import VIDEO_EXTENSIONS
from ..config import LANGS
from ..data import VIDEO_MARKER
from ..errors import UsageError
from ..events import events_text
from ..outputs import check_output_file, read_jsonl, recognises, write_jsonl
from .formats import READERS, SPLITS, Record, RecordError

HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\uac00-\ud7a3]")
OTHER_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]")  # kana and Han ideographs


def detect_lang(text: str) -> str | None:
    """'ko' for text with Hangul, None for other CJK text (Chinese, Japanese), else 'en'."""
    if HANGUL.search(text):
        return "ko"
    return None if OTHER_CJK.search(text) else "en"


@dataclass(frozen=True)
class ImportOptions:
    format: str
    source: Path
    videos: Path  # the folder the dataset's videos are under
    out: Path  # the manifest to write
    lang: str = "auto"  # ko | en | auto
    split: str | None = None
    strict: bool = False

    def __post_init__(self) -> None:
        if self.format not in READERS:
            raise UsageError(f"unknown format {self.format!r}; choose one of {', '.join(READERS)}")
        if self.lang not in (*LANGS, "auto"):
            raise UsageError(f"--lang must be ko, en or auto, got {self.lang!r}")
        if self.split is not None and self.split not in SPLITS.get(self.format, ()):
            known = SPLITS.get(self.format)
            raise UsageError(f"--split {self.split!r}: " + (f"{self.format} has the splits {', '.join(known)}"
                                                            if known else f"{self.format} has no splits"))
        if not self.source.is_file():
            raise UsageError(f"{self.source}: no such file")
        if not self.videos.is_dir():
            raise UsageError(f"--videos {self.videos}: no such folder")


@dataclass
class ImportReport:
    samples: int = 0
    records: int = 0
    malformed: list[RecordError] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)  # {where, looked_for}
    skipped_lang: Counter = field(default_factory=Counter)  # why -> captions skipped for their language
    missing_file: Path | None = None


class VideoFinder:
    """Finds a record's video under a folder: its candidate paths first, then (indexed once) any
    video file with the same name stem below the folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._by_stem: dict[str, list[Path]] | None = None

    def find(self, candidates: list[str]) -> Path | None:
        for candidate in candidates:
            path = Path(candidate) if os.path.isabs(candidate) else self.root / candidate
            if path.is_file():
                return path
        if self._by_stem is None:
            self._by_stem = {}
            for folder, _, files in os.walk(self.root):
                for name in files:
                    if name.lower().endswith(VIDEO_EXTENSIONS):
                        self._by_stem.setdefault(Path(name).stem, []).append(Path(folder) / name)
        for candidate in candidates:
            found = sorted(self._by_stem.get(Path(candidate).stem, []))
            if found:
                return found[0]
        return None


def import_dataset(options: ImportOptions) -> ImportReport:
    """Read the source, find the videos, write the manifest (unless ``strict`` found a problem)."""
    check_output_file(options.out, "manifest", "--out", is_ours=recognises(_read_import))
    missing_file = options.out.with_name(options.out.name + ".missing.jsonl")
    check_output_file(missing_file, "list of missing videos", "--out", is_ours=recognises(_read_missing))
    finder, report, lines = VideoFinder(options.videos), ImportReport(), []
    for item in READERS[options.format](options.source, options.split):
        if isinstance(item, RecordError):
            report.malformed.append(item)
            continue
        report.records += 1
        report.skipped_lang.update(item.skipped)
        video = finder.find(item.videos)
        if video is None:
            report.missing.append({"where": item.where, "looked_for": item.videos})
            continue
        lines += _lines(item, _relative(video, options.out.parent), options.lang, report)
    if options.strict and (report.malformed or report.missing):
        return report
    report.samples = len(lines)
    if report.missing:
        report.missing_file = write_jsonl(missing_file, [{"source": str(options.source), **m} for m in report.missing])
    elif missing_file.exists():
        missing_file.unlink()  # ours, from an earlier import: it would list videos found since
    write_jsonl(options.out, lines)
    return report


def _relative(video: Path, base: Path) -> str:
    try:
        return os.path.relpath(video, base)
    except ValueError:  # another drive (Windows)
        return str(video.resolve())


def _lines(item: Record, video: str, lang_option: str, report: ImportReport) -> list[dict[str, Any]]:
    """The manifest lines of one record (one per caption, or one conversation or event list)."""
    base = {"video": video}
    source = {"source": item.source} if item.source else {}
    if item.conversation is not None:
        lang = _language(" ".join(a for _, a in item.conversation), item.lang, lang_option, report)
        if lang is None:
            return []
        turns = []
        for k, (question, answer) in enumerate(item.conversation):
            value = f"{VIDEO_MARKER}\n{question}".rstrip() if k == 0 else question
            turns += [{"from": "human", "value": value}, {"from": "gpt", "value": answer}]
        return [{**base, "conversations": turns, "lang": lang, **source}]
    if item.events is not None:
        lang = _language(" ".join(e["caption"] for e in item.events), item.lang, lang_option, report)
        if lang is None:
            return []
        return [{**base, "caption": events_text(item.events), "lang": lang, "events": item.events,
                 "duration": item.duration, **source}]
    lines = []
    for caption in item.captions:
        lang = _language(caption, item.lang, lang_option, report)
        if lang is not None:
            lines.append({**base, "caption": caption, "lang": lang, **source})
    return lines


def _language(text: str, stated: str | None, option: str, report: ImportReport) -> str | None:
    if option != "auto":
        return option
    lang = stated or detect_lang(text)
    if lang is None:
        report.skipped_lang["not Korean or English (Chinese or Japanese script)"] += 1
    return lang


def _is_import_line(record: Any) -> bool:
    return isinstance(record, dict) and "video" in record and isinstance(record.get("source"), dict)


def _is_missing_line(record: Any) -> bool:
    return isinstance(record, dict) and {"source", "where", "looked_for"} <= set(record)


def _read_import(path: Path) -> list:
    return read_jsonl(path, _is_import_line, "video", "manifest")


def _read_missing(path: Path) -> list:
    return read_jsonl(path, _is_missing_line, "source", "list of missing videos")


# -- the `vcap data import` command ---------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("format", choices=list(READERS), help="the source's format")
    parser.add_argument("source", help="the dataset's annotation file (JSON, JSONL or CSV)")
    parser.add_argument("--videos", required=True, help="the folder the dataset's video files are under")
    parser.add_argument("--out", required=True, help="the manifest to write (JSONL)")
    parser.add_argument("--lang", default="auto", choices=["auto", *LANGS],
                        help="the captions' language (default auto: Hangul -> ko, other CJK skipped, else en)")
    parser.add_argument("--split", help="msrvtt: train|validate|test; youcook2: training|validation|testing (default: all)")
    parser.add_argument("--strict", action="store_true",
                        help="a malformed record or a missing video stops the import (nothing is written)")


def run(args) -> int:
    import sys

    options = ImportOptions(args.format, Path(args.source), Path(args.videos), Path(args.out), args.lang, args.split,
                            args.strict)
    report = import_dataset(options)
    for problem in report.malformed[:20]:
        print(f"{options.source}: {problem.where}: {problem.message}", file=sys.stderr)
    if len(report.malformed) > 20:
        print(f"{options.source}: ... and {len(report.malformed) - 20} more malformed records", file=sys.stderr)
    for why, n in report.skipped_lang.items():
        print(f"skipped {n} caption(s): {why}; vcap captions in Korean and English", file=sys.stderr)
    if options.strict and (report.malformed or report.missing):
        print(f"--strict: {len(report.malformed)} malformed record(s), {len(report.missing)} missing video(s); "
              f"nothing written", file=sys.stderr)
        return 1
    missing = f", {len(report.missing)} record(s) without their video (listed in {report.missing_file})" \
        if report.missing else ""
    print(f"{options.out}: {report.samples} samples from {report.records} records{missing}"
          + (f", {len(report.malformed)} malformed record(s) skipped" if report.malformed else ""))
    return 1 if report.malformed else 0
