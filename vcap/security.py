"""What a captioner folder or a config may make vcap do: read data, never run code, stay offline.

A captioner folder (``captioner.json`` and the files beside it) and a training YAML are data.
They can name weights and settings, but:

- nothing they name is ever executed: weights are read from safetensors only (no pickle), no
  ``trust_remote_code``, and what they pass on to another library's constructor (open_clip's
  model config, peft's adapter config) goes through an allow-list;
- the files a captioner folder names resolve inside that folder;
- nothing is fetched from the network.

Only the caller can relax the last two, with one :class:`Access` value (the CLI's
``--allow-downloads`` and ``--allow-external-paths``; in Python ``load_captioner(...,
allow_downloads=True, allow_external_paths=True)``); a config file cannot. With downloads off,
the Hugging Face cache on disk is still read, so weights fetched once (``hf download ...``) keep
working offline. This module is the one place that decides; it sets no environment variable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import CaptionerError


@dataclass(frozen=True)
class Access:
    """What the caller allows beyond the safe default (both off)."""

    allow_downloads: bool = False  # fetch weights from the Hugging Face hub when they are not cached
    allow_external_paths: bool = False  # let a captioner folder name files outside itself

    def check_download(self, what: str, hint: str) -> None:
        """Raise unless downloads are allowed; ``hint`` says how to get ``what`` onto disk instead."""
        if not self.allow_downloads:
            raise CaptionerError(
                f"{what} would be fetched from the network, and vcap does not download unless asked to.\n"
                f"{hint}\nor allow downloads: --allow-downloads on the command line, allow_downloads=True in Python."
            )


OFFLINE = Access()


def inside(folder: Path, value: str, key: str, access: Access = OFFLINE) -> Path:
    """The path ``value`` (from ``key`` of ``folder``'s captioner.json) resolved inside ``folder``.

    Absolute paths and paths that leave the folder (``..``, or a symbolic link pointing out) are
    refused unless ``access.allow_external_paths``."""
    path = Path(value).expanduser()
    resolved = (folder / path).resolve() if not path.is_absolute() else path.resolve()
    if access.allow_external_paths:
        return resolved
    root = folder.resolve()
    if path.is_absolute() or not (resolved == root or resolved.is_relative_to(root)):
        raise CaptionerError(
            f"{folder / 'captioner.json'}: {key} = {value!r} is outside the captioner folder; a captioner folder "
            f"may only name files inside itself. Copy the file into {folder}, or, if you trust this folder, "
            f"allow it with --allow-external-paths (allow_external_paths=True in Python)."
        )
    return resolved

