"""``vcap data export``: a vcap manifest -> the fine-tuning frameworks' formats, so that the same
data also trains in LLaMA-Factory, ms-swift or the LLaVA / Qwen-VL fine-tuning scripts.

- ``sharegpt`` (LLaMA-Factory, ms-swift): a JSON list of ``{"messages": [{"role": "user",
  "content": "<video>instruction"}, {"role": "assistant", "content": caption}], "videos": [path],
  "lang": ...}``. In LLaMA-Factory's ``dataset_info.json``: ``"formatting": "sharegpt"``,
  ``"columns": {"messages": "messages", "videos": "videos"}``, ``"tags": {"role_tag": "role",
  "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}``.
- ``llava`` (LLaVA-NeXT / LLaVA-Video and the Qwen-VL scripts): a JSON list of ``{"id", "video",
  "conversations": [{"from": "human", "value": "<image>\\ninstruction"}, {"from": "gpt", "value":
  caption}]}``; ``--video-token "<video>"`` writes the Qwen-VL scripts' placeholder instead.

Video paths are written relative to ``--media-root`` (default: the output file's folder), which is
where those frameworks resolve them from. A sample's instruction is its own (a plain caption line
gets the captioner's default instruction for its language), so importing the export gives the same
samples back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..data import read_manifest
from ..errors import OutputError
from ..outputs import check_output_file, write_json

EXPORT_FORMATS = ("sharegpt", "llava")


def export_manifest(manifest: Path, fmt: str, out: Path, media_root: Path | None = None,
                    video_token: str | None = None) -> int:
    """Write ``out`` (JSON) from ``manifest``; returns the number of samples written."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    samples = read_manifest(manifest)  # validated: a bad line stops the export with its number
    if out.exists():
        raise OutputError(f"--out {out} exists; vcap data export never replaces a file. Choose another --out "
                          f"(or move the file away).")
    check_output_file(out, f"{fmt} file", "--out")
    root = media_root or out.parent
    records: list[dict[str, Any]] = []
    for i, sample in enumerate(samples):
        video = _relative(sample.video, root)
        if fmt == "sharegpt":
            messages = []
            for k, (question, answer) in enumerate(sample.turns):
                messages += [{"role": "user", "content": f"{video_token or '<video>'}{question}" if k == 0 else question},
                             {"role": "assistant", "content": answer}]
            records.append({"messages": messages, "videos": [video], **({"lang": sample.lang} if sample.lang else {})})
        else:
            turns = []
            for k, (question, answer) in enumerate(sample.turns):
                turns += [{"from": "human", "value": f"{video_token or '<image>'}\n{question}" if k == 0 else question},
                          {"from": "gpt", "value": answer}]
            records.append({"id": f"{manifest.stem}-{i}", "video": video, "conversations": turns,
                            **({"lang": sample.lang} if sample.lang else {})})
    write_json(out, records)
    return len(records)


def _relative(video: Path, root: Path) -> str:
    try:
        return os.path.relpath(video, root)
    except ValueError:  # another drive (Windows)
        return str(video.resolve())


# -- the `vcap data export` command ---------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("manifest", help="a vcap manifest (JSONL)")
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS, dest="fmt",
                        help="sharegpt (LLaMA-Factory, ms-swift) or llava (LLaVA-NeXT/-Video, Qwen-VL scripts)")
    parser.add_argument("--out", help="the JSON file to write (default: MANIFEST's name with .FORMAT.json)")
    parser.add_argument("--media-root", help="video paths are written relative to this folder (default: --out's folder)")
    parser.add_argument("--video-token", help="the video placeholder in the first question "
                                              "(default <video> for sharegpt, <image> for llava)")


def run(args) -> int:
    manifest = Path(args.manifest)
    out = Path(args.out) if args.out else manifest.with_name(f"{manifest.name.removesuffix('.jsonl')}.{args.fmt}.json")
    count = export_manifest(manifest, args.fmt, out, Path(args.media_root) if args.media_root else None,
                            args.video_token)
    print(f"{out}: {count} samples ({args.fmt})")
    return 0
