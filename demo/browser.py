"""Driving the demo as a visitor would: `vcap demo` in a subprocess and a real headless Chromium
(Playwright over Debian's `chromium`). Used by the browser test and by `make screenshots`.

    process, url = start_demo(captioner_dir, env, log_path)
    with sync_playwright() as p:
        page = open_page(p)
        caption = caption_in_page(page, url, clip, "ko")
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 900}
LANG_LABELS = {"ko": "한국어", "en": "English"}  # the caption-language choices, as the page shows them


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_demo(folder: Path, env: dict[str, str], log_path: Path, *options: str,
               timeout_s: float = 120) -> tuple[subprocess.Popen, str]:
    """`vcap demo FOLDER` in a subprocess, once it answers on its port: (process, url)."""
    port = free_port()
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, "-m", "vcap", "demo", str(folder), "--port", str(port), *options],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the demo exited: {log_path.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the demo did not answer: {log_path.read_text()[-3000:]}")


def chromium() -> str | None:
    """Debian's Chromium, installed with `make chromium` if missing; None when it cannot be."""
    if not Path(CHROMIUM).exists():
        subprocess.run(["make", "-C", str(ROOT), "chromium"], capture_output=True, timeout=600)
    return CHROMIUM if Path(CHROMIUM).exists() else None


def open_page(playwright, executable: str = CHROMIUM):
    """A new page in a headless Chromium that makes no calls of its own."""
    browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                         args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                               "--disable-component-update", "--disable-sync", "--no-first-run"])
    return browser.new_page(viewport=VIEWPORT)


def caption_in_page(page, url: str, clip: str | Path, lang: str, ui_lang: str | None = None,
                    timeout_ms: int = 120_000) -> str:
    """Open the demo, upload ``clip``, caption it in ``lang`` with the page's defaults (the
    captioner's own prompt, greedy) and return the caption once the stream has ended. The page is
    left showing the result (its interface in ``ui_lang``, default: the caption's language)."""
    from playwright.sync_api import expect

    page.goto(url)
    if (ui_lang or lang) != "ko":  # the page opens in Korean
        page.locator("#ui-lang").get_by_label("English").check()
        expect(page.locator("#caption-button")).to_have_text("Caption", timeout=10_000)
    page.locator("#video input[type=file]").set_input_files(str(clip))
    expect(page.locator("#video video")).to_be_visible(timeout=30_000)
    page.locator("#caption-lang").get_by_label(LANG_LABELS[lang]).check()
    page.locator("#caption-button").click()
    output = page.locator("#caption-output textarea")
    expect(output).not_to_have_value("", timeout=timeout_ms)
    # gradio marks an output that is still streaming with a status overlay ("pending"/"generating")
    expect(page.locator("#caption-output .generating, #caption-output .pending")).to_have_count(0, timeout=timeout_ms)
    page.wait_for_timeout(300)  # let the last update paint before a screenshot
    return output.input_value()
