"""The formats ``vcap data import`` reads, each as documented by its dataset or framework.

Every reader takes the source file (and the split asked for) and yields, per record, either a
:class:`Record` (where its video may be, its captions or conversation, its events) or a
:class:`RecordError` naming the record by its JSON path or CSV line. A source that is not the
format at all (not JSON, a list where an object belongs) raises :class:`FormatError`.

| format | source | captions | video file (under ``--videos``) |
|---|---|---|---|
| msrvtt | ``train_val_videodatainfo.json`` / ``test_videodatainfo.json`` | ``sentences[].caption`` | ``{video_id}.mp4`` |
| vatex | JSON list of ``{videoID, enCap, chCap}`` | ``enCap`` (``chCap`` is Chinese: skipped) | ``{videoID}.mp4`` |
| activitynet | ``{id: {duration, timestamps, sentences}}`` | events | ``{id}.mp4``, or without ``v_`` |
| youcook2 | ``{"database": {id: {annotations, duration, subset}}}`` | events | ``{id}.mp4`` anywhere below |
| webvid | CSV ``videoid, contentUrl, duration, page_dir, name`` | ``name`` | ``{page_dir}/{videoid}.mp4`` |
| llava-video | JSON list of ``{id, conversations, data_source, video}`` | the conversation | ``{video}`` |
| sharegpt | JSON list (or JSONL) of ``{messages, videos}`` | the conversation | ``{videos[0]}`` |
| sharegpt4video | JSONL of ``{video_id, video_path?, captions: [{idx, content}]}`` | ``idx == -1`` | ``{video_path}`` or ``{video_id}.mp4`` |

When none of a record's candidate paths exists, a file with the same name stem (any video
extension) anywhere under ``--videos`` is used.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..events import check_events


class FormatError(UsageError, ValueError):
    """The source file is not in the format asked for."""


@dataclass
class RecordError:
    where: str  # the record's JSON path ("sentences[12]") or CSV line ("line 7")
    message: str


@dataclass
class Record:
    where: str
    videos: list[str]  # candidate paths, relative to --videos (or absolute); the first found is used
    captions: list[str] = field(default_factory=list)  # one sample each
    conversation: list[tuple[str, str]] | None = None  # (question, answer) pairs; the video goes with the first
    events: list[dict[str, Any]] | None = None  # dense captions: {start, end, caption}
    duration: float | None = None
    lang: str | None = None  # the language the format states (None: from --lang or detected)
    source: dict[str, Any] = field(default_factory=dict)  # the dataset's own ids, kept in the manifest
    skipped: dict[str, int] = field(default_factory=dict)  # captions left out for their language: why -> count


Reader = Callable[[Path, "str | None"], Iterator["Record | RecordError"]]
SPLITS: dict[str, tuple[str, ...]] = {"msrvtt": ("train", "validate", "test"),
                                      "youcook2": ("training", "validation", "testing")}
PLACEHOLDERS = {"llava-video": "<image>", "sharegpt": "<video>"}  # where the video goes in a turn


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def _jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) per non-empty line; a line that is not JSON yields (where, RecordError)."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield f"line {number}", json.loads(line)
                except json.JSONDecodeError as e:
                    yield f"line {number}", RecordError(f"line {number}", f"not valid JSON ({e.msg})")


def _text(value: Any) -> str | None:
    return " ".join(value.split()) if isinstance(value, str) and value.strip() else None


def _number(value: Any) -> float | None:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _expect(data: Any, kind: type, path: Path, what: str) -> Any:
    if not isinstance(data, kind):
        raise FormatError(f"{path}: expected {what}, found a JSON {type(data).__name__}")
    return data


# -- the public caption datasets --------------------------------------------------------------------

def read_msrvtt(path: Path, split: str | None) -> Iterator[Record | RecordError]:
    data = _expect(_load_json(path), dict, path, "an object with 'videos' and 'sentences' (MSR-VTT videodatainfo)")
    videos, sentences = data.get("videos"), data.get("sentences")
    if not isinstance(videos, list) or not isinstance(sentences, list):
        raise FormatError(f"{path}: MSR-VTT's videodatainfo has 'videos' and 'sentences' lists")
    chosen: dict[str, dict] = {}
    for i, video in enumerate(videos):
        if not isinstance(video, dict) or not isinstance(video.get("video_id"), str):
            yield RecordError(f"videos[{i}]", "needs a 'video_id'")
        elif split is None or video.get("split") == split:
            chosen[video["video_id"]] = video
    for i, sentence in enumerate(sentences):
        where = f"sentences[{i}]"
        if not isinstance(sentence, dict) or not isinstance(sentence.get("video_id"), str):
            yield RecordError(where, "needs 'video_id' and 'caption'")
            continue
        video = chosen.get(sentence["video_id"])
        if video is None:
            if split is None:
                yield RecordError(where, f"video_id {sentence['video_id']!r} is not in 'videos'")
            continue  # another split's sentence
        caption = _text(sentence.get("caption"))
        if caption is None:
            yield RecordError(where, "'caption' must be non-empty text")
            continue
        start, end = _number(video.get("start time")), _number(video.get("end time"))
        yield Record(where, [f"{video['video_id']}.mp4"], [caption],
                     duration=end - start if start is not None and end is not None and end > start else None,
                     source={"dataset": "msrvtt", "video_id": video["video_id"], "sen_id": sentence.get("sen_id"),
                             "split": video.get("split")})


def read_vatex(path: Path, split: str | None) -> Iterator[Record | RecordError]:
    for where, item in _records(path, "a list of {videoID, enCap, chCap} (VATEX)"):
        if isinstance(item, RecordError):
            yield item
        elif not isinstance(item, dict) or not isinstance(item.get("videoID"), str) or not item["videoID"]:
            yield RecordError(where, "needs a 'videoID' (\"<youtube id>_<start>_<end>\")")
        else:
            yield _vatex(where, item)


def _vatex(where: str, item: dict) -> Record | RecordError:
    captions = item.get("enCap")
    if not isinstance(captions, list) or not captions or any(_text(c) is None for c in captions):
        return RecordError(where, "'enCap' must be a list of non-empty captions")
    chinese = item.get("chCap")
    return Record(where, [f"{item['videoID']}.mp4"], [_text(c) for c in captions],
                  source={"dataset": "vatex", "videoID": item["videoID"]},
                  skipped={"Chinese (VATEX chCap)": len(chinese)} if isinstance(chinese, list) and chinese else {})


def _dense(where: str, video_id: str, duration: Any, pairs: list[tuple[Any, Any]], dataset: str,
           extra: dict[str, Any]) -> Record | RecordError:
    """A dense-captioning record from (segment, sentence) pairs, validated as vcap events."""
    seconds = _number(duration)
    events = []
    for segment, sentence in pairs:
        if not (isinstance(segment, list) and len(segment) == 2):
            return RecordError(where, f"each segment must be [start, end] in seconds, got {segment!r}")
        events.append({"start": _number(segment[0]), "end": _number(segment[1]), "caption": sentence})
    try:
        events = check_events(events, seconds)
    except ValueError as e:
        return RecordError(where, str(e))
    candidates = [f"{video_id}.mp4"] + ([f"{video_id[2:]}.mp4"] if video_id.startswith("v_") else [])
    return Record(where, candidates, events=events, duration=seconds, source={"dataset": dataset, "id": video_id, **extra})


def read_activitynet(path: Path, split: str | None) -> Iterator[Record | RecordError]:
    data = _expect(_load_json(path), dict, path, "an object keyed by video id (ActivityNet Captions)")
    for video_id, item in data.items():
        where = f"[{json.dumps(video_id)}]"
        if not isinstance(item, dict):
            yield RecordError(where, "must be an object with 'duration', 'timestamps' and 'sentences'")
            continue
        stamps, sentences = item.get("timestamps"), item.get("sentences")
        if not isinstance(stamps, list) or not isinstance(sentences, list) or len(stamps) != len(sentences):
            yield RecordError(where, "'timestamps' and 'sentences' must be lists of the same length")
            continue
        yield _dense(where, video_id, item.get("duration"), list(zip(stamps, sentences)), "activitynet", {})


def read_youcook2(path: Path, split: str | None) -> Iterator[Record | RecordError]:
    data = _expect(_load_json(path), dict, path, "an object with 'database' (YouCook2 annotations)")
    database = data.get("database")
    if not isinstance(database, dict):
        raise FormatError(f"{path}: YouCook2's annotation file has a 'database' object keyed by video id")
    for video_id, item in database.items():
        where = f"database[{json.dumps(video_id)}]"
        if not isinstance(item, dict) or not isinstance(item.get("annotations"), list):
            yield RecordError(where, "must be an object with an 'annotations' list")
            continue
        if split is not None and item.get("subset") != split:
            continue
        pairs = []
        for j, a in enumerate(item["annotations"]):
            if not isinstance(a, dict):
                yield RecordError(f"{where}.annotations[{j}]", "must be an object with 'segment' and 'sentence'")
                break
            pairs.append((a.get("segment"), a.get("sentence")))
        else:
            yield _dense(where, video_id, item.get("duration"), pairs, "youcook2",
                         {"subset": item.get("subset"), "recipe_type": item.get("recipe_type")})


WEBVID_COLUMNS = ("videoid", "contentUrl", "duration", "page_dir", "name")


def read_webvid(path: Path, split: str | None) -> Iterator[Record | RecordError]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("videoid", "page_dir", "name") if c not in (reader.fieldnames or [])]
        if missing:
            raise FormatError(f"{path}: a WebVid CSV has the columns {', '.join(WEBVID_COLUMNS)}; "
                              f"missing {', '.join(missing)}")
        for row in reader:
            where = f"line {reader.line_num}"
            video_id, page_dir, caption = row.get("videoid"), row.get("page_dir"), _text(row.get("name"))
            if not video_id or caption is None or None in row:  # None key: more fields than the header
                yield RecordError(where, "needs 'videoid' and a non-empty 'name' (and no extra fields)")
                continue
            candidates = [f"{page_dir}/{video_id}.mp4"] if page_dir else []
            yield Record(where, candidates + [f"{video_id}.mp4"], [caption], duration=_parse_webvid_duration(row),
                         source={"dataset": "webvid", "videoid": video_id})


def _parse_webvid_duration(row: dict) -> float | None:
    """WebVid writes durations as ISO 8601 ('PT00H00M11S'); plain seconds are accepted too."""
    text = (row.get("duration") or "").strip()
    if text.startswith("PT"):
        total, number = 0.0, ""
        for ch in text[2:]:
            if ch.isdigit() or ch == ".":
                number += ch
            elif ch in "HMS" and number:
                total += float(number) * {"H": 3600, "M": 60, "S": 1}[ch]
                number = ""
        return total or None
    return _number(text)


# -- the fine-tuning frameworks' formats --------------------------------------------------------------

def _turns(where: str, turns: list[tuple[Any, Any]], placeholder: str) -> list[tuple[str, str]] | RecordError:
    """(question, answer) pairs of text; the video placeholder is taken out of the first question
    (where a video goes) and may appear nowhere else."""
    pairs = []
    for k, (question, answer) in enumerate(turns):
        if not isinstance(question, str) or _text(answer) is None:
            return RecordError(where, f"turn {k}: the question must be text and the answer non-empty text")
        if placeholder in question and k > 0 or placeholder in answer:
            return RecordError(where, f"turn {k}: the video placeholder {placeholder} belongs in the first question only")
        pairs.append((question.replace(placeholder, "").strip(), answer.strip()))
    return pairs


def read_llava_video(path: Path, split: str | None) -> Iterator[Record | RecordError]:
    for where, item in _records(path, "a list of {id, conversations, video} (LLaVA-Video-178K)"):
        if isinstance(item, RecordError):
            yield item
            continue
        if not isinstance(item, dict) or not isinstance(item.get("video"), str) or not item["video"]:
            yield RecordError(where, "needs 'video' (a path) and 'conversations'")
            continue
        conversation = item.get("conversations")
        roles = [t.get("from") if isinstance(t, dict) else None for t in conversation] \
            if isinstance(conversation, list) else []
        if len(roles) < 2 or len(roles) % 2 or roles != ["human", "gpt"] * (len(roles) // 2):
            yield RecordError(where, "'conversations' must alternate {from: human} and {from: gpt} turns")
            continue
        first = conversation[0].get("value")  # LLaVA-Video writes <image>; the Qwen-VL scripts <video>
        placeholder = "<video>" if isinstance(first, str) and "<video>" in first and "<image>" not in first \
            else PLACEHOLDERS["llava-video"]
        pairs = _turns(where, [(conversation[k].get("value"), conversation[k + 1].get("value"))
                               for k in range(0, len(conversation), 2)], placeholder)
        if isinstance(pairs, RecordError):
            yield pairs
            continue
        yield Record(where, [item["video"]], conversation=pairs,
                     source={"dataset": "llava-video", "id": item.get("id"), "data_source": item.get("data_source")})


def _records(path: Path, what: str) -> Iterator[tuple[str, Any]]:
    """A JSON list or JSONL file, as (where, record)."""
    if path.suffix == ".jsonl":
        yield from _jsonl(path)
        return
    for i, item in enumerate(_expect(_load_json(path), list, path, what)):
        yield f"[{i}]", item


def read_sharegpt(path: Path, split: str | None) -> Iterator[Record | RecordError]:
    for where, item in _records(path, "a list of {messages, videos} (LLaMA-Factory / ms-swift ShareGPT)"):
        if isinstance(item, RecordError):
            yield item
            continue
        if not isinstance(item, dict) or not isinstance(item.get("messages"), list):
            yield RecordError(where, "needs 'messages' (a list of {role, content}) and 'videos'")
            continue
        videos = item.get("videos")
        if not (isinstance(videos, list) and len(videos) == 1 and isinstance(videos[0], str) and videos[0]):
            yield RecordError(where, "'videos' must list exactly one video (vcap trains on one video per sample)")
            continue
        messages = [m for m in item["messages"] if not (isinstance(m, dict) and m.get("role") == "system")]
        roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
        if len(roles) < 2 or len(roles) % 2 or roles != ["user", "assistant"] * (len(roles) // 2):
            yield RecordError(where, "'messages' must alternate user and assistant turns (after an optional system turn)")
            continue
        pairs = _turns(where, [(messages[k].get("content"), messages[k + 1].get("content"))
                               for k in range(0, len(messages), 2)], PLACEHOLDERS["sharegpt"])
        if isinstance(pairs, RecordError):
            yield pairs
            continue
        yield Record(where, [videos[0]], conversation=pairs, lang=item.get("lang") if item.get("lang") in ("ko", "en") else None,
                     source={"dataset": "sharegpt"})


def read_sharegpt4video(path: Path, split: str | None) -> Iterator[Record | RecordError]:
    for where, item in _jsonl(path):
        if isinstance(item, RecordError):
            yield item
            continue
        if not isinstance(item, dict) or not isinstance(item.get("video_id"), str) or not isinstance(item.get("captions"), list):
            yield RecordError(where, "needs 'video_id' and 'captions' (a list of {idx, content})")
            continue
        whole = [c.get("content") for c in item["captions"] if isinstance(c, dict) and str(c.get("idx")).strip() == "-1"]
        if len(whole) != 1 or _text(whole[0]) is None:
            yield RecordError(where, "needs exactly one whole-video caption (idx -1) with non-empty content")
            continue
        candidates = [item["video_path"]] if isinstance(item.get("video_path"), str) and item["video_path"] else []
        yield Record(where, candidates + [f"{item['video_id']}.mp4"], [_text(whole[0])],
                     source={"dataset": "sharegpt4video", "video_id": item["video_id"]})


READERS: dict[str, Reader] = {
    "msrvtt": read_msrvtt,
    "vatex": read_vatex,
    "activitynet": read_activitynet,
    "youcook2": read_youcook2,
    "webvid": read_webvid,
    "llava-video": read_llava_video,
    "sharegpt": read_sharegpt,
    "sharegpt4video": read_sharegpt4video,
}
