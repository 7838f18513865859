"""Bringing data in and out: importers of the public video-caption datasets and of the fine-tuning
frameworks' formats, exporters back to those formats, and a checker that probes every video of a
manifest before training (``vcap data import|export|check``)."""
