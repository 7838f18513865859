"""4-bit NF4 loading against transformers + bitsandbytes (the reference we did not write)."""

from __future__ import annotations

import pytest
import torch

from qwen3_backbone import load_pretrained
from qwen3_backbone.quantize import quantize_4bit, quantized_layer_names

from .conftest import make_hf_model, padded_batch

# bitsandbytes' CPU kernel packs 4-bit weights for inference in blocks: widths in multiples of 128
SHAPES = {
    "dense": ("Qwen3", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=32, tie_word_embeddings=False)),
    "moe": ("Qwen3Moe", dict(hidden_size=128, intermediate_size=256, moe_intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_experts=4,
                             num_experts_per_tok=2, norm_topk_prob=True)),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("four_bit")
    for name, (kind, kwargs) in SHAPES.items():
        make_hf_model(kind, seed=3, **kwargs).to(torch.bfloat16).save_pretrained(root / name)
    return {name: root / name for name in SHAPES}


def reference_4bit(path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=config, dtype=torch.bfloat16,
                                                device_map="cpu").eval()


@pytest.mark.parametrize("name", list(SHAPES))
def test_streamed_4bit_equals_transformers_with_bitsandbytes(checkpoints, name):
    import bitsandbytes as bnb

    ours = load_pretrained(checkpoints[name], dtype=torch.bfloat16, load_in_4bit=True)
    theirs = reference_4bit(checkpoints[name])
    layers = quantized_layer_names(ours)
    assert layers and all(isinstance(ours.get_submodule(n), bnb.nn.Linear4bit) for n in layers)
    if "moe" in name:  # the router stays exact, the experts are quantized
        assert not any(n.endswith("mlp.gate") for n in layers)
        assert any(".experts." in n for n in layers)
    # transformers keeps a MoE's experts as one fused tensor it does not quantize: compare the layers both quantize
    shared = [n for n in layers if isinstance(dict(theirs.named_modules()).get(n), bnb.nn.Linear4bit)]
    assert len(shared) >= 4 * 2  # the attention projections of both layers at least
    for layer in shared:
        a, b = ours.get_submodule(layer).weight, theirs.get_submodule(layer).weight
        assert torch.equal(a.data, b.data) and torch.equal(a.quant_state.absmax, b.quant_state.absmax), layer
    if name == "moe":
        return  # and so its logits differ by the experts' quantization
    assert ours.model.embed_tokens.weight.dtype == torch.bfloat16  # embeddings and head stay bf16
    # the same weights kept the same way: as many bytes as transformers' model, statistics included,
    # and its own count (which leaves the statistics out) plus those statistics
    from qwen3_backbone.quantize import footprint

    def weights_only(model):  # transformers keeps a second copy of the RoPE frequencies as a buffer
        return {**footprint(model), "bytes": footprint(model)["bytes"] - sum(b.nbytes for b in model.buffers())}

    assert weights_only(ours) == weights_only(theirs)
    statistics = sum(t.numel() * t.element_size() for m in theirs.modules() if isinstance(m, bnb.nn.Linear4bit)
                     for t in m.weight.quant_state.as_dict().values() if isinstance(t, torch.Tensor))
    assert footprint(ours)["bytes"] - statistics <= theirs.get_memory_footprint() <= footprint(ours)["bytes"]
    ids, mask = padded_batch()
    with torch.no_grad():
        a, b = ours(ids, attention_mask=mask).float(), theirs(ids, attention_mask=mask).logits.float()
    real = mask.bool()  # the same 4-bit weights; bf16 sums may round apart by an ulp or two
    assert (a[real] - b[real]).abs().max() < 0.1 and torch.equal(a[real].argmax(-1), b[real].argmax(-1))


def test_quantizing_a_model_in_memory_gives_the_same_weights(checkpoints):
    streamed = load_pretrained(checkpoints["dense"], dtype=torch.bfloat16, load_in_4bit=True)
    in_memory = load_pretrained(checkpoints["dense"], dtype=torch.bfloat16)
    assert quantize_4bit(in_memory, compute_dtype=torch.bfloat16) == len(quantized_layer_names(streamed))
    for layer in quantized_layer_names(streamed):
        assert torch.equal(streamed.get_submodule(layer).weight.data, in_memory.get_submodule(layer).weight.data)


def _mapped_from(tensor: torch.Tensor, file) -> bool:
    """Whether ``tensor``'s memory lies in a mapping of ``file`` (Linux /proc/self/maps)."""
    address = tensor.data_ptr()
    for line in open("/proc/self/maps"):
        span, *_, path = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in span.split("-"))
        if low <= address < high and path.strip() == str(file):
            return True
    return False


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="reads Linux /proc")
def test_the_4bit_build_reads_large_kept_tensors_in_place(checkpoints, monkeypatch):
    """Embeddings and head stay memory-mapped, as transformers keeps them, so rows no token uses
    cost no memory on a CPU; small kept tensors are copied, so no mapping of the quantized
    weights' pages stays open."""
    from qwen3_backbone import weights

    monkeypatch.setattr(weights, "REOPEN_BYTES", 16 * 1024)  # the test model's embedding is 38 KiB
    model = load_pretrained(checkpoints["dense"], dtype=torch.bfloat16, load_in_4bit=True)
    file = (checkpoints["dense"] / "model.safetensors").resolve()
    assert _mapped_from(model.model.embed_tokens.weight, file) and _mapped_from(model.lm_head.weight, file)
    assert not _mapped_from(model.model.norm.weight, file)
    assert not _mapped_from(model.model.layers[0].input_layernorm.weight, file)
