"""The ``vcap`` command: one console script whose ``main(argv)`` dispatches a table of subcommands.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Only the module
of the command being run is imported (``vcap demo`` alone imports the web demo), so the table
below is also what ``vcap --help`` lists. Options and ``key=value`` overrides may come in any
order among the positional arguments.

One error boundary serves every command (:func:`run_command`):

- a known mistake (a bad config key or value, a bad manifest line, a missing or corrupt captioner
  folder or weights file, an output path vcap may not or cannot write, a full disk) prints one
  message naming the file, key or line and what to do, and exits 2, without a traceback;
- Ctrl-C exits 130 without a traceback, a second Ctrl-C too;
- anything else is a bug and shows its traceback.
Commands may define more codes of their own (``vcap caption`` exits 1 when some videos failed).
"""

from __future__ import annotations

import argparse
import difflib
import errno
import importlib
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from . import __version__

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130

# name -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("vcap.recipes.quickstart", "synthetic clips -> four training stages (three with --no-dense) -> export -> evaluation of both tasks, offline (make quickstart)"),
    "train": ("vcap.train", "train the projector, LoRA adapters or the whole language model from a YAML config"),
    "caption": ("vcap.caption.command", "caption videos, folders, globs or manifests into JSONL/CSV (resumable; SRT/WebVTT with --segments)"),
    "eval": ("vcap.evaluate", "caption a manifest's videos and report BLEU-4, ROUGE-L, CIDEr-D"),
    "export": ("vcap.export", "merge a run's LoRA adapter and write a self-contained captioner folder"),
    "synth": ("vcap.recipes.synthetic", "write synthetic captioned clips (moving shapes, Korean and English captions)"),
    "data import": ("vcap.datasets.importing", "a public dataset or a fine-tuning framework's file -> a vcap manifest"),
    "data export": ("vcap.datasets.exporting", "a vcap manifest -> ShareGPT (LLaMA-Factory, ms-swift) or LLaVA JSON"),
    "data check": ("vcap.datasets.check", "validate a manifest, probe every video, report, write a clean manifest"),
    # the web demo lives in demo/ (UI code on top of vcap), imported only when `vcap demo` runs
    "demo": ("demo.app", "start the Gradio web demo (binds 127.0.0.1 unless --host says otherwise)"),
}

# judges `vcap eval --judge NAME` can use (see vcap.evaluate.Judge), named by "module:function" and
# imported only when chosen: the core library never imports the recipes they come from
JUDGES: dict[str, str] = {
    "synthetic-attributes": "vcap.recipes.synthetic:judge_attributes",
}

EXIT_CODES = """exit codes: 0 done; 1 the work ran but some inputs failed (vcap caption, vcap eval) or a target was
missed (vcap quickstart); 2 a usage error (the message says what to fix); 130 interrupted (Ctrl-C)."""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: vcap COMMAND [options]   (vcap COMMAND --help for a command's options)", "",
             "Video captioning (Korean and English) with open_clip, a projector and Qwen3.", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines + ["", EXIT_CODES, ""])


def load_judge(name: str) -> Callable:
    """The judge function registered as ``name`` in :data:`JUDGES`."""
    module, function = JUDGES[name].split(":")
    return getattr(importlib.import_module(module), function)


def build_parser(name: str) -> tuple[argparse.ArgumentParser, Callable[[argparse.Namespace], int]]:
    """The parser of one command (importing only its module) and its ``run`` function."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"vcap {name}", description=(module.__doc__ or COMMANDS[name][1]).strip(),
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    return parser, module.run


def main(argv: Sequence[str] | None = None) -> int:
    argv_given = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return EXIT_OK if argv else EXIT_USAGE
    if argv[0] == "--version":
        print(f"vcap {__version__}")
        return EXIT_OK
    name = argv[0]
    group = sorted(c.split()[1] for c in COMMANDS if c.startswith(f"{name} "))
    if group:  # a two-word command (vcap data import)
        if len(argv) < 2 or argv[1] in ("-h", "--help"):
            print(f"usage: vcap {name} {{{','.join(group)}}} ...\n\n" + "\n".join(
                f"  vcap {c:<14}  {COMMANDS[c][1]}" for c in COMMANDS if c.startswith(f"{name} ")),
                file=sys.stdout if len(argv) > 1 else sys.stderr)
            return EXIT_OK if len(argv) > 1 else EXIT_USAGE
        if argv[1] not in group:
            print(f"vcap {name}: unknown command {argv[1]!r}; choose one of {', '.join(group)}", file=sys.stderr)
            return EXIT_USAGE
        name, argv = f"{name} {argv[1]}", [name, *argv[2:]]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean `vcap {close[0]}`?" if close else f"; commands: {', '.join(COMMANDS)}"
        print(f"vcap: unknown command {name!r}{hint}", file=sys.stderr)
        return EXIT_USAGE
    parser, run = build_parser(name)
    try:
        args = parser.parse_intermixed_args(argv[1:])
    except SystemExit as e:  # argparse printed the problem (or --help)
        return int(e.code or 0)
    # a real command line (argv None) keeps ignoring Ctrl-C once interrupted, until the process exits
    return run_command(name, run, args, exiting=not argv_given)


def run_command(name: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace,
                exiting: bool = False) -> int:
    """Run a command behind the error boundary described in the module docstring. ``exiting``:
    the process ends after this, so a Ctrl-C after the first one is ignored to the end (a second
    Ctrl-C would otherwise print a traceback from the interpreter's exit handlers)."""
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        previous = _ignore_interrupts()
        print(f"\nvcap {name}: interrupted", file=sys.stderr)
        if not exiting and previous is not None:
            signal.signal(signal.SIGINT, previous)
        return EXIT_INTERRUPTED
    except Exception as e:
        message = known_mistake(e)
        if message is None:
            raise  # a bug: keep the traceback
        print(f"vcap {name}: {message}", file=sys.stderr)
        return EXIT_USAGE


def known_mistake(error: BaseException) -> str | None:
    """The message for an error the user can fix, or None for a bug."""
    from qwen3_backbone.weights import CheckpointError

    from .errors import UsageError

    if isinstance(error, (UsageError, CheckpointError)):
        return str(error)
    if isinstance(error, OSError) and error.errno is not None:
        where = f" {error.filename}" if error.filename else ""
        if error.errno == errno.ENOSPC:
            return (f"no space left on the disk (writing{where or ' the output'}): free some space and run the same "
                    f"command again; what was already written is kept")
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"permission denied:{where or ' ' + str(error)}; choose a location you can read and write"
        if error.errno == errno.ENAMETOOLONG:
            return f"file name too long:{where}"
        if error.errno == errno.ENOENT and error.filename:
            return f"not found:{where}"
    if isinstance(error, FileNotFoundError):  # raised with a message naming the file and what to do
        return str(error)
    return None


def _ignore_interrupts():
    """Ignore Ctrl-C from now on (main thread only); returns the handler it replaced."""
    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGINT, signal.SIG_IGN)
    return None


# -- opening a captioner: the options every command that loads one shares -------------------------------

def add_captioner_options(parser: argparse.ArgumentParser) -> None:
    """--device, --dtype, --load-in-4bit, --allow-downloads, --allow-external-paths."""
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                        help="weights' dtype (default: the captioner's own; auto: bfloat16 where the device has it "
                             "natively, else float32)")
    parser.add_argument("--load-in-4bit", action="store_true",
                        help="the language model's decoder weights in 4-bit NF4 (bitsandbytes; CUDA or CPU)")
    parser.add_argument("--allow-downloads", action="store_true",
                        help="let the captioner fetch hub weights that are not in the local cache (off: offline)")
    parser.add_argument("--allow-external-paths", action="store_true",
                        help="let the captioner folder name files outside itself (off by default)")


def open_captioner(args: argparse.Namespace, folder: str | None = None):
    """The captioner the command line names, loaded as its options say; says which dtype it chose."""
    from .builder import load_captioner

    captioner = load_captioner(folder or args.captioner, device=args.device, dtype=args.dtype,
                               allow_downloads=args.allow_downloads, allow_external_paths=args.allow_external_paths,
                               load_in_4bit=args.load_in_4bit)
    asked = args.dtype or captioner.config.dtype
    why = " (auto for this device)" if asked == "auto" else ""
    quant = ", decoder weights in 4-bit NF4" if args.load_in_4bit else ""
    print(f"captioner on {args.device} in {str(captioner.dtype).removeprefix('torch.')}{why}{quant}", file=sys.stderr)
    return captioner


# -- argument types: numeric options are checked where they are parsed (argparse names the option) --

def _number(kind: type, test: Callable[[float], bool], rule: str) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _number(int, lambda v: v >= 1, ">= 1")
non_negative_int = _number(int, lambda v: v >= 0, ">= 0")
positive_float = _number(float, lambda v: v > 0, "> 0")
non_negative_float = _number(float, lambda v: v >= 0, ">= 0")
probability = _number(float, lambda v: 0 < v <= 1, "in (0, 1]")


if __name__ == "__main__":
    sys.exit(main())
