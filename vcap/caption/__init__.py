"""Batch captioning over folders of videos (``vcap caption``; see ``vcap/caption/command.py`` for
what it does and promises).

The package in parts: ``discovery`` (which videos), ``journal`` (the output and what is done),
``reading`` (worker processes reading ahead), ``pipeline`` (the run), ``command`` (the CLI).
"""

from .discovery import VIDEO_EXTENSIONS, collect_videos
from .journal import BatchSettings, Journal, model_id, read_records
from .pipeline import BatchOptions, Summary, caption_videos, subtitle_paths
from .reading import start_workers

__all__ = ["VIDEO_EXTENSIONS", "BatchOptions", "BatchSettings", "Journal", "Summary", "caption_videos",
           "collect_videos", "model_id", "read_records", "start_workers", "subtitle_paths"]
