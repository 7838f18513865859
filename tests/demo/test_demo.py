"""The web demo, started as `vcap demo` in a subprocess: driven with gradio_client, then in a real
headless Chromium with Playwright."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ..tiny import tiny_captioner

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from vcap.synthetic import ClipAttributes, render_frames, write_mp4

    path = tmp_path_factory.mktemp("clips") / "three squares.mp4"
    write_mp4(render_frames(ClipAttributes("square", "yellow", 3, "left_to_right", "large", "gray"), 64, 16), path, 8)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from vcap.model import save_captioner

    folder = tmp_path_factory.mktemp("captioner")
    save_captioner(tiny_captioner(), folder)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    log = open(folder / "demo.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "vcap", "demo", str(folder), "--port", str(port)],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the demo exited: {(folder / 'demo.log').read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        raise RuntimeError(f"the demo did not answer: {(folder / 'demo.log').read_text()[-3000:]}")
    yield url, folder
    process.terminate()
    process.wait(timeout=30)
    log.close()


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

    from vcap.model import load_captioner

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
    with pytest.raises(AppError, match="cannot be read as a video"):
        client.predict(*caption_args(fake), api_name="/caption")
    assert client.predict(*caption_args(clip), api_name="/caption")[1]


def test_two_concurrent_requests_complete(server, clip):
    from gradio_client import Client

    url, _ = server
    client = Client(url, verbose=False)
    jobs = [client.submit(*caption_args(clip, lang), api_name="/caption") for lang in ("en", "ko")]
    results = [job.result(timeout=120) for job in jobs]
    assert all(r[1] for r in results)


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


def _chromium() -> str | None:
    if not Path(CHROMIUM).exists():
        subprocess.run(["make", "-C", str(ROOT), "chromium"], capture_output=True, timeout=600)
    return CHROMIUM if Path(CHROMIUM).exists() else None


def test_in_a_real_browser(server, clip, tmp_path):
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium: `make chromium` (Debian's package) could not install it here")
    from playwright.sync_api import expect, sync_playwright

    url, _ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.locator("#video input[type=file]").set_input_files(str(clip))
        expect(page.locator("#video video")).to_be_visible(timeout=30_000)
        page.get_by_label("English").first.check()
        page.locator("#caption-button").click()
        output = page.locator("#caption-output textarea")
        expect(output).not_to_have_value("", timeout=60_000)
        page.wait_for_timeout(500)
        assert output.input_value().strip()
        shot = tmp_path / "demo.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("VCAP_SCREENSHOT"):  # how docs/demo.png is made
        shutil.copy(shot, os.environ["VCAP_SCREENSHOT"])


def test_without_a_captioner_it_says_to_run_the_quickstart(tmp_path, monkeypatch, capsys):
    from vcap.cli import main

    monkeypatch.chdir(tmp_path)  # no runs/quickstart/captioner here
    assert main(["demo"]) == 2
    assert "make quickstart" in capsys.readouterr().err
