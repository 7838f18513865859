"""Training data: manifests, tokenized samples and their loss mask, the vision feature cache, each
epoch's batches."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from vcap.data import IGNORE_INDEX, ManifestError, read_manifest
from vcap.features import FeatureCache, encoder_fingerprint, extract_features


def test_manifest_forms_and_relative_paths(tmp_path):
    (tmp_path / "clips").mkdir()
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"video": "clips/a.mp4", "caption": "빨간 공이 굴러갑니다.", "lang": "ko"}, ensure_ascii=False) + "\n\n"
        + json.dumps({"video": "/abs/b.mp4", "conversations": [
            {"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "A ball rolls."},
            {"from": "human", "value": "What colour?"}, {"from": "gpt", "value": "Red."}]}) + "\n",
        encoding="utf-8")
    a, b = read_manifest(manifest)
    assert a.video == tmp_path / "clips" / "a.mp4" and a.lang == "ko" and a.caption == "빨간 공이 굴러갑니다."
    assert a.turns[0][0]  # the default Korean instruction
    assert b.video == Path("/abs/b.mp4") and b.turns == [("What happens?", "A ball rolls."), ("What colour?", "Red.")]


def test_manifest_errors_name_every_bad_line(tmp_path):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text("\n".join([
        json.dumps({"video": "a.mp4", "caption": "ok", "lang": "en"}),
        "{not json",
        json.dumps({"caption": "no video", "lang": "en"}),
        json.dumps({"video": "c.mp4", "caption": "x", "lang": "fr"}),
        json.dumps({"video": "d.mp4", "caption": "no language"}),
        json.dumps({"video": "e.mp4", "conversations": [{"from": "human", "value": "no marker"},
                                                        {"from": "gpt", "value": "x"}]}),
        json.dumps([1, 2]),
    ]) + "\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(manifest)
    assert [line for line, _ in err.value.problems] == [2, 3, 4, 5, 6, 7]
    text = str(err.value)
    assert f"{manifest}:2: not valid JSON" in text and "'video'" in text and "'fr'" in text and "<video>" in text
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_manifest(tmp_path / "missing.jsonl")


def test_loss_covers_only_the_answer(data):
    from ..tiny import tiny_captioner
    from vcap.data import tokenize_sample
    from vcap.processor import VideoLayout

    captioner = tiny_captioner()
    sample = read_manifest(data["train"])[1]
    ids, labels = tokenize_sample(captioner.tokenizer, sample, VideoLayout(12))
    targets = [t for t in labels if t != IGNORE_INDEX]
    im_end = captioner.tokenizer.token_to_id("<|im_end|>")
    assert targets == captioner.tokenizer.encode(sample.caption) + [im_end]
    assert ids.count(captioner.tokenizer.token_to_id("<|video_pad|>")) == 12
    # a non-thinking answer is rendered as the template does: an empty think block precedes it
    text = captioner.tokenizer.decode(ids)
    assert text.endswith(f"<|im_start|>assistant\n<think>\n\n</think>\n\n{sample.caption}<|im_end|>\n")


def test_feature_cache_reuses_and_invalidates(tmp_path, data):
    from ..tiny import tiny_captioner

    captioner = tiny_captioner()
    videos = sorted({s.video for s in read_manifest(data["train"])})
    cache = FeatureCache(tmp_path / "cache", encoder_fingerprint(captioner))
    failed = extract_features(captioner, videos, cache, progress=False)
    assert not failed and len(list((tmp_path / "cache").glob("*.safetensors"))) == len(videos)
    first = {v: cache.get(v) for v in videos}
    assert all(f.dtype == torch.bfloat16 and f.shape[0] == 4 for f in first.values())  # stored in bfloat16

    calls = []
    original = captioner.encode
    captioner.encode = lambda clips: calls.append(len(clips)) or original(clips)
    extract_features(captioner, videos, cache, progress=False)
    assert calls == [] and all(torch.equal(first[v], cache.get(v)) for v in videos)

    os.utime(videos[0], ns=(1, 1))  # the file changed: its features are recomputed
    extract_features(captioner, videos, cache, progress=False)
    assert calls == [1]
    other = tiny_captioner(seed=1)
    other.vision.visual.conv1.weight.data.mul_(2)  # another encoder: another key
    assert encoder_fingerprint(other) != encoder_fingerprint(captioner)


def test_training_prompts_carry_the_stored_frame_times(tmp_path, data):
    """With frames.timestamps: text, the feature store keeps each video's frame times and the
    training prompt labels each frame group with its time (and with frames.end_label, where the
    video stops); the features themselves are shared with timestamps: none (neither setting is part
    of the store's key)."""
    from dataclasses import replace

    from safetensors.torch import load_file, save_file

    from vcap.data import CaptionDataset

    from ..tiny import tiny_captioner

    plain = tiny_captioner()
    timed = tiny_captioner()
    timed.config = replace(timed.config, frames=replace(timed.config.frames, timestamps="text"))
    assert encoder_fingerprint(timed) == encoder_fingerprint(plain)
    samples = read_manifest(data["train"])[:2]
    cache = FeatureCache(tmp_path / "cache", encoder_fingerprint(timed))
    assert not extract_features(timed, [s.video for s in samples], cache, progress=False)
    clip = timed.read(str(samples[0].video))
    times, end = cache.times(samples[0].video)
    assert times == pytest.approx(clip.timestamps) and end == pytest.approx(clip.duration)
    ids = CaptionDataset(samples, cache, timed).tokens[0][0].tolist()
    text = timed.tokenizer.decode(ids)
    labels = [f"<{t:.1f} seconds><|vision_start|>" for t in clip.timestamps]
    assert all(label in text for label in labels) and text.count("<|vision_start|>") == len(clip)
    assert "seconds>" not in timed.tokenizer.decode(CaptionDataset(samples, cache, plain).tokens[0][0].tolist())
    assert f"<|vision_end|>{timed.config.instructions['en']}" in text  # no end label unless asked for
    # with frames.end_label, where the video stops follows its last group as one more label
    ended = tiny_captioner()
    ended.config = replace(ended.config, frames=replace(timed.config.frames, end_label=True))
    assert encoder_fingerprint(ended) == encoder_fingerprint(plain)
    text = ended.tokenizer.decode(CaptionDataset(samples, cache, ended).tokens[0][0].tolist())
    assert f"<|vision_end|><{clip.duration:.1f} seconds>{ended.config.instructions['en']}" in text
    assert text.count("seconds>") == len(clip) + 1
    # a store file written before ends were kept is extracted again only for a captioner that needs it
    path = cache.path(samples[0].video)
    save_file(load_file(str(path)), str(path), metadata={"video": "old", "timestamps": json.dumps(clip.timestamps)})
    assert cache.times(samples[0].video) == (pytest.approx(clip.timestamps), None)
    extract_features(timed, [samples[0].video], cache, progress=False)
    assert cache.times(samples[0].video)[1] is None
    extract_features(ended, [samples[0].video], cache, progress=False)
    assert cache.times(samples[0].video)[1] == pytest.approx(clip.duration)
    # a store file written before times were kept is extracted again
    save_file(load_file(str(path)), str(path), metadata={"video": "old"})
    assert cache.times(samples[0].video) is None
    extract_features(timed, [samples[0].video], cache, progress=False)
    assert cache.times(samples[0].video)[0] == pytest.approx(clip.timestamps)


def test_epoch_batches_cover_the_data_and_split_evenly():
    from vcap.data import epoch_batches

    single = epoch_batches(10, 4, seed=0, epoch=0)
    assert sorted(i for b in single for i in b) == list(range(10)) and [len(b) for b in single] == [4, 4, 2]
    assert epoch_batches(10, 4, seed=0, epoch=1) != single  # a new order each epoch
    shares = [epoch_batches(10, 4, seed=0, epoch=0, rank=r, world=2) for r in range(2)]
    assert [len(s) for s in shares] == [2, 2]  # padded: every process joins every step
    assert {i for s in shares for b in s for i in b} == set(range(10))
