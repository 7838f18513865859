"""The ``vcap`` command: one console script whose ``main(argv)`` dispatches a table of subcommands.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``; the table
below is the whole list, so ``vcap --help`` shows every command and tests call ``main([...])``
in-process.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__

# name -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("vcap.quickstart", "synthetic clips -> three training stages -> export -> evaluation, offline (make quickstart)"),
    "train": ("vcap.train", "train the projector, LoRA adapters or the whole language model from a YAML config"),
    "caption": ("vcap.caption", "caption videos, folders, globs or manifests into JSONL/CSV (resumable; SRT/WebVTT with --segments)"),
    "eval": ("vcap.evaluate", "caption a manifest's videos and report BLEU-4, ROUGE-L, CIDEr-D (and METEOR)"),
    "export": ("vcap.export", "merge a run's LoRA adapter and write a self-contained captioner folder"),
    "synth": ("vcap.synthetic", "write synthetic captioned clips (moving shapes, Korean and English captions)"),
    # the web demo lives in demo/ (UI code on top of vcap); named here by module, imported only when parsing
    "demo": ("demo.app", "start the Gradio web demo (binds 127.0.0.1 unless --host says otherwise)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vcap",
        description="Video captioning (Korean and English) with open_clip, a projector and Qwen3.",
    )
    parser.add_argument("--version", action="version", version=f"vcap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
