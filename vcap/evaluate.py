"""``vcap eval CAPTIONER_DIR MANIFEST``: caption a manifest's videos and score them.

Metrics come from pycocoevalcap, the COCO caption evaluation code (pure Python for BLEU-4,
ROUGE-L and CIDEr-D). METEOR is opt-in (``--meteor``): it runs a Java jar (about 45 s to start),
needs Java installed, and is reported for English only, since its synonym and stemming tables
are English. The Java PTB tokenizer is not used; captions are tokenized here:
- English: lower-cased words and numbers (punctuation dropped), as the PTB tokenizer leaves them;
- Korean: morphemes from Kiwi (kiwipiepy, offline), so particles and endings count as their own
  tokens ("배경에서" -> "배경", "에서"); whitespace words would make every particle a mismatch.
Scores are computed per language and overall; CIDEr-D's document frequencies come from the
evaluated set, as in the COCO evaluation.

With a judge (``--judge``; by default the synthetic clips' judge for manifests whose samples carry
``attributes``) it also reports attribute accuracy: the share of captions that state every
attribute of their clip, per language, and separately for combinations held out of training.

Samples with ``events`` (dense captions) are scored as events too: the model's text is read with
``vcap.events.parse_events`` and matched to the reference events by temporal IoU
(``vcap.dense_eval``: precision, recall and F1 at tIoU 0.3 / 0.5 / 0.7, mean tIoU, CIDEr-D of the
matched captions, and with a judge the attribute accuracy of matched events), per language,
overall and over the clips with an unseen combination.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .cli import JUDGES, add_captioner_options, load_judge, open_captioner, positive_int
from .config import LANGS
from .generation import GenerationOptions
from .errors import UsageError
from .outputs import check_output_file, read_jsonl, recognises, write_json, write_jsonl

WORD = re.compile(r"[\w']+", re.UNICODE)
PUNCTUATION_TAGS = {"SF", "SP", "SS", "SSO", "SSC", "SE", "SO", "SW"}  # Kiwi's punctuation and symbol tags


class Tokenizer:
    """Metric tokenization per language (Kiwi loaded once, on first Korean text)."""

    def __init__(self) -> None:
        self._kiwi = None

    def __call__(self, text: str, lang: str) -> str:
        if lang == "ko":
            if self._kiwi is None:
                from kiwipiepy import Kiwi

                self._kiwi = Kiwi()
            return " ".join(t.form for t in self._kiwi.tokenize(text) if t.tag not in PUNCTUATION_TAGS)
        return " ".join(WORD.findall(text.lower()))


def caption_scores(references: dict[Any, list[str]], hypotheses: dict[Any, str], with_meteor: bool = False) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L, CIDEr-D (and METEOR when asked for; it needs Java) over pre-tokenized captions."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if not hypotheses:
        return {}
    gts = {k: references[k] for k in hypotheses}
    res = {k: [hypotheses[k] if hypotheses[k].strip() else "<empty>"] for k in hypotheses}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}
    scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr-D"] = float(Cider().compute_score(gts, res)[0])
    if with_meteor:
        if shutil.which("java") is None:
            raise UsageError("METEOR needs Java (e.g. apt-get install default-jre); run without --meteor")
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = Meteor()
        try:
            scores["METEOR"] = float(meteor.compute_score(gts, res)[0])
        finally:
            meteor.close() if hasattr(meteor, "close") else None
    return scores


Judge = Callable[[str, str, Any], "bool | None"]
"""judge(caption, lang, sample) -> whether the caption states every fact the sample records (None:
nothing to judge). The synthetic clips' judge (vcap.recipes.synthetic.judge_attributes) reads the
attributes back; ``vcap eval --judge`` names one."""


def evaluate(captioner, manifest: str | os.PathLike, out_jsonl: str | os.PathLike | None = None, *,
             batch_size: int = 8, thinking: bool = False, max_new_tokens: int | None = None, progress: bool = True,
             with_meteor: bool = False, judge: Judge | None = None) -> dict[str, Any]:
    """Caption every (video, language) of a manifest and score against its captions. ``out_jsonl``
    is checked before any captioning (a path vcap may not or cannot write stops it at once).
    With ``judge``, each caption is also judged, and the report gives the share judged correct
    (``attribute_accuracy``, and ``attribute_accuracy_unseen`` over samples marked
    ``unseen_combination`` in the manifest)."""
    if out_jsonl is not None:
        check_output_file(out_jsonl, "per-caption evaluation (JSONL)", "--out", is_ours=recognises(read_rows))
    options = {lang: GenerationOptions(lang=lang, thinking=thinking, max_new_tokens=max_new_tokens) for lang in LANGS}
    # samples with events are asked for their events (the dense instruction) and read as events
    rows = caption_manifest(captioner, manifest, options, batch_size=batch_size, progress=progress, judge=judge)
    if out_jsonl is not None:
        write_jsonl(out_jsonl, rows)
    return score(rows, manifest, with_meteor, judge)


def caption_manifest(captioner, manifest: str | os.PathLike, options: dict[str, GenerationOptions], *,
                     batch_size: int = 8, progress: bool = True, judge: Judge | None = None) -> list[dict[str, Any]]:
    """One row per (video, language) of the manifest: the caption and its references (or the error)."""
    from .data import read_manifest
    from .progress import progress_bar
    from .video import VideoReadError

    groups: dict[tuple[Path, str, bool], list] = defaultdict(list)
    for sample in read_manifest(manifest, captioner.config.instructions, captioner.config.dense_instructions):
        groups[(sample.video, sample.lang or "en", "events" in sample.extra)].append(sample)
    rows: list[dict[str, Any]] = []
    bar = progress_bar(len(groups), "evaluate", "caption", enabled=progress)
    for lang, dense in [(lang, dense) for lang in LANGS for dense in (False, True)]:
        todo = [k for k in groups if k[1:] == (lang, dense)]
        asked = replace(options[lang], dense=dense)
        for start in range(0, len(todo), batch_size):
            clips, kept = [], []
            for key in todo[start : start + batch_size]:
                try:
                    clips.append(captioner.read(str(key[0])))
                    kept.append(key)
                except VideoReadError as e:
                    rows.append({"video": str(key[0]), "lang": lang, "status": "error", "error": e.reason})
            results = captioner.caption_frames(clips, asked, sources=[str(k[0]) for k in kept]) if clips else []
            rows += [_row(key, result, groups[key], asked, judge) for key, result in zip(kept, results)]
            bar.update(len(todo[start : start + batch_size]))
    bar.close()
    return rows


def _row(key, result, samples, options: GenerationOptions, judge: Judge | None) -> dict[str, Any]:
    row = {"video": str(key[0]), "lang": key[1], "status": "ok", "caption": result.caption,
           "references": [s.caption for s in samples]}
    if options.thinking:
        row["thinking"] = result.thinking
    if "events" in samples[0].extra:  # dense captions: judged event by event in score()
        row.update(events=result.events, unreadable_lines=result.unreadable_lines,
                   reference_events=samples[0].extra["events"],
                   unseen_combination=any(e.get("unseen_combination") for e in samples[0].extra["events"]))
        return row
    verdict = judge(result.caption, key[1], samples[0]) if judge is not None else None
    if verdict is not None:
        row["attributes_correct"] = bool(verdict)
        row["unseen_combination"] = bool(samples[0].extra.get("unseen_combination", False))
    return row


def score(rows: list[dict[str, Any]], manifest: str | os.PathLike, with_meteor: bool = False,
          judge: Judge | None = None) -> dict[str, Any]:
    """The report: caption metrics per language and overall, the judged accuracy if any, and for
    samples with events the dense-caption scores (``dense``, and ``dense_unseen`` over the clips
    with an unseen combination)."""
    tokenize = Tokenizer()
    report: dict[str, Any] = {"manifest": str(manifest), "captions": len(rows),
                              "errors": sum(r["status"] == "error" for r in rows)}
    ok = [r for r in rows if r["status"] == "ok"]
    for lang in (*LANGS, "all"):
        part = [r for r in ok if lang == "all" or r["lang"] == lang]
        if not part:
            continue
        refs = {i: [tokenize(c, r["lang"]) for c in r["references"]] for i, r in enumerate(part)}
        hyps = {i: tokenize(r["caption"], r["lang"]) for i, r in enumerate(part)}
        entry: dict[str, Any] = {"n": len(part), **caption_scores(refs, hyps, with_meteor and lang == "en")}
        judged = [r for r in part if "attributes_correct" in r]
        if judged:
            entry["attribute_accuracy"] = sum(r["attributes_correct"] for r in judged) / len(judged)
            unseen = [r for r in judged if r.get("unseen_combination")]
            if unseen:
                entry["attribute_accuracy_unseen"] = sum(r["attributes_correct"] for r in unseen) / len(unseen)
        dense = [r for r in part if "reference_events" in r]
        if dense:
            entry["dense"] = _dense(dense, tokenize, judge)
            unseen = [r for r in dense if r["unseen_combination"]]
            if unseen:
                entry["dense_unseen"] = _dense(unseen, tokenize, judge)
        report[lang] = entry
    return report


def _dense(rows: list[dict[str, Any]], tokenize: Tokenizer, judge: Judge | None) -> dict[str, Any]:
    """vcap.dense_eval's scores for rows with events; a judge sees each reference event as a sample
    whose ``extra`` is the event (its ``attributes``)."""
    from types import SimpleNamespace

    from .dense_eval import dense_scores

    clips = [{"lang": r["lang"], "predicted": r["events"], "reference": r["reference_events"]} for r in rows]

    def cider(refs: dict, hyps: dict) -> float:  # keys (clip, event): each caption tokenized in its clip's language
        lang = {key: clips[key[0]]["lang"] for key in hyps}
        return caption_scores({k: [tokenize(c, lang[k]) for c in v] for k, v in refs.items()},
                              {k: tokenize(v, lang[k]) for k, v in hyps.items()})["CIDEr-D"]

    event_judge = (lambda caption, lang, event: judge(caption, lang, SimpleNamespace(extra=event))) if judge else None
    return {**dense_scores(clips, event_judge, cider),
            "unreadable_lines": sum(len(r["unreadable_lines"]) for r in rows)}


def is_eval_row(row: Any) -> bool:
    return isinstance(row, dict) and {"video", "lang", "status"} <= row.keys()


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a per-caption evaluation file vcap wrote (OutputError for any other file)."""
    return read_jsonl(Path(path), is_eval_row, "video", "per-caption evaluation")


def _is_report(path: Path) -> bool:
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(report, dict) and {"manifest", "captions", "errors"} <= report.keys()


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{report['captions']} captions from {report['manifest']} ({report['errors']} unreadable videos)"]
    columns = ["n", "BLEU-4", "ROUGE-L", "CIDEr-D", "METEOR", "attribute_accuracy", "attribute_accuracy_unseen"]
    present = [c for c in columns if any(c in report.get(lang, {}) for lang in ("ko", "en", "all"))]
    lines.append("| lang | " + " | ".join(present) + " |")
    lines.append("|---" * (len(present) + 1) + "|")
    for lang in ("ko", "en", "all"):
        if lang in report:
            cells = []
            for c in present:
                v = report[lang].get(c)
                cells.append("" if v is None else (str(v) if c == "n" else f"{v:.3f}"))
            lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    dense = [(lang, part, report[lang][part]) for lang in ("ko", "en", "all") for part in ("dense", "dense_unseen")
             if part in report.get(lang, {})]
    if dense:
        columns = ["F1@0.3", "F1@0.5", "F1@0.7", "precision@0.5", "recall@0.5", "mean_tiou", "CIDEr-D",
                   "event_attribute_accuracy"]
        present = [c for c in columns if any(c in d for _, _, d in dense)]
        lines += ["", "dense captions (events matched by temporal IoU):",
                  "| lang | clips | events predicted / reference | " + " | ".join(present) + " |",
                  "|---" * (len(present) + 3) + "|"]
        for lang, part, d in dense:
            name = lang + (" (unseen)" if part == "dense_unseen" else "")
            cells = ["" if d.get(c) is None else f"{d[c]:.3f}" for c in present]
            lines.append(f"| {name} | {d['clips']} | {d['predicted_events']} / {d['reference_events']} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- the `vcap eval` command ---------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("captioner", help="a captioner folder (from vcap export or make quickstart)")
    parser.add_argument("manifest", help="a JSONL manifest with reference captions")
    parser.add_argument("--out", help="per-sample outputs as JSONL (default: <manifest>.eval.jsonl)")
    parser.add_argument("--report", help="also write the metrics as JSON here")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--thinking", action="store_true", help="generate with thinking on")
    parser.add_argument("--max-new-tokens", type=positive_int)
    add_captioner_options(parser)
    parser.add_argument("--meteor", action="store_true",
                        help="also report METEOR for English (needs Java; its jar takes ~45 s to start)")
    parser.add_argument("--no-meteor", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    parser.add_argument("--judge", choices=["auto", "none", *JUDGES], default="auto",
                        help="also judge each caption's facts: auto (the synthetic-attributes judge for manifests "
                             "with attributes), none, or a judge by name")
    parser.add_argument("--quiet", action="store_true")


def _judge(name: str, manifest: str) -> Judge | None:
    """``--judge``: a judge by name; ``auto`` picks the synthetic clips' judge when the manifest's
    samples (or their events) carry ``attributes``."""
    from .data import read_manifest

    if name == "auto":
        has_attributes = any("attributes" in s.extra or any("attributes" in e for e in s.extra.get("events", ()))
                             for s in read_manifest(manifest))
        name = "synthetic-attributes" if has_attributes else "none"
    return None if name == "none" else load_judge(name)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out or Path(args.manifest).with_suffix(".eval.jsonl"))
    check_output_file(out, "per-caption evaluation (JSONL)", "--out", is_ours=recognises(read_rows))  # before any work
    if args.report:
        check_output_file(args.report, "evaluation report (JSON)", "--report", is_ours=_is_report)
    if args.meteor and shutil.which("java") is None:
        raise UsageError("--meteor needs Java (e.g. apt-get install default-jre)")
    judge = _judge(args.judge, args.manifest)
    captioner = open_captioner(args)
    report = evaluate(captioner, args.manifest, out, batch_size=args.batch_size, thinking=args.thinking,
                      max_new_tokens=args.max_new_tokens, progress=not args.quiet, with_meteor=args.meteor, judge=judge)
    print(format_report(report))
    print(f"per-sample outputs: {out}")
    if args.report:
        write_json(args.report, report)
    return 0 if report["errors"] == 0 else 1
