"""Mistakes a user can fix, told apart from bugs.

Every error vcap raises for bad input derives from :class:`UsageError`, and its message names the
file, key or line and says what to do. The ``vcap`` command prints that message and exits 2 (see
``vcap/cli.py``); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UsageError(Exception):
    """A mistake in what the user gave vcap (a file, a config key, an option), not a bug."""


class OutputError(UsageError):
    """An output path vcap must not touch (someone else's file) or cannot write."""


class CaptionerError(UsageError, FileNotFoundError):
    """A captioner folder that is missing, incomplete or not allowed (names the file)."""
