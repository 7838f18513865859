"""The memory comments of configs/*.yaml, computed from measured per-parameter and per-token costs.

For each config it works out, per GPU:

- weights: parameters counted from the architectures (the Qwen3 preset, the open_clip tower) times
  their bytes: 2 in bf16; in 4-bit, what bitsandbytes' NF4 with double quantization measures for
  one decoder layer of this width (statistics included); the full stage's fp32 language model 4;
- training state: every trainable parameter (projector, LoRA adapters, the whole language model
  in the full stage) in fp32 with its gradient and AdamW's two moments: 16 bytes (12 beside the
  full stage's fp32 language model, already counted);
- activations: the bytes autograd saves for backward, measured with saved-tensor hooks on the
  CPU on a model of this width (real vocabulary, one and two decoder layers, the stage's LoRA or
  4-bit layers), per token; scaled to the config's batch and sequence. With gradient checkpointing
  each layer keeps only its input (tokens x hidden x 2 bytes) and one layer's saved tensors are
  rebuilt at a time during backward.

The sequence is the config's video tokens (frames x the projector's tokens per frame), with
``frames.timestamps: text`` 10 more per frame group (its time label, at most 8 Qwen3 tokens for
videos under 1,000 s, and its own vision start and end), plus 32 prompt tokens and
``model.max_new_tokens`` caption tokens (an upper bound), all of them targets; attention is
assumed to keep O(tokens) state (flash or memory-efficient SDPA, as on CUDA). Not counted: the CUDA
context (~0.5 GB), the allocator's fragmentation, DDP's gradient buckets (trainable bytes x 1).

    .venv/bin/python bench/config_memory.py                 # print each config's figures
    .venv/bin/python bench/config_memory.py --write         # rewrite the comment block in configs/
    .venv/bin/python bench/config_memory.py configs/qwen3-8b-vitl14-lora.yaml \
        --set model.language_model=Qwen/Qwen3-32B train.fsdp=true --processes 8   # your own set-up
"""

from __future__ import annotations

import argparse
import functools
import gc
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import vcap  # noqa: E402,F401  (torchvision on a CPU torch, for peft)
from qwen3_backbone import Qwen3Config, Qwen3ForCausalLM  # noqa: E402
from qwen3_backbone.weights import release_freed_memory  # noqa: E402
from vcap.config_io import load_config  # noqa: E402
from vcap.loss import linear_cross_entropy  # noqa: E402

GB = 1024**3
TIME_LABEL_TOKENS = 10  # per frame group with frames.timestamps: text ('<599.5 seconds>' is 8 tokens, + 2 controls)
PROMPT_TOKENS = 32
MARKER = "# Memory per GPU"
SAMPLE_TOKENS = (128, 256)  # lengths of the measured forwards


@dataclass(frozen=True)
class Costs:
    """Measured on a model of one width: bytes autograd keeps for backward."""
    per_layer: float  # one decoder layer, per token
    layer_const: float  # one decoder layer, whatever the tokens (autocast's bf16 copies of fp32 weights)
    head: float  # the final norm, the head at target positions and the loss, per target token
    head_const: float
    bytes_4bit: float  # bytes per 4-bit parameter, NF4 + double-quantization statistics


def saved_bytes(fn) -> int:
    """What autograd saves for backward while ``fn()`` runs: each tensor once, parameters excluded."""
    seen: set[int] = set()
    total = 0

    def pack(tensor: torch.Tensor):
        nonlocal total
        if isinstance(tensor, torch.nn.Parameter) or getattr(tensor, "_is_param", False):
            return tensor
        key = tensor.untyped_storage().data_ptr()
        if key not in seen and not params.get(key):
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
        return tensor

    params: dict[int, bool] = {}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(params)
    return total


def forward_loss(model: Qwen3ForCausalLM, tokens: int, targets: int, params: dict[int, bool]) -> torch.Tensor:
    """vcap's training forward (VideoCaptioner.forward) on embeddings that need a gradient (as the
    projector's output does): hidden states, the head at target positions only, the loss."""
    for p in model.parameters():
        params[p.untyped_storage().data_ptr()] = True
    embeds = torch.randn(1, tokens, model.config.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    hidden = model.model(inputs_embeds=embeds)
    labels = torch.randint(0, model.config.vocab_size, (targets,))
    return linear_cross_entropy(hidden[:, -targets:].reshape(targets, -1), model.lm_head.weight, labels)


@functools.lru_cache(maxsize=None)
def measure(name: str, stage: str, qlora: bool, lora_key: tuple) -> Costs:
    """Saved bytes for ``stage`` at ``name``'s width: one and two layers (real vocabulary) at two
    lengths, so the per-layer and per-token parts separate (each is a straight line in tokens)."""
    saved: dict[tuple[int, int], int] = {}
    bytes_4bit = 0.0
    for layers in (1, 2):
        model = build(name, layers, stage, qlora, lora_key)
        if qlora and layers == 1:
            bytes_4bit = _bytes_per_4bit_param(model)
        model.train()
        for tokens in SAMPLE_TOKENS:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                saved[layers, tokens] = saved_bytes(lambda params: forward_loss(model, tokens, tokens, params))
        model = None
        gc.collect()  # peft and bitsandbytes modules hold reference cycles: free this model before the next
        release_freed_memory()
    short, long = SAMPLE_TOKENS

    def line(layers: int) -> tuple[float, float]:
        slope = (saved[layers, long] - saved[layers, short]) / (long - short)
        return slope, saved[layers, short] - slope * short

    (slope1, const1), (slope2, const2) = line(1), line(2)
    return Costs(per_layer=slope2 - slope1, layer_const=const2 - const1, head=slope1 - (slope2 - slope1),
                 head_const=const1 - (const2 - const1), bytes_4bit=bytes_4bit or _bytes_per_4bit_param(None))


def build(name: str, layers: int, stage: str, qlora: bool, lora_key: tuple) -> torch.nn.Module:
    """A random model of ``name``'s width with ``layers`` decoder layers, set up as ``stage`` trains it."""
    from peft import LoraConfig, get_peft_model

    from qwen3_backbone.model import rope_inv_freq

    config = Qwen3Config.from_name(name, num_hidden_layers=layers)
    dtype = torch.float32 if stage == "full" else torch.bfloat16
    with torch.device("meta"):  # made straight in its dtype: never a float32 copy of a bf16 model
        model = Qwen3ForCausalLM(config)
    model.to(dtype).to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            p.fill_(1.0) if pname.endswith("norm.weight") else p.normal_(0, 0.02, generator=generator)
    model.model.rotary_emb.inv_freq = rope_inv_freq(config)[0]
    model.requires_grad_(stage == "full")
    if qlora:
        from qwen3_backbone.quantize import quantize_4bit

        quantize_4bit(model, compute_dtype=torch.bfloat16)
    if stage == "lora":
        r, alpha, targets = lora_key
        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets)))
        model = model.get_base_model()
    return model


@functools.lru_cache(maxsize=1)
def _reference_4bit() -> float:
    return _bytes_per_4bit_param(build("Qwen3-0.6B", 1, "projector", True, ()))


def _bytes_per_4bit_param(model) -> float:
    from qwen3_backbone.quantize import footprint

    if model is None:
        return _reference_4bit()
    counts = footprint(model)
    plain = sum(p.numel() * p.element_size() for p in model.parameters() if getattr(p, "quant_state", None) is None)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return (counts["bytes"] - plain - buffers) / counts["params_4bit"]


def count_params(name: str) -> tuple[int, int]:
    """(parameters a 4-bit build quantizes, all parameters) of a Qwen3 preset."""
    from qwen3_backbone.quantize import quantized_layer_names

    with torch.device("meta"):
        model = Qwen3ForCausalLM(Qwen3Config.from_name(name))
    packed = sum(model.get_submodule(n).weight.numel() for n in quantized_layer_names(model))
    return packed, sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=None)
def vision_facts(model_name: str, feature_layer: int, use_cls_token: bool) -> tuple[int, int, int]:
    """(parameters, hidden width, tokens per frame) of the pruned open_clip image tower."""
    from vcap.vision import VisionConfig, VisionEncoder

    vision = VisionEncoder(VisionConfig(model_name=model_name, pretrained=None, feature_layer=feature_layer,
                                        use_cls_token=use_cls_token))
    return sum(p.numel() for p in vision.parameters()), vision.hidden_size, vision.num_patches


def figures(path: Path, overrides: list[str] | None = None, processes: int = 1) -> dict:
    """Every number of a config's memory comment (``key=value`` ``overrides`` applied). With
    ``train.fsdp``, per GPU of ``processes``: weights and training state divided among them, plus
    two decoder layers gathered whole (the one computing and the next, prefetched)."""
    from peft import LoraConfig, get_peft_model

    from projector import build_projector, projector_config_from_dict

    cfg = load_config(path, overrides or [])
    t, m = cfg.train, cfg.model
    name = m.language_model.split("/")[-1]
    lm = Qwen3Config.from_name(name)
    v_params, v_width, patches = vision_facts(m.vision.model_name, m.vision.feature_layer, m.vision.use_cls_token)
    options = {"vision_hidden_size": v_width, "text_hidden_size": lm.hidden_size, **dict(m.projector)}
    projector = build_projector(projector_config_from_dict(options, "projector"))
    video_tokens = projector.num_output_tokens(m.frames.num_frames, patches)
    groups = len(projector.temporal_groups(m.frames.num_frames)) if m.frames.timestamps == "text" else 0
    targets = m.max_new_tokens
    tokens = video_tokens + TIME_LABEL_TOKENS * groups + PROMPT_TOKENS + targets
    packed, total = count_params(name)
    lora_key = (t.lora.r, t.lora.alpha, tuple(t.lora.targets)) if t.stage == "lora" else ()
    costs = measure(name, t.stage, t.qlora, lora_key)

    trainable = sum(p.numel() for p in projector.parameters())
    state_bytes = 16 * trainable  # fp32 weights, gradients, AdamW's two moments
    if t.stage == "full":
        trainable += total
        state_bytes += 12 * total  # the fp32 weights themselves are the language model's line
        lm_bytes = 4 * total
    elif t.qlora:
        lm_bytes = packed * costs.bytes_4bit + 2 * (total - packed)
    else:
        lm_bytes = 2 * total
    if t.stage == "lora":
        with torch.device("meta"):
            shell = Qwen3ForCausalLM(lm)
            shell.requires_grad_(False)
            adapted = get_peft_model(shell, LoraConfig(r=t.lora.r, lora_alpha=t.lora.alpha,
                                                       target_modules=list(t.lora.targets)))
        adapters = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
        trainable += adapters
        state_bytes += 16 * adapters
    batch = t.batch_size
    layers = lm.num_hidden_layers
    if t.gradient_checkpointing:  # each layer's input kept; one layer's saved tensors rebuilt at a time
        activations = batch * tokens * (layers * lm.hidden_size * 2 + costs.per_layer) + costs.layer_const
    else:
        activations = layers * (batch * tokens * costs.per_layer + costs.layer_const)
    activations += batch * targets * costs.head + costs.head_const
    vision_bytes = 2 * v_params
    shards = processes if t.fsdp else 1
    if shards > 1:
        lm_bytes, vision_bytes, state_bytes = lm_bytes / shards, vision_bytes / shards, state_bytes / shards
        per_param = 4 if t.stage == "full" else 2
        embeddings = (1 if lm.tie_word_embeddings else 2) * lm.vocab_size * lm.hidden_size * per_param
        activations += 2 * (lm_bytes * shards - embeddings) / layers  # two decoder layers gathered whole
    return {
        "config": path.name, "model": name, "lm": lm_bytes / GB, "lm_kind": "fp32" if t.stage == "full" else "4-bit" if t.qlora else "bf16",
        "vision": vision_bytes / GB, "trainable": trainable, "state": state_bytes / GB, "shards": shards,
        "activations": activations / GB, "batch": batch, "tokens": tokens, "video_tokens": video_tokens,
        "checkpointing": t.gradient_checkpointing, "bytes_4bit": costs.bytes_4bit,
        "per_layer": costs.per_layer, "head": costs.head,
    }


def comment(f: dict) -> list[str]:
    total = f["lm"] + f["vision"] + f["state"] + f["activations"]
    ckpt = "with" if f["checkpointing"] else "without"
    four_bit = f" ({f['bytes_4bit']:.3f} bytes per 4-bit parameter)" if f["lm_kind"] == "4-bit" else ""
    sharded = f", sharded over {f['shards']} processes (train.fsdp)" if f["shards"] > 1 else ""
    return [
        f"{MARKER}{sharded}, computed by bench/config_memory.py from measured per-parameter and per-token costs",
        "# (CPU, random weights; not measured on a GPU):",
        f"#   language model {f['lm']:.{2 if four_bit else 1}f} GB ({f['lm_kind']}){four_bit} + vision tower "
        f"{f['vision']:.1f} GB (bf16)",
        f"#   + training state {f['state']:.2f} GB ({f['trainable'] / 1e6:.0f} M trainable parameters: fp32 weights, "
        "gradients, AdamW moments)",
        f"#   + activations {f['activations']:.1f} GB (batch {f['batch']} x {f['tokens']} tokens, {ckpt} gradient "
        "checkpointing)",
        f"#   = about {total:.0f} GB, plus the CUDA context and the allocator's slack.",
    ]


def rewrite(path: Path, lines: list[str]) -> bool:
    """Replace the config's memory block (from the marker to the next bare '#' line)."""
    text = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(text) if line.startswith(("# Memory", MARKER)))
    end = next(i for i in range(start, len(text)) if text[i].strip() == "#")
    new = text[:start] + lines + text[end:]
    if new == text:
        return False
    from qwen3_backbone.files import write_text

    write_text(path, "\n".join(new) + "\n")
    return True


def stated_total(path: Path) -> float | None:
    """The total a config's memory comment states (None without one)."""
    match = re.search(r"#   = about (\d+) GB", path.read_text(encoding="utf-8"))
    return float(match.group(1)) if match else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", type=Path, help="default: configs/*.yaml")
    parser.add_argument("--write", action="store_true", help="rewrite the memory comment in each config")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. model.language_model=Qwen/Qwen3-32B train.fsdp=true")
    parser.add_argument("--processes", type=int, default=1, help="GPUs a train.fsdp run shards over")
    args = parser.parse_args()
    if args.write and (args.set or args.processes != 1):
        parser.error("--write rewrites the configs as they are: not with --set or --processes")
    for path in args.configs or sorted((ROOT / "configs").glob("*.yaml")):
        f = figures(path, args.set, args.processes)
        lines = comment(f)
        print(f"{path.name} ({f['model']}): per layer {f['per_layer']:.0f} B/token, head {f['head']:.0f} B/target token",
              flush=True)
        print("\n".join(lines))
        if args.write and rewrite(path, lines):
            print(f"  rewrote {path}")


if __name__ == "__main__":
    main()
