"""Caption-word pre-training of the stand-in image tower (vcap.recipes.vision_pretrain)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from vcap.config import CaptionerConfig, FramesConfig
from vcap.recipes.synthetic import make_dataset
from vcap.vision import VisionConfig, VisionEncoder
from vcap.recipes.vision_pretrain import VisionPretrainConfig, caption_words, load_clips, pretrain_vision

from ..tiny import TINY_RESNET


def test_caption_words_in_korean_and_english():
    assert caption_words("Two small red circles move, from left to right.") == [
        "two", "small", "red", "circles", "move", "from", "left", "to", "right"]
    assert caption_words("회색 배경에서 작은 원 두 개가 움직입니다.") == ["회색", "배경에서", "작은", "원", "두", "개가", "움직입니다"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    manifest = make_dataset(folder, n_train=24, n_val=1, n_test=1, size=64, num_frames=8, progress=False)["train"]
    lines = manifest.read_text(encoding="utf-8").splitlines()
    (folder / "train" / "broken.mp4").write_bytes(b"not a video")
    lines.append(json.dumps({"video": "train/broken.mp4", "caption": "A broken clip.", "lang": "en"}))
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def model_config() -> CaptionerConfig:
    return CaptionerConfig(language_model="preset:tiny", vision=VisionConfig(**TINY_RESNET),
                           frames=FramesConfig(num_frames=4, size=64))


def test_clips_carry_the_words_of_both_languages_and_bad_videos_are_reported(clips):
    frames, words, skipped = load_clips(clips, model_config(), frames_per_clip=6)
    assert frames.shape == (24, 6, 64, 64, 3)
    assert all({"background", "배경에서"} <= bag for bag in words)  # the English and the Korean caption
    assert len(skipped) == 1 and "broken.mp4" in skipped[0]


def test_pretraining_learns_from_the_pixels_and_writes_a_loadable_tower(clips, tmp_path):
    model = model_config()
    out = tmp_path / "vision" / "vision.safetensors"
    cfg = VisionPretrainConfig(steps=60, batch_size=32, lr=3e-3, frames_per_clip=4)
    result = pretrain_vision(model, clips, out, cfg, progress=False)
    assert (result["clips"], result["skipped"]) == (24, 1)

    # the best a tower that sees nothing can do is predict each word's frequency; the trained one beats it
    _, words, _ = load_clips(clips, model, frames_per_clip=1)
    vocab = sorted(set().union(*words))
    freq = [sum(w in bag for bag in words) / len(words) for w in vocab]
    blind = sum(-(p * math.log(p) + (1 - p) * math.log(1 - p)) for p in freq if 0 < p < 1) / len(vocab)
    assert result["first_loss"] > 0.6 and result["last_loss"] < 0.8 * blind

    tower = VisionEncoder(model.vision)
    random_tokens = tower(torch.zeros(1, 3, 64, 64))
    tower.load_weights(out)  # strict: every weight of the pruned tower, nothing else
    assert not torch.allclose(tower(torch.zeros(1, 3, 64, 64)), random_tokens)
    assert [p.name for p in out.parent.iterdir()] == ["vision.safetensors"]  # no temporary file left

    again = tmp_path / "again.safetensors"
    pretrain_vision(model, clips, again, cfg, progress=False)
    first, second = load_file(str(out)), load_file(str(again))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)  # a seed's result


def test_no_readable_video_is_an_error_naming_the_manifest(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"nope")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"video": "bad.mp4", "caption": "x", "lang": "en"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="m.jsonl: no readable video"):
        pretrain_vision(model_config(), manifest, tmp_path / "v.safetensors", VisionPretrainConfig(steps=1))
