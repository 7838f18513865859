"""The Gradio web demo: upload a video (or pick an example), caption it in Korean or English.

UI code only: every model call goes through ``vcap.load_captioner`` and the captioner's
``read`` / ``caption_stream`` / ``caption_frames``. The model loads once; requests go through
gradio's queue with a concurrency limit. Binds 127.0.0.1 unless ``--host`` says otherwise; no
analytics, no version check, no hub calls (the captioner loads offline, as everywhere in vcap).

Timestamped captions read and caption the windows of a video a batch at a time, and at most
``--max-windows`` (120) windows per request: a longer video needs a longer window. Dense captions
ask the model for the video's timed events and show them with an SRT file at the model's own times. Uploads and
subtitle files live in one temporary folder, removed when the demo stops (Ctrl-C or SIGTERM).

    vcap demo [CAPTIONER_DIR] [--host 127.0.0.1] [--port 7860] [--share]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from qwen3_backbone.files import short_name
from vcap.cli import add_captioner_options, open_captioner, positive_float, positive_int
from vcap.errors import UsageError
from vcap.generation import GenerationOptions
from vcap.subtitles import to_srt
from vcap.video import VideoReadError, segment_windows

DEFAULT_CAPTIONER = Path("runs/quickstart/captioner")
MAX_UPLOAD_MB = 200
MAX_DURATION_S = 600.0
MAX_WINDOWS = 120  # timestamped captions: windows per request (a 10-minute video in 5-second windows)
BATCH_SIZE = 8  # windows read and captioned at a time


@dataclass(frozen=True)
class DemoOptions:
    """What the app allows and where it keeps its files."""

    examples: list[str] = field(default_factory=list)
    max_upload_mb: float = MAX_UPLOAD_MB
    max_duration_s: float = MAX_DURATION_S
    max_windows: int = MAX_WINDOWS
    batch_size: int = BATCH_SIZE
    concurrency: int = 2
    workdir: Path | None = None  # subtitle files; None: a temporary folder

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
        "dense_tab": "Dense captions",
        "dense_btn": "List the events",
        "events": "Events (the model's own times)",
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
        "dense_tab": "사건별 캡션",
        "dense_btn": "사건 나열하기",
        "events": "사건 (모델이 말한 시간)",
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


def visitor_text(text: str, path: str | os.PathLike) -> str:
    """``text`` with the server's temporary path of an upload replaced by the uploaded file's name."""
    path = Path(path)
    return text.replace(str(path), path.name).replace(str(path.parent) + os.sep, "")


def check_upload(path: str | None, max_upload_mb: float, max_duration_s: float):
    """Size and duration limits, and a clear message for a non-video or corrupt file; returns the
    video's header info."""
    from vcap.video import VideoReadError, probe

    if not path:
        raise DemoError("Upload a video first. / 먼저 동영상을 올려 주세요.")
    size_mb = os.path.getsize(path) / 2**20
    if size_mb > max_upload_mb:
        raise DemoError(f"{Path(path).name}: {size_mb:.1f} MB is over the {max_upload_mb:g} MB limit.")
    try:
        info = probe(path)
    except VideoReadError as e:
        raise DemoError(f"{Path(path).name} cannot be read as a video: {visitor_text(e.reason, path)}") from None
    if info.duration > max_duration_s:
        raise DemoError(f"{Path(path).name}: {info.duration:.0f} s is longer than the {max_duration_s:g} s limit.")
    return info


def prompt_for(preset: str, custom: str, lang: str) -> str | None:
    if preset == "custom":
        if not custom or not custom.strip():
            raise DemoError("Write a custom prompt, or choose another preset. / 프롬프트를 입력해 주세요.")
        return custom.strip()
    if preset == "short":
        return PRESETS["short"][lang]
    return None  # detailed: the captioner's default for the language


def generation_options(lang: str, prompt: str | None, *, thinking: bool, budget: float, decoding: str,
                       temperature: float, top_p: float, max_tokens: float) -> GenerationOptions:
    """The page's controls as one GenerationOptions value (what every captioning path takes)."""
    sampling = {} if decoding == "greedy" else {"sampling": "non-thinking", "temperature": float(temperature),
                                                "top_p": float(top_p)}
    return GenerationOptions(lang=lang, prompt=prompt, thinking=bool(thinking),
                             thinking_budget=int(budget) if thinking else None, max_new_tokens=int(max_tokens),
                             **sampling)


class Handlers:
    """What the page's buttons do. Their parameters are the page's inputs, in order (gradio passes
    them by position); each builds one GenerationOptions value and calls the captioner."""

    def __init__(self, captioner, options: DemoOptions) -> None:
        self.captioner, self.options = captioner, options
        self.workdir = options.workdir or Path(tempfile.mkdtemp(prefix="vcap-demo-"))

    def caption(self, video, lang, preset, custom, thinking, budget, decoding, temperature, top_p, max_tokens):
        """Stream (thinking, caption, sampled frames) for one upload."""
        try:
            check_upload(video, self.options.max_upload_mb, self.options.max_duration_s)
            asked = generation_options(lang, prompt_for(preset, custom, lang), thinking=thinking, budget=budget,
                                       decoding=decoding, temperature=temperature, top_p=top_p, max_tokens=max_tokens)
            clip = self.captioner.read(video)
        except (DemoError, VideoReadError, UsageError) as e:
            raise _refuse(e, video) from None
        gallery = [(frame, f"{t:.2f} s") for frame, t in zip(clip.frames, clip.timestamps)]
        thoughts, text = "", ""
        yield thoughts, text, gallery
        for event in self.captioner.caption_stream(clip, asked):
            if event.kind == "thinking":
                thoughts += event.text
            else:
                text += event.text
            yield thoughts, text, gallery

    def segments(self, video, lang, preset, custom, window, max_tokens):
        """(a table of timed captions, an SRT file) for every window of the upload."""
        try:
            info = check_upload(video, self.options.max_upload_mb, self.options.max_duration_s)
            asked = GenerationOptions(lang=lang, prompt=prompt_for(preset, custom, lang), max_new_tokens=int(max_tokens))
            windows = self._windows(video, info.duration, window)
            rows = []
            for start in range(0, len(windows), self.options.batch_size):  # memory follows the batch, not the video
                chunk = windows[start:start + self.options.batch_size]
                clips = [self.captioner.read(video, window=w) for w in chunk]  # sampled as `vcap caption` samples
                results = self.captioner.caption_frames(clips, asked)
                rows += [{"start": t0, "end": t1, "caption": r.caption} for (t0, t1), r in zip(chunk, results)]
        except (DemoError, VideoReadError, UsageError) as e:
            raise _refuse(e, video) from None
        folder = Path(tempfile.mkdtemp(prefix="srt-", dir=self.workdir))  # one per request: names never collide
        srt_path = folder / short_name(f"{Path(video).stem}.srt")
        srt_path.write_text(to_srt(rows), encoding="utf-8")
        return [[_clock(r["start"]), _clock(r["end"]), r["caption"]] for r in rows], str(srt_path)

    def dense(self, video, lang, max_tokens):
        """(a table of the model's timed events, an SRT file at the model's own times) for one upload."""
        try:
            check_upload(video, self.options.max_upload_mb, self.options.max_duration_s)
            asked = GenerationOptions(lang=lang, dense=True, max_new_tokens=int(max_tokens))
            result = self.captioner.caption_frames([self.captioner.read(video)], asked)[0]
        except (DemoError, VideoReadError, UsageError) as e:
            raise _refuse(e, video) from None
        folder = Path(tempfile.mkdtemp(prefix="srt-", dir=self.workdir))
        srt_path = folder / short_name(f"{Path(video).stem}.events.srt")
        srt_path.write_text(to_srt(result.events), encoding="utf-8")
        rows = [[_clock(e["start"]), _clock(e["end"]), e["caption"]] for e in result.events]
        rows += [["", "", f"(not an event) {line}"] for line in result.unreadable_lines]
        return rows, str(srt_path)

    def _windows(self, video, duration: float, window) -> list[tuple[float, float]]:
        if not window or float(window) <= 0:
            raise DemoError("The window must be longer than 0 seconds. / 구간 길이는 0초보다 길어야 합니다.")
        windows = segment_windows(duration, float(window))
        if len(windows) > self.options.max_windows:
            shortest = duration / self.options.max_windows
            raise DemoError(f"{Path(video).name}: {len(windows)} windows of {float(window):g} s; the demo captions at "
                            f"most {self.options.max_windows} per video. Choose a window of at least {shortest:.1f} s.")
        return windows


def _refuse(error: Exception, video):
    """The message shown in the page: the uploaded file's name, never the server's temporary path."""
    import gradio as gr

    if isinstance(error, (DemoError, UsageError)):
        return gr.Error(str(error))
    if isinstance(error, VideoReadError):
        return gr.Error(f"{Path(video).name} cannot be read as a video: {visitor_text(error.reason, video)}")
    return gr.Error(f"{Path(video).name}: {visitor_text(f'{type(error).__name__}: {error}', video)}")


def build_app(captioner, options: DemoOptions = DemoOptions()):
    """The Blocks app around a loaded captioner."""
    import gradio as gr

    handlers = Handlers(captioner, options)
    with gr.Blocks(title="vcap", analytics_enabled=False) as app:  # no telemetry, no version check
        ui = _layout(captioner, options)
        ui.preset.change(lambda p: gr.update(visible=p == "custom"), ui.preset, ui.custom, queue=False, api_name=False)
        ui.run.click(handlers.caption, [ui.video, ui.lang, ui.preset, ui.custom, ui.thinking, ui.budget, ui.decoding,
                                        ui.temperature, ui.top_p, ui.max_tokens],
                     [ui.thoughts, ui.text, ui.gallery], api_name="caption")
        ui.seg_run.click(handlers.segments, [ui.video, ui.lang, ui.preset, ui.custom, ui.window, ui.max_tokens],
                         [ui.table, ui.srt_file], api_name="segments")
        ui.dense_run.click(handlers.dense, [ui.video, ui.lang, ui.max_tokens], [ui.events, ui.events_srt],
                           api_name="dense")
        ui.ui_lang.change(_relabel, ui.ui_lang, [getattr(ui, name) for name in RELABELED], queue=False, api_name=False)
    app.queue(default_concurrency_limit=options.concurrency)
    return app


def _layout(captioner, options: DemoOptions) -> SimpleNamespace:
    """The page's components (in Korean first), as attributes."""
    import gradio as gr

    t, ui = TEXT["ko"], SimpleNamespace()
    with gr.Row():
        ui.header = gr.Markdown(f"# {t['title']}\n{t['intro']}")
        ui.ui_lang = gr.Radio([("한국어", "ko"), ("English", "en")], value="ko", label="화면 언어 / Interface",
                              scale=0, min_width=220, elem_id="ui-lang")
    with gr.Row():
        with gr.Column(scale=1):
            ui.video = gr.Video(label=t["video"], sources=["upload"], elem_id="video")
            if options.examples:
                gr.Examples(examples=[[e] for e in options.examples], inputs=[ui.video], label=t["examples"])
            ui.lang = gr.Radio(LANG_CHOICES, value="ko", label=t["lang"], elem_id="caption-lang")
            ui.preset = gr.Radio(PRESET_LABELS["ko"], value="detailed", label=t["preset"])
            ui.custom = gr.Textbox(label=t["custom"], lines=2, visible=False)
            with gr.Row():
                ui.thinking = gr.Checkbox(label=t["thinking"], value=False)
                ui.budget = gr.Slider(16, 1024, value=128, step=16, label=t["budget"])
            with gr.Row():
                ui.decoding = gr.Radio(DECODING_LABELS["ko"], value="greedy", label=t["sampling"])
                ui.temperature = gr.Slider(0.1, 1.5, value=0.7, step=0.05, label=t["temperature"])
                ui.top_p = gr.Slider(0.1, 1.0, value=0.8, step=0.05, label=t["top_p"])
            ui.max_tokens = gr.Slider(8, 512, value=captioner.config.max_new_tokens, step=8, label=t["max_tokens"])
            ui.run = gr.Button(t["caption_btn"], variant="primary", elem_id="caption-button")
        with gr.Column(scale=1):
            ui.text = gr.Textbox(label=t["caption"], lines=4, elem_id="caption-output")
            with gr.Accordion(t["thoughts"], open=False) as ui.thoughts_panel:
                ui.thoughts = gr.Textbox(label=t["thoughts"], lines=6, show_label=False)
            ui.gallery = gr.Gallery(label=t["frames"], columns=4, height=260)
            with gr.Accordion(t["segments_tab"], open=False) as ui.segments_panel:
                ui.window = gr.Number(value=5.0, minimum=0.5, label=t["window"])
                ui.seg_run = gr.Button(t["segments_btn"])
                ui.table = gr.Dataframe(headers=["start", "end", "caption"], label=t["table"], wrap=True)
                ui.srt_file = gr.File(label=t["srt"])
            with gr.Accordion(t["dense_tab"], open=False) as ui.dense_panel:
                ui.dense_run = gr.Button(t["dense_btn"], elem_id="dense-button")
                ui.events = gr.Dataframe(headers=["start", "end", "caption"], label=t["events"], wrap=True)
                ui.events_srt = gr.File(label=t["srt"])
    return ui


# the components whose labels follow the interface language, in the order _relabel returns them
RELABELED = ["header", "video", "lang", "preset", "custom", "thinking", "budget", "decoding", "temperature", "top_p",
             "max_tokens", "run", "text", "thoughts_panel", "thoughts", "gallery", "segments_panel", "window", "seg_run",
             "table", "srt_file", "dense_panel", "dense_run", "events", "events_srt"]


def _relabel(ui: str):
    import gradio as gr

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
        gr.update(label=t["dense_tab"]), gr.update(value=t["dense_btn"]), gr.update(label=t["events"]),
        gr.update(label=t["srt"]),
    )


def _clock(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m):02d}:{s:06.3f}"


def find_examples(captioner_dir: Path, limit: int = 4) -> list[str]:
    """Test clips next to a quickstart captioner, if any: runs/quickstart/data/test, and for the
    dense task's runs/quickstart/captioner-dense the multi-event clips of data-dense/test."""
    folder = captioner_dir.parent / ("data-dense" if captioner_dir.name == "captioner-dense" else "data") / "test"
    return [str(p) for p in sorted(folder.glob("*.mp4"))[:limit]] if folder.is_dir() else []


# -- the `vcap demo` command ---------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("captioner", nargs="?", help=f"a captioner folder (default: {DEFAULT_CAPTIONER}, from make quickstart)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=positive_int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    add_captioner_options(parser)
    parser.add_argument("--max-upload-mb", type=positive_float, default=MAX_UPLOAD_MB, help="largest upload, MB (e.g. 0.5)")
    parser.add_argument("--max-duration", type=positive_float, default=MAX_DURATION_S, help="longest video accepted, seconds")
    parser.add_argument("--max-windows", type=positive_int, default=MAX_WINDOWS,
                        help=f"timestamped captions: most windows per video (default {MAX_WINDOWS})")
    parser.add_argument("--concurrency", type=positive_int, default=2, help="requests captioned at the same time")



def run(args: argparse.Namespace) -> int:
    folder = Path(args.captioner) if args.captioner else DEFAULT_CAPTIONER
    if not (folder / "captioner.json").exists():
        hint = "run `make quickstart` first, or pass a captioner folder from `vcap export`"
        print(f"vcap demo: no captioner at {folder}: {hint}", file=sys.stderr)
        return 2
    captioner = open_captioner(args, str(folder))
    workdir = Path(tempfile.mkdtemp(prefix="vcap-demo-"))
    # gradio keeps uploads under GRADIO_TEMP_DIR, read when the app is built: point it into our folder
    os.environ["GRADIO_TEMP_DIR"] = str(workdir / "uploads")
    previous = signal.signal(signal.SIGTERM, _stop)  # SIGTERM unwinds like Ctrl-C, so the folder is removed
    try:
        options = DemoOptions(find_examples(folder), args.max_upload_mb, args.max_duration, args.max_windows,
                              concurrency=args.concurrency, workdir=workdir)
        app = build_app(captioner, options)
        print(f"vcap demo: serving {folder} on http://{args.host}:{args.port}", flush=True)
        app.launch(server_name=args.host, server_port=args.port, share=args.share,
                   max_file_size=int(args.max_upload_mb * 2**20), show_error=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _stop(signum, frame) -> None:  # noqa: ARG001
    raise KeyboardInterrupt
