"""`make screenshots`: regenerate the pictures of the demo in the README from the current
quickstart captioner, and refuse to write a picture whose caption is wrong.

Each picture is the real page in headless Chromium (the path the browser test drives) after
captioning one held-out test clip of the quickstart with the page's defaults (the captioner's
own prompt, greedy). The caption on the page must equal that clip's reference caption in the
test manifest; otherwise the picture is not written and the command exits 1.

    python -m demo.screenshots [--run runs/quickstart] [--out docs]

Exit codes: 0 every picture written, 1 a caption did not match (nothing written for it),
2 usage error (no quickstart run, no Chromium).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qwen3_backbone.files import write_bytes
from vcap.data import Sample, read_manifest

from .browser import caption_in_page, chromium, open_page, start_demo


@dataclass(frozen=True)
class Shot:
    """One picture: which test clip it shows and in which language."""

    name: str  # the file written under --out
    lang: str  # caption language, and the page's interface language
    unseen: bool = True  # a clip whose attribute combination training never showed
    skip: int = 0  # take the clip after ``skip`` matching ones, so that two pictures show different clips

    def __post_init__(self) -> None:
        if self.lang not in ("ko", "en") or self.skip < 0 or Path(self.name).name != self.name:
            raise ValueError(f"bad shot {self}")


SHOTS = (Shot("demo.png", "ko"), Shot("demo-en.png", "en", skip=1))


def pick_clip(samples: list[Sample], shot: Shot) -> Sample:
    """The test-manifest line a picture shows: in manifest order, the shot's language and kind."""
    matching = [s for s in samples if s.lang == shot.lang and bool(s.extra.get("unseen_combination")) == shot.unseen]
    if len(matching) <= shot.skip:
        raise LookupError(f"the test manifest has no {shot.skip + 1}th {shot.lang} clip"
                          f"{' of an unseen combination' if shot.unseen else ''}")
    return matching[shot.skip]


@dataclass
class Outcome:
    shot: Shot
    clip: Path
    shown: str  # the caption on the page
    reference: str

    @property
    def correct(self) -> bool:
        return self.shown.strip() == self.reference.strip()


def take_screenshots(captioner_dir: Path, manifest: Path, out_dir: Path, shots=SHOTS, env: dict | None = None,
                     executable: str | None = None) -> list[Outcome]:
    """Caption each shot's clip in the page; write ``out_dir/shot.name`` only when the caption is
    the clip's reference. Returns every outcome, right or wrong."""
    from playwright.sync_api import sync_playwright

    samples = read_manifest(manifest)
    picked = [(shot, pick_clip(samples, shot)) for shot in shots]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", **(env or {})}
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="vcap-screenshots-") as work:
        process, url = start_demo(captioner_dir, env, Path(work) / "demo.log")
        try:
            with sync_playwright() as p:
                page = open_page(p, executable or chromium())
                for shot, sample in picked:
                    shown = caption_in_page(page, url, sample.video, shot.lang)
                    outcome = Outcome(shot, sample.video, shown, sample.caption)
                    if outcome.correct:
                        write_bytes(out_dir / shot.name, page.screenshot(full_page=True))
                    outcomes.append(outcome)
        finally:
            process.terminate()
            process.wait(timeout=30)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.screenshots", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/quickstart", help="a `vcap quickstart` folder (default runs/quickstart)")
    parser.add_argument("--out", default="docs", help="where the pictures go (default docs)")
    args = parser.parse_args(argv)
    run = Path(args.run)
    captioner_dir, manifest = run / "captioner", run / "data" / "test.jsonl"
    if not (captioner_dir / "captioner.json").exists() or not manifest.exists():
        print(f"screenshots: no quickstart run at {run} ({captioner_dir} and {manifest}): run `make quickstart` first",
              file=sys.stderr)
        return 2
    executable = chromium()
    if executable is None:
        print("screenshots: no Chromium at /usr/bin/chromium and `make chromium` could not install it", file=sys.stderr)
        return 2
    outcomes = take_screenshots(captioner_dir, manifest, Path(args.out), executable=executable)
    for o in outcomes:
        where = Path(args.out) / o.shot.name
        kind = "unseen combination" if o.shot.unseen else "seen combination"
        if o.correct:
            print(f"{where}: {o.clip.relative_to(run / 'data')} ({kind}), {o.shot.lang}: {o.shown.strip()}")
        else:
            print(f"{where} NOT written: the page says {o.shown.strip()!r}, but the reference caption of "
                  f"{o.clip.relative_to(run / 'data')} is {o.reference!r}", file=sys.stderr)
    return 0 if all(o.correct for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
