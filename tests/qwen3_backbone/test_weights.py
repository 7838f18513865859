"""Loading and saving in the Hugging Face format, checked with transformers and broken files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from qwen3_backbone import CheckpointError, load_pretrained, save_pretrained

from .conftest import padded_batch


@pytest.mark.parametrize("name", ["dense_tied_gqa", "moe_sparse_step_mlp_only"])
def test_our_save_reloads_in_transformers_with_identical_logits(hf_checkpoints, tmp_path, name):
    ours = load_pretrained(hf_checkpoints[name])
    out = save_pretrained(ours, tmp_path / "saved")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    ids, mask = padded_batch(seed=20)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        mine = ours(ids, attention_mask=mask)
    assert (ref - mine).abs()[mask.bool()].max() <= 1e-5
    # and our own loader reads our own file back bit for bit
    again = load_pretrained(out)
    for (n1, p1), (n2, p2) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_sharded_checkpoint_round_trip(hf_checkpoints, tmp_path):
    ours = load_pretrained(hf_checkpoints["dense_untied_mqa"])
    out = save_pretrained(ours, tmp_path / "sharded", max_shard_bytes=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((out / s).exists() for s in shards)
    again = load_pretrained(out)
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(1, 256, (2, 9))
    with torch.no_grad():
        assert torch.equal(again(ids), ours(ids))
        assert (hf(ids).logits - ours(ids)).abs().max() <= 1e-5


def test_tied_embeddings_share_one_tensor(hf_checkpoints):
    keys = load_file(str(hf_checkpoints["dense_tied_gqa"] / "model.safetensors")).keys()
    assert "lm_head.weight" not in keys
    model = load_pretrained(hf_checkpoints["dense_tied_gqa"])
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_dtype_and_eval_mode(hf_checkpoints):
    model = load_pretrained(hf_checkpoints["moe_norm_topk"], dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not model.training
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32


# -- broken checkpoints ----------------------------------------------------------------------

def _copy(src: Path, dst: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    shutil.copytree(src, dst)
    return dst, load_file(str(dst / "model.safetensors"))


def test_missing_tensor_is_named(hf_checkpoints, tmp_path):
    path, state = _copy(hf_checkpoints["dense_untied_mqa"], tmp_path / "ck")
    del state["model.layers.1.self_attn.k_norm.weight"]
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.1\.self_attn\.k_norm\.weight'"):
        load_pretrained(path)


def test_wrong_shape_is_named(hf_checkpoints, tmp_path):
    path, state = _copy(hf_checkpoints["dense_untied_mqa"], tmp_path / "ck")
    state["model.layers.0.mlp.up_proj.weight"] = torch.zeros(81, 48)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.mlp\.up_proj\.weight' has shape \(81, 48\).*\(80, 48\)"):
        load_pretrained(path)


def test_unexpected_tensor_is_named(hf_checkpoints, tmp_path):
    path, state = _copy(hf_checkpoints["moe_norm_topk"], tmp_path / "ck")
    state["model.layers.0.mlp.experts.8.up_proj.weight"] = torch.zeros(32, 64)  # a 9th expert of 8
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.0\.mlp\.experts\.8\.up_proj\.weight'"):
        load_pretrained(path)


def test_missing_config_field_is_named(hf_checkpoints, tmp_path):
    path, _ = _copy(hf_checkpoints["dense_untied_mqa"], tmp_path / "ck")
    config = json.loads((path / "config.json").read_text())
    del config["num_hidden_layers"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="missing required field.*'num_hidden_layers'"):
        load_pretrained(path)


def test_pickle_only_folder_is_refused(tmp_path, hf_checkpoints):
    path = tmp_path / "pickled"
    path.mkdir()
    shutil.copy(hf_checkpoints["dense_untied_mqa"] / "config.json", path)
    (path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_pretrained(path)


def test_uncached_hub_id_fails_fast_with_instructions():
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="local directory") as err:
        load_pretrained("vcap-tests/not-a-cached-model")
    assert time.perf_counter() - start < 5
    assert "hf download vcap-tests/not-a-cached-model --local-dir" in str(err.value)


def test_missing_local_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        load_pretrained(tmp_path / "nowhere")


# -- memory: never two copies of the weights --------------------------------------------------

MEMORY_PROBE = r"""
import sys, torch, vcap, qwen3_backbone
def anon_mb():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('RssAnon')) / 1024
qwen3_backbone.load_pretrained(sys.argv[1], dtype=sys.argv[2])  # warm-up: lazy imports, allocator
before = anon_mb()
model = qwen3_backbone.load_pretrained(sys.argv[1], dtype=sys.argv[2])
size = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
print(anon_mb() - before, size)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux /proc")
def test_loading_holds_at_most_one_copy_of_the_weights(tmp_path):
    from .conftest import make_hf_model

    path = tmp_path / "ck"
    make_hf_model("Qwen3", hidden_size=768, intermediate_size=3072, num_hidden_layers=6, num_attention_heads=12,
                  num_key_value_heads=4, head_dim=64).save_pretrained(path)  # ~160 MB in fp32
    for dtype in ("bfloat16", "float32"):
        out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path), dtype],
                             capture_output=True, text=True, check=True)
        grown, size = map(float, out.stdout.split())
        # bf16 converts each tensor once (one copy); fp32 maps the file (copy-free)
        assert grown <= 1.15 * size + 8, (dtype, grown, size)


# -- oneDNN weight packing for bf16 CPU inference ----------------------------------------------

@pytest.mark.parametrize("name", ["dense_tied_gqa", "moe_sparse_step_mlp_only"])
def test_packed_bf16_model_gives_the_same_tokens_and_saves_normally(hf_checkpoints, tmp_path, name):
    from qwen3_backbone import pack_for_cpu_inference, unpack_weights
    from qwen3_backbone.generate import generate

    plain = load_pretrained(hf_checkpoints[name], dtype=torch.bfloat16)
    packed = load_pretrained(hf_checkpoints[name], dtype=torch.bfloat16)
    count = pack_for_cpu_inference(packed)
    linears = sum(1 for n, p in plain.named_parameters() if n.endswith("proj.weight") or n.endswith("gate.weight"))
    assert count == linears + 1 and packed.lm_head.weight.is_mkldnn  # a tied head gets a packed copy
    assert not packed.model.embed_tokens.weight.is_mkldnn
    ids, mask = padded_batch(seed=21)
    with torch.no_grad():
        a, b = plain(ids, attention_mask=mask), packed(ids, attention_mask=mask)
    assert (a.float() - b.float()).abs()[mask.bool()].max() <= 0.02 * a.float().abs().max()
    kwargs = dict(max_new_tokens=12, stop_token_ids=(), pad_token_id=0)
    assert torch.equal(generate(plain, ids, mask, **kwargs), generate(packed, ids, mask, **kwargs))
    saved = load_pretrained(save_pretrained(packed, tmp_path / "from_packed"), dtype=torch.bfloat16)
    for (n1, p1), (n2, p2) in zip(plain.state_dict().items(), saved.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert unpack_weights(packed) == count
    assert not any(p.is_mkldnn for p in packed.parameters())
    tied = packed.config.tie_word_embeddings
    assert (packed.lm_head.weight is packed.model.embed_tokens.weight) == tied  # tied again, as loaded
    with torch.no_grad():
        assert torch.equal(packed(ids, attention_mask=mask), a)
