"""The web demo, started as `vcap demo` in a subprocess: driven with gradio_client, then in a real
headless Chromium with Playwright."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from demo.browser import start_demo

from ..tiny import tiny_captioner

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from vcap.recipes.synthetic import ClipAttributes, render_frames, write_mp4

    path = tmp_path_factory.mktemp("clips") / "three squares.mp4"
    write_mp4(render_frames(ClipAttributes("square", "yellow", 3, "left_to_right", "large", "gray"), 64, 16), path, 8)
    return path


@pytest.fixture(scope="module")
def captioner_folder(tmp_path_factory) -> Path:
    from vcap.builder import save_captioner

    folder = tmp_path_factory.mktemp("captioner") / "captioner"
    save_captioner(tiny_captioner(), folder)
    return folder


@pytest.fixture(scope="module")
def server(captioner_folder):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    process, url = start_demo(captioner_folder, env, captioner_folder.parent / "demo.log", "--max-windows", "3")
    yield url, captioner_folder
    process.terminate()
    process.wait(timeout=30)


def caption_args(video, lang="en"):
    from gradio_client import handle_file

    return (handle_file(str(video)), lang, "detailed", "", False, 128, "greedy", 0.7, 0.8, 8)


def test_binds_loopback_only(server):
    url, _ = server
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    listening = []  # (address hex, port) of the listening sockets, from the kernel's table
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                listening.append(address)
    assert listening == ["0100007F"]  # 127.0.0.1 only, no IPv6 or wildcard


def test_caption_equals_the_library(server, clip):
    from gradio_client import Client

    from vcap.builder import load_captioner

    url, folder = server
    thoughts, caption, gallery = Client(url, verbose=False).predict(*caption_args(clip, "en"), api_name="/caption")
    expected = load_captioner(folder).caption(str(clip), lang="en", max_new_tokens=8)[0]
    assert caption and caption == expected.caption and thoughts == ""
    assert len(gallery) == 4 and gallery[0]["caption"].endswith(" s")  # the sampled frames, with timestamps


def test_bad_upload_is_an_error_and_the_app_keeps_serving(server, clip, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, _ = server
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video\n" * 100)
    client = Client(url, verbose=False)
    with pytest.raises(AppError, match="cannot be read as a video") as err:
        client.predict(*caption_args(fake), api_name="/caption")
    assert "notes.mp4" in str(err.value) and "/tmp" not in str(err.value) and "gradio" not in str(err.value)
    assert client.predict(*caption_args(clip), api_name="/caption")[1]


def test_two_concurrent_requests_give_the_library_captions(server, clip):
    from gradio_client import Client

    from vcap.builder import load_captioner

    url, folder = server
    client = Client(url, verbose=False)
    jobs = [client.submit(*caption_args(clip, lang), api_name="/caption") for lang in ("en", "ko")]
    results = [job.result(timeout=120) for job in jobs]
    library = load_captioner(folder)
    expected = [library.caption(str(clip), lang=lang, max_new_tokens=8)[0].caption for lang in ("en", "ko")]
    assert [r[1] for r in results] == expected and all(expected)


def test_segments_give_a_table_and_srt(server, clip):
    import srt
    from gradio_client import Client, handle_file

    url, _ = server
    table, srt_path = Client(url, verbose=False).predict(handle_file(str(clip)), "ko", "detailed", "", 1.0, 8,
                                                         api_name="/segments")
    rows = table["data"]
    assert [r[:2] for r in rows] == [["00:00.000", "00:01.000"], ["00:01.000", "00:02.000"]]
    subs = list(srt.parse(Path(srt_path).read_text(encoding="utf-8"), ignore_errors=False))
    assert [s.content for s in subs] == [" ".join(r[2].split()) or "..." for r in rows]


def test_dense_captions_give_the_libraries_events_and_srt(server, clip):
    from gradio_client import Client, handle_file

    from vcap.builder import load_captioner

    url, folder = server
    table, srt_path = Client(url, verbose=False).predict(handle_file(str(clip)), "en", 8, api_name="/dense")
    expected = load_captioner(folder).caption(str(clip), lang="en", dense=True, max_new_tokens=8)[0]
    rows = table["data"]
    events = [r for r in rows if r[0]]  # a random model writes no event lines: its text comes back as such
    assert len(events) == len(expected.events)
    assert expected.unreadable_lines and [r[2] for r in rows if not r[0]] == [
        f"(not an event) {line}" for line in expected.unreadable_lines]
    assert Path(srt_path).name.endswith(".events.srt")


def test_too_many_windows_are_refused_with_the_cap(server, clip):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, _ = server
    with pytest.raises(AppError, match="4 windows of 0.5 s; the demo captions at most 3 per video. Choose a window of "
                                       "at least 0.7 s"):  # the server runs with --max-windows 3; the clip is 2 s
        Client(url, verbose=False).predict(handle_file(str(clip)), "en", "detailed", "", 0.5, 8, api_name="/segments")


def test_upload_limits_take_fractions_of_a_megabyte(tmp_path, clip):
    from demo.app import DemoError, check_upload
    from vcap.cli import build_parser

    parser, _ = build_parser("demo")
    assert parser.parse_args(["--max-upload-mb", "0.5"]).max_upload_mb == 0.5
    assert check_upload(str(clip), 0.5, 600).duration > 0  # a small clip passes a 0.5 MB limit
    big = tmp_path / "big.mp4"
    big.write_bytes(Path(clip).read_bytes() + b"\0" * 600_000)
    with pytest.raises(DemoError, match="over the 0.5 MB limit"):
        check_upload(str(big), 0.5, 600)


def test_no_network_calls_and_no_temporary_folders_left(captioner_folder, clip, tmp_path):
    """Without the offline variables the test suite sets: no analytics, no version check, no hub; and
    the uploads and subtitle files go when the demo stops."""
    from gradio_client import Client, handle_file

    from ..vcap.test_security import guarded_env

    env = guarded_env(tmp_path)
    temp = tmp_path / "tmp"
    temp.mkdir()
    env["TMPDIR"] = str(temp)
    process, url = start_demo(captioner_folder, env, tmp_path / "demo.log")
    try:
        table, srt_path = Client(url, verbose=False).predict(handle_file(str(clip)), "en", "detailed", "", 1.0, 8,
                                                             api_name="/segments")
        assert Path(srt_path).is_file() and list(temp.glob("vcap-demo-*"))
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert (tmp_path / "net.log").read_text() == "", (tmp_path / "demo.log").read_text()[-2000:]
    assert not list(temp.glob("vcap-demo-*")), (tmp_path / "demo.log").read_text()[-2000:]


def test_screenshots_show_the_page_and_refuse_a_wrong_caption(captioner_folder, clip, tmp_path):
    """`make screenshots` in a real headless Chromium: the caption in the page is the library's
    greedy caption; a picture is written when it equals the clip's reference, and refused when not."""
    from demo.browser import chromium
    from demo.screenshots import Shot, take_screenshots
    from vcap.builder import load_captioner

    executable = chromium()
    if executable is None:
        pytest.skip("no Chromium: `make chromium` (Debian's package) could not install it here")
    library = load_captioner(captioner_folder)
    right = {lang: library.caption(str(clip), lang=lang)[0].caption for lang in ("en", "ko")}  # the page's defaults
    manifest = tmp_path / "test.jsonl"  # the English reference is what the model says; the Korean one is not
    manifest.write_text(json.dumps({"video": str(clip), "lang": "en", "caption": right["en"], "unseen_combination": True})
                        + "\n" + json.dumps({"video": str(clip), "lang": "ko", "caption": "다른 캡션",
                                             "unseen_combination": True}) + "\n", encoding="utf-8")
    out = tmp_path / "pictures"
    outcomes = take_screenshots(captioner_folder, manifest, out, (Shot("en.png", "en"), Shot("ko.png", "ko")),
                                env={"PYTHONPATH": str(ROOT)}, executable=executable)
    assert [(o.shot.name, o.shown, o.correct) for o in outcomes] == [("en.png", right["en"], True),
                                                                     ("ko.png", right["ko"], False)]
    assert (out / "en.png").stat().st_size > 10_000 and not (out / "ko.png").exists()


def test_screenshots_without_a_quickstart_run_is_a_usage_error(tmp_path, capsys):
    from demo.screenshots import main

    assert main(["--run", str(tmp_path / "nothing")]) == 2
    assert "make quickstart" in capsys.readouterr().err


def test_without_a_captioner_it_says_to_run_the_quickstart(tmp_path, monkeypatch, capsys):
    from vcap.cli import main

    monkeypatch.chdir(tmp_path)  # no runs/quickstart/captioner here
    assert main(["demo"]) == 2
    assert "make quickstart" in capsys.readouterr().err


def test_examples_are_the_test_clips_of_the_captioners_own_task(tmp_path):
    from demo.app import find_examples

    for data in ("data", "data-dense"):
        (tmp_path / data / "test").mkdir(parents=True)
        for i in range(5):
            (tmp_path / data / "test" / f"{data}_{i}.mp4").write_bytes(b"")
    single, dense = find_examples(tmp_path / "captioner"), find_examples(tmp_path / "captioner-dense")
    assert [Path(p).name for p in single] == [f"data_{i}.mp4" for i in range(4)]
    assert [Path(p).name for p in dense] == [f"data-dense_{i}.mp4" for i in range(4)]
    assert find_examples(tmp_path / "elsewhere" / "captioner") == []
