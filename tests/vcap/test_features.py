"""The vision feature store: bfloat16 on disk, read per item, memory flat in the number of clips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]

READ_ALL = r"""
import json, sys
from pathlib import Path
import torch
from tests.tiny import tiny_captioner
from vcap.data import CaptionDataset, collate, read_manifest
from vcap.features import FeatureCache

def rss_kib():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS:")).split()[1])

folder, count = Path(sys.argv[1]), int(sys.argv[2])
captioner = tiny_captioner()
cache = FeatureCache(folder / "cache", "test-encoder")
samples = read_manifest(folder / "manifest.jsonl")[:count]
before = rss_kib()
dataset = CaptionDataset(samples, cache, captioner)
for start in range(0, len(dataset), 8):  # every sample once, a batch at a time, as an epoch does
    batch = collate([dataset[i] for i in range(start, min(len(dataset), start + 8))], captioner.tokenizer.pad_id)
print(len(dataset), rss_kib() - before)  # the dataset is alive: what it holds is resident
"""


def test_memory_does_not_grow_with_the_number_of_clips(tmp_path):
    from vcap.features import FeatureCache

    cache = FeatureCache(tmp_path / "cache", "test-encoder")
    lines = []
    for i in range(2400):
        video = tmp_path / "clips" / f"{i:05d}.mp4"
        video.parent.mkdir(exist_ok=True)
        video.write_bytes(b"a video")  # never decoded: its features are in the store
        cache.put(video, torch.randn(8, 16, 256), [k / 4 for k in range(8)], 2.0)  # 64 KiB each in bfloat16: 150 MiB for all
        lines.append(f'{{"video": "{video}", "caption": "Two red circles move left.", "lang": "en"}}\n')
    (tmp_path / "manifest.jsonl").write_text("".join(lines))
    assert cache.get(tmp_path / "clips" / "00000.mp4").dtype == torch.bfloat16
    grown = {}
    for count in (400, 2400):
        result = subprocess.run([sys.executable, "-c", READ_ALL, str(tmp_path), str(count)], capture_output=True,
                                text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, result.stderr[-2000:]
        size, kib = map(int, result.stdout.split())
        assert size == count
        grown[count] = kib / 1024
    # 2000 more clips would add 125 MiB if their features stayed in memory
    print("feature-store growth, MiB:", grown)
    assert grown[2400] - grown[400] < 40, grown
