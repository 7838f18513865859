"""The Gradio web demo: upload a video (or pick an example), caption it in Korean or English.

UI code only: every model call goes through ``vcap.load_captioner`` and the captioner's
``read`` / ``caption_stream`` / ``caption_frames``. The model loads once; requests go through
gradio's queue with a concurrency limit. Binds 127.0.0.1 unless ``--host`` says otherwise; no
analytics, no hub calls.

    vcap demo [CAPTIONER_DIR] [--host 127.0.0.1] [--port 7860] [--share]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_CAPTIONER = Path("runs/quickstart/captioner")
MAX_UPLOAD_MB = 200
MAX_DURATION_S = 600.0

# The UI's own words, per interface language.
TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title": "vcap: video captioning",
        "intro": "Upload a video or pick an example, choose the caption language, and press **Caption**.",
        "ui_lang": "Interface language",
        "video": "Video",
        "lang": "Caption language",
        "preset": "Prompt",
        "custom": "Custom prompt",
        "thinking": "Thinking mode",
        "budget": "Thinking budget (tokens)",
        "sampling": "Decoding",
        "temperature": "Temperature",
        "top_p": "Top-p",
        "max_tokens": "Maximum new tokens",
        "caption_btn": "Caption",
        "caption": "Caption",
        "thoughts": "Thinking",
        "frames": "Frames the model saw",
        "segments_tab": "Timestamped captions",
        "window": "Window (seconds)",
        "segments_btn": "Caption every window",
        "table": "Captions by time",
        "srt": "Subtitles (SRT)",
        "examples": "Examples",
    },
    "ko": {
        "title": "vcap: 동영상 캡션",
        "intro": "동영상을 올리거나 예시를 고른 뒤, 캡션 언어를 정하고 **캡션 생성**을 누르세요.",
        "ui_lang": "화면 언어",
        "video": "동영상",
        "lang": "캡션 언어",
        "preset": "프롬프트",
        "custom": "직접 입력한 프롬프트",
        "thinking": "생각 모드",
        "budget": "생각 예산 (토큰)",
        "sampling": "디코딩",
        "temperature": "온도",
        "top_p": "Top-p",
        "max_tokens": "최대 생성 토큰",
        "caption_btn": "캡션 생성",
        "caption": "캡션",
        "thoughts": "생각",
        "frames": "모델이 본 프레임",
        "segments_tab": "시간별 캡션",
        "window": "구간 길이 (초)",
        "segments_btn": "구간마다 캡션 생성",
        "table": "시간별 캡션",
        "srt": "자막 (SRT)",
        "examples": "예시",
    },
}
LANG_CHOICES = [("한국어", "ko"), ("English", "en")]
PRESETS = {
    "short": {"en": "Describe this video in one sentence.", "ko": "이 영상을 한 문장으로 설명해 주세요."},
    "detailed": None,  # the captioner's own default instruction for the language
    "custom": None,
}
PRESET_LABELS = {"en": [("Short caption", "short"), ("Detailed description", "detailed"), ("Custom prompt", "custom")],
                 "ko": [("짧은 캡션", "short"), ("자세한 설명", "detailed"), ("직접 입력", "custom")]}
DECODING_LABELS = {"en": [("Greedy", "greedy"), ("Sampling", "sample")], "ko": [("그리디", "greedy"), ("샘플링", "sample")]}


class DemoError(Exception):
    """A problem with the visitor's input, shown in the page."""


def check_upload(path: str | None, max_upload_mb: float, max_duration_s: float) -> None:
    """Size and duration limits, and a clear message for a non-video or corrupt file."""
    from vcap.video import VideoReadError, probe

    if not path:
        raise DemoError("Upload a video first. / 먼저 동영상을 올려 주세요.")
    size_mb = os.path.getsize(path) / 2**20
    if size_mb > max_upload_mb:
        raise DemoError(f"{Path(path).name}: {size_mb:.0f} MB is over the {max_upload_mb:.0f} MB limit.")
    try:
        info = probe(path)
    except VideoReadError as e:
        raise DemoError(f"{Path(path).name} cannot be read as a video: {e.reason}") from None
    if info.duration > max_duration_s:
        raise DemoError(f"{Path(path).name}: {info.duration:.0f} s is longer than the {max_duration_s:.0f} s limit.")


def prompt_for(preset: str, custom: str, lang: str) -> str | None:
    if preset == "custom":
        if not custom or not custom.strip():
            raise DemoError("Write a custom prompt, or choose another preset. / 프롬프트를 입력해 주세요.")
        return custom.strip()
    if preset == "short":
        return PRESETS["short"][lang]
    return None  # detailed: the captioner's default for the language


def sampling_options(decoding: str, temperature: float, top_p: float) -> dict[str, Any]:
    if decoding == "greedy":
        return {}
    return {"sampling": "non-thinking", "temperature": float(temperature), "top_p": float(top_p)}


def build_app(captioner, examples: list[str] | None = None, max_upload_mb: float = MAX_UPLOAD_MB,
              max_duration_s: float = MAX_DURATION_S, concurrency: int = 2):
    """The Blocks app around a loaded captioner."""
    import gradio as gr

    from vcap.video import VideoReadError, read_segment

    def caption(video, lang, preset, custom, thinking, budget, decoding, temperature, top_p, max_tokens):
        try:
            check_upload(video, max_upload_mb, max_duration_s)
            prompt = prompt_for(preset, custom, lang)
            clip = captioner.read(video)
        except DemoError as e:
            raise gr.Error(str(e)) from None
        except VideoReadError as e:
            raise gr.Error(f"{Path(video).name} cannot be read as a video: {e.reason}") from None
        gallery = [(frame, f"{t:.2f} s") for frame, t in zip(clip.frames, clip.timestamps)]
        thoughts, text = "", ""
        yield thoughts, text, gallery
        events = captioner.caption_stream(
            clip, prompt=prompt, lang=lang, thinking=bool(thinking),
            thinking_budget_tokens=int(budget) if thinking else None, max_new_tokens=int(max_tokens),
            **sampling_options(decoding, temperature, top_p))
        for event in events:
            if event.kind == "thinking":
                thoughts += event.text
            else:
                text += event.text
            yield thoughts, text, gallery

    def segments(video, lang, preset, custom, window, max_tokens):
        try:
            check_upload(video, max_upload_mb, max_duration_s)
            prompt = prompt_for(preset, custom, lang)
            from vcap.video import probe, segment_windows

            windows = segment_windows(probe(video).duration, float(window))
            cfg = captioner.config.frames
            clips = [read_segment(video, t0, t1, num_frames=cfg.num_frames, size=cfg.size, backend=cfg.backend)
                     for t0, t1 in windows]
        except DemoError as e:
            raise gr.Error(str(e)) from None
        except VideoReadError as e:
            raise gr.Error(f"{Path(video).name} cannot be read as a video: {e.reason}") from None
        results = captioner.caption_frames(clips, None, prompt, lang, max_new_tokens=int(max_tokens))
        rows = [{"start": t0, "end": t1, "caption": r.caption} for (t0, t1), r in zip(windows, results)]
        from vcap.caption import to_srt

        srt_path = Path(tempfile.mkdtemp(prefix="vcap-demo-")) / f"{Path(video).stem}.srt"
        srt_path.write_text(to_srt(rows), encoding="utf-8")
        table = [[_clock(r["start"]), _clock(r["end"]), r["caption"]] for r in rows]
        return table, str(srt_path)

    def relabel(ui):
        t = TEXT[ui]
        return (
            f"# {t['title']}\n{t['intro']}",
            gr.update(label=t["video"]), gr.update(label=t["lang"]),
            gr.update(label=t["preset"], choices=PRESET_LABELS[ui]), gr.update(label=t["custom"]),
            gr.update(label=t["thinking"]), gr.update(label=t["budget"]),
            gr.update(label=t["sampling"], choices=DECODING_LABELS[ui]), gr.update(label=t["temperature"]),
            gr.update(label=t["top_p"]), gr.update(label=t["max_tokens"]), gr.update(value=t["caption_btn"]),
            gr.update(label=t["caption"]), gr.update(label=t["thoughts"]), gr.update(label=t["thoughts"]),
            gr.update(label=t["frames"]), gr.update(label=t["segments_tab"]), gr.update(label=t["window"]),
            gr.update(value=t["segments_btn"]), gr.update(label=t["table"]), gr.update(label=t["srt"]),
        )

    t = TEXT["ko"]
    with gr.Blocks(title="vcap") as app:
        with gr.Row():
            header = gr.Markdown(f"# {t['title']}\n{t['intro']}")
            ui_lang = gr.Radio([("한국어", "ko"), ("English", "en")], value="ko", label="화면 언어 / Interface",
                               scale=0, min_width=220)
        with gr.Row():
            with gr.Column(scale=1):
                video = gr.Video(label=t["video"], sources=["upload"], elem_id="video")
                if examples:
                    gr.Examples(examples=[[e] for e in examples], inputs=[video], label=t["examples"])
                lang = gr.Radio(LANG_CHOICES, value="ko", label=t["lang"], elem_id="caption-lang")
                preset = gr.Radio(PRESET_LABELS["ko"], value="detailed", label=t["preset"])
                custom = gr.Textbox(label=t["custom"], lines=2, visible=False)
                with gr.Row():
                    thinking = gr.Checkbox(label=t["thinking"], value=False)
                    budget = gr.Slider(16, 1024, value=128, step=16, label=t["budget"])
                with gr.Row():
                    decoding = gr.Radio(DECODING_LABELS["ko"], value="greedy", label=t["sampling"])
                    temperature = gr.Slider(0.1, 1.5, value=0.7, step=0.05, label=t["temperature"])
                    top_p = gr.Slider(0.1, 1.0, value=0.8, step=0.05, label=t["top_p"])
                max_tokens = gr.Slider(8, 512, value=captioner.config.max_new_tokens, step=8, label=t["max_tokens"])
                run = gr.Button(t["caption_btn"], variant="primary", elem_id="caption-button")
            with gr.Column(scale=1):
                text = gr.Textbox(label=t["caption"], lines=4, elem_id="caption-output")
                with gr.Accordion(t["thoughts"], open=False) as thoughts_panel:
                    thoughts = gr.Textbox(label=t["thoughts"], lines=6, show_label=False)
                gallery = gr.Gallery(label=t["frames"], columns=4, height=260)
                with gr.Accordion(t["segments_tab"], open=False) as segments_panel:
                    window = gr.Number(value=5.0, minimum=0.5, label=t["window"])
                    seg_run = gr.Button(t["segments_btn"])
                    table = gr.Dataframe(headers=["start", "end", "caption"], label=t["table"], wrap=True)
                    srt_file = gr.File(label=t["srt"])

        preset.change(lambda p: gr.update(visible=p == "custom"), preset, custom, queue=False, api_name=False)
        run.click(caption, [video, lang, preset, custom, thinking, budget, decoding, temperature, top_p, max_tokens],
                  [thoughts, text, gallery], api_name="caption")
        seg_run.click(segments, [video, lang, preset, custom, window, max_tokens], [table, srt_file],
                      api_name="segments")
        ui_lang.change(relabel, ui_lang, [header, video, lang, preset, custom, thinking, budget, decoding, temperature,
                                         top_p, max_tokens, run, text, thoughts_panel, thoughts, gallery,
                                         segments_panel, window, seg_run, table, srt_file], queue=False, api_name=False)
    app.queue(default_concurrency_limit=concurrency)
    return app


def _clock(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m):02d}:{s:06.3f}"


def find_examples(captioner_dir: Path, limit: int = 4) -> list[str]:
    """Test clips next to a quickstart captioner (runs/quickstart/data/test), if any."""
    folder = captioner_dir.parent / "data" / "test"
    return [str(p) for p in sorted(folder.glob("*.mp4"))[:limit]] if folder.is_dir() else []


# -- the `vcap demo` command ---------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("captioner", nargs="?", help=f"a captioner folder (default: {DEFAULT_CAPTIONER}, from make quickstart)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB)
    parser.add_argument("--max-duration", type=float, default=MAX_DURATION_S, help="longest video accepted, seconds")
    parser.add_argument("--concurrency", type=int, default=2, help="requests captioned at the same time")


def run(args: argparse.Namespace) -> int:
    import vcap

    folder = Path(args.captioner) if args.captioner else DEFAULT_CAPTIONER
    if not (folder / "captioner.json").exists():
        hint = "run `make quickstart` first, or pass a captioner folder from `vcap export`"
        print(f"vcap demo: no captioner at {folder}: {hint}", file=sys.stderr)
        return 2
    captioner = vcap.load_captioner(folder, device=args.device, dtype=args.dtype)
    app = build_app(captioner, find_examples(folder), args.max_upload_mb, args.max_duration, args.concurrency)
    print(f"vcap demo: serving {folder} on http://{args.host}:{args.port}", flush=True)
    app.launch(server_name=args.host, server_port=args.port, share=args.share,
               max_file_size=f"{int(args.max_upload_mb)}mb", show_error=True)
    return 0
