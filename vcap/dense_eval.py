"""Scoring dense captions (timed events) against reference events, offline and without an LLM judge.

For each clip, predicted events are matched to reference events by temporal IoU, one-to-one, best
IoU first (a greedy assignment over all pairs, highest tIoU taken first, ties broken by order).
Over a set of clips, per language:

- precision, recall and F1 at tIoU 0.3, 0.5 and 0.7: matched pairs at or above the threshold over
  all predicted events, over all reference events (summed over clips, not averaged per clip);
- ``mean_tiou``: the mean tIoU of the pairs matched at the lowest threshold (0.3);
- ``event_attribute_accuracy`` (with a judge): among the pairs matched at tIoU 0.5, the share whose
  predicted caption states every attribute of its reference event; and the same over reference
  events marked ``unseen_combination``;
- ``CIDEr-D``: for each threshold, CIDEr-D of the matched pairs' captions against their reference
  captions, then averaged over the thresholds (as ActivityNet's densevid_eval averages its
  caption metrics over tIoU thresholds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

THRESHOLDS = (0.3, 0.5, 0.7)
JUDGED_AT = 0.5


def tiou(a: dict[str, float], b: dict[str, float]) -> float:
    """Temporal intersection over union of two events' [start, end] spans."""
    inter = max(0.0, min(a["end"], b["end"]) - max(a["start"], b["start"]))
    union = max(a["end"], b["end"]) - min(a["start"], b["start"])
    return inter / union if union > 0 else 0.0


def match_events(predicted: Sequence[dict], reference: Sequence[dict], threshold: float) -> list[tuple[int, int, float]]:
    """One-to-one (predicted index, reference index, tIoU) pairs at or above ``threshold``, best first."""
    pairs = sorted(((tiou(p, r), i, j) for i, p in enumerate(predicted) for j, r in enumerate(reference)),
                   key=lambda t: (-t[0], t[1], t[2]))
    used_p, used_r, matched = set(), set(), []
    for iou, i, j in pairs:
        if iou < threshold or iou <= 0:
            break
        if i not in used_p and j not in used_r:
            used_p.add(i)
            used_r.add(j)
            matched.append((i, j, iou))
    return matched


def _prf(matched: int, predicted: int, reference: int) -> tuple[float, float, float]:
    p = matched / predicted if predicted else 0.0
    r = matched / reference if reference else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


EventJudge = Callable[[str, str, dict], "bool | None"]
"""judge(predicted caption, lang, reference event) -> whether it states every attribute the event
records (None: nothing to judge)."""


def dense_scores(clips: Sequence[dict[str, Any]], judge: EventJudge | None = None,
                 caption_score: Callable[[dict, dict], float] | None = None) -> dict[str, Any]:
    """Scores over ``clips``: dicts with ``lang``, ``predicted`` and ``reference`` (lists of events).
    ``caption_score(refs, hyps)`` -> CIDEr-D over {key: [ref]} / {key: hyp} (None: not computed)."""
    out: dict[str, Any] = {"clips": len(clips), "predicted_events": sum(len(c["predicted"]) for c in clips),
                           "reference_events": sum(len(c["reference"]) for c in clips)}
    matches = {t: [match_events(c["predicted"], c["reference"], t) for c in clips] for t in THRESHOLDS}  # once each
    cider = []
    for threshold in THRESHOLDS:
        refs, hyps, n = {}, {}, 0
        for k, clip in enumerate(clips):
            for i, j, _ in matches[threshold][k]:
                refs[(k, j)] = [clip["reference"][j]["caption"]]
                hyps[(k, j)] = clip["predicted"][i]["caption"]
                n += 1
        p, r, f = _prf(n, out["predicted_events"], out["reference_events"])
        out[f"precision@{threshold}"], out[f"recall@{threshold}"], out[f"F1@{threshold}"] = p, r, f
        if caption_score is not None:
            cider.append(caption_score(refs, hyps) if hyps else 0.0)
    if caption_score is not None:
        out["CIDEr-D"] = sum(cider) / len(cider)
    loose = [iou for pairs in matches[THRESHOLDS[0]] for _, _, iou in pairs]
    out["mean_tiou"] = sum(loose) / len(loose) if loose else 0.0
    if judge is not None:
        verdicts, unseen = [], []
        for clip, pairs in zip(clips, matches[JUDGED_AT]):
            for i, j, _ in pairs:
                event = clip["reference"][j]
                verdict = judge(clip["predicted"][i]["caption"], clip["lang"], event)
                if verdict is not None:
                    verdicts.append(bool(verdict))
                    if event.get("unseen_combination"):
                        unseen.append(bool(verdict))
        if verdicts:
            out["event_attribute_accuracy"] = sum(verdicts) / len(verdicts)
        if unseen:
            out["event_attribute_accuracy_unseen"] = sum(unseen) / len(unseen)
    return out
