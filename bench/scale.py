"""The model line-up at its true memory cost: each size loaded, quantized, trained and exported,
side by side with transformers (+ bitsandbytes, + peft) in one run, each measurement in its own
process (peak RSS is per process; on CUDA, peak allocated memory).

For each model a random-weight checkpoint with the real architecture is written under bench/out/
once, shard by shard from a meta-device model, so creating it never needs the model in memory.
Then, per model:

- bf16 load: ``qwen3_backbone.load_pretrained(dtype=bfloat16)`` - peak and resident; after each
  load the checkpoint's mapped pages are paged out (madvise) and one 16-token forward reads back
  what the model uses, so a memory-mapped weight counts like any other and a page only read while
  loading does not;
- 4-bit build: ``load_pretrained(load_in_4bit=True)`` (each weight quantized as it is read) against
  transformers ``from_pretrained(quantization_config=BitsAndBytesConfig(nf4, double quant))`` on
  the same checkpoint - peak and resident (the footprint);
- a LoRA training step (r 16 on the seven projections, batch 4, gradient checkpointing, bf16 base)
  against transformers + peft with gradient checkpointing on the same shapes - peak;
- export: the base loaded in bf16, a LoRA adapter merged layer by layer, the model written in
  safetensors shards (what ``vcap export`` does for the language model) - peak.

Targets (issue "The seed's model line-up on real hardware"): 4-bit footprint <= transformers +
bitsandbytes; 4-bit build peak <= 1.3 x footprint + 1 GB; bf16 load, LoRA step and export peaks
<= 1.2 x the bf16 weights + what the step needs; LoRA step peak <= transformers + peft.

    .venv/bin/python bench/scale.py                          # Qwen3-0.6B, 1.7B, 4B on this CPU
    .venv/bin/python bench/scale.py --models Qwen3-8B        # more disk and time
    .venv/bin/python bench/scale.py --device cuda            # on a GPU: peak CUDA memory
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
ROOT = Path(__file__).resolve().parents[1]
GB = 1024**3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per sample of the training step (batch 4)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--skip", nargs="*", default=[], help="measurements to leave out (e.g. lora-transformers)")
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "CHECKPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]), args)))
        return
    rows = []
    for name in args.models:
        folder = ensure_checkpoint(name)
        row = {"model": name, "weights_gb": checkpoint_bytes(folder) / GB, "params_b": params(name) / 1e9}
        for kind in ("bf16", "4bit-vcap", "4bit-transformers", "lora-vcap", "lora-transformers", "export"):
            if kind in args.skip:
                continue
            started = time.perf_counter()
            row[kind] = run(kind, folder, args)
            print(f"  {name} {kind}: {row[kind]} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        rows.append(row)
    print(report(rows, args))


# -- the checkpoints -----------------------------------------------------------------------------------------

def params(name: str) -> int:
    from qwen3_backbone import Qwen3Config

    return Qwen3Config.from_name(name).num_parameters()


def checkpoint_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def ensure_checkpoint(name: str) -> Path:
    """A random bf16 checkpoint of the real architecture, written shard by shard (never whole in memory)."""
    folder = OUT / f"{name.lower()}-random"
    if (folder / "config.json").exists():
        return folder
    import torch
    from safetensors.torch import save_file

    from qwen3_backbone import Qwen3Config, Qwen3ForCausalLM
    from qwen3_backbone.files import atomic_folder, write_text

    config = Qwen3Config.from_name(name)
    with torch.device("meta"):
        shapes = {n: tuple(p.shape) for n, p in Qwen3ForCausalLM(config).named_parameters()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    print(f"writing a random {name} checkpoint to {folder} ...", file=sys.stderr, flush=True)
    generator = torch.Generator().manual_seed(0)
    with atomic_folder(folder, replace=True) as tmp:
        write_text(tmp / "config.json", json.dumps({**config.to_hf(), "torch_dtype": "bfloat16"}, indent=2))
        shard, size, weight_map, index = {}, 0, {}, 0
        names = list(shapes)
        for i, param in enumerate(names):
            shape = shapes[param]
            tensor = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16) if len(shape) > 1 \
                else torch.ones(shape, dtype=torch.bfloat16)  # norms at 1
            shard[param] = tensor
            size += tensor.numel() * 2
            if size >= 2 * GB or i == len(names) - 1:
                index += 1
                file = f"model-{index:05d}.safetensors"
                save_file(shard, str(tmp / file), metadata={"format": "pt"})
                weight_map.update({k: file for k in shard})
                shard, size = {}, 0
        write_text(tmp / "model.safetensors.index.json", json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


# -- one measurement per process -------------------------------------------------------------------------------

def run(kind: str, folder: Path, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run([sys.executable, __file__, "--measure", kind, str(folder), "--device", args.device,
                             "--tokens", str(args.tokens), "--threads", str(args.threads)],
                            env=env, capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def rss_gb(kind: str = "VmRSS") -> float:
    """Resident memory: all of it (VmRSS), or its anonymous part (RssAnon: not pages of files)."""
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(f"{kind}:")).split()[1]) / 1024**2


def page_out(folder: Path) -> None:
    """Ask the kernel to reclaim this process's pages of the files in ``folder`` (madvise
    MADV_PAGEOUT, Linux 5.4+); they come back when touched."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    prefix = str(folder.resolve())
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip().startswith(prefix):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                libc.madvise(start, end - start, 21)  # MADV_PAGEOUT


def peak_gb(device: str) -> float:
    import resource

    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / GB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def measure(kind: str, folder: Path, args) -> dict:
    import torch

    import vcap  # noqa: F401  (torchvision on a CPU torch, for transformers and peft)

    torch.set_num_threads(args.threads)
    device = args.device
    import bitsandbytes  # noqa: F401  (the libraries' own memory is not the model's: import them first)
    import peft  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM  # noqa: F401

    base, base_anon = rss_gb(), rss_gb("RssAnon")
    model = None
    if kind == "bf16":
        from qwen3_backbone import load_pretrained

        model = load_pretrained(folder, dtype=torch.bfloat16, device=device)
    elif kind == "4bit-vcap":
        from qwen3_backbone import load_pretrained

        model = load_pretrained(folder, dtype=torch.bfloat16, device=device, load_in_4bit=True)
    elif kind == "4bit-transformers":
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, dtype=torch.bfloat16,
                                                     device_map=device)
    elif kind in ("lora-vcap", "lora-transformers"):
        return lora_step(kind, folder, args, base)
    elif kind == "export":
        return export(folder, args, base)
    stored = weight_bytes(model)  # as loaded (bitsandbytes adds working state at the first forward on CPU)
    peak = peak_gb(device)
    # The pages of the checkpoint files still mapped are paged out, then one short forward reads
    # back what the model uses: a memory-mapped weight counts like any other, a page that was only
    # read while loading does not.
    page_out(folder)
    ids = torch.randint(0, 150000, (1, 16), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        model(ids) if kind != "4bit-transformers" else model(input_ids=ids)
    out = {"peak_gb": max(peak, peak_gb(device)) - (0 if device.startswith("cuda") else base),
           "resident_gb": rss_gb() - base}
    from qwen3_backbone.weights import release_freed_memory

    release_freed_memory()  # what the C heap keeps of freed buffers is not the model's
    out.update({"live_gb": rss_gb() - base, "anon_gb": rss_gb("RssAnon") - base_anon, **stored})
    if device.startswith("cuda"):
        out["resident_gb"] = out["live_gb"] = torch.cuda.memory_allocated() / GB
    del model
    return out


def weight_bytes(model) -> dict:
    """What the weights themselves occupy (qwen3_backbone.quantize.footprint), apart from the
    allocator's and the runtime's share of resident memory."""
    from qwen3_backbone.quantize import footprint

    counts = footprint(model)
    return {"weights_gb": counts["bytes"] / GB, "params_4bit": counts["params_4bit"],
            "params_plain": counts["params_plain"]}


def lora_model(kind: str, folder: Path):
    import torch
    from peft import LoraConfig, get_peft_model

    if kind == "lora-vcap":
        from qwen3_backbone import load_pretrained

        model = load_pretrained(folder, dtype=torch.bfloat16)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
        model.config.use_cache = False
    model.requires_grad_(False)
    model.gradient_checkpointing_enable()
    config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"])
    return get_peft_model(model, config)


def lora_step(kind: str, folder: Path, args, base: float) -> dict:
    """One forward and backward of a batch of 4, the loss on the last quarter of each sample."""
    import torch

    model = lora_model(kind, folder).to(args.device)
    model.train()
    loaded = rss_gb() - base
    ids = torch.randint(0, 150000, (4, args.tokens), generator=torch.Generator().manual_seed(0)).to(args.device)
    labels = ids.clone()
    labels[:, : 3 * args.tokens // 4] = -100
    started = time.perf_counter()
    with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16):
        if kind == "lora-vcap":
            hidden = model.get_base_model().model(ids)
            target = labels[:, 1:] != -100
            logits = model.get_base_model().lm_head(hidden[:, :-1][target])
            loss = torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][target])
        else:
            loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    seconds = time.perf_counter() - started
    peak = peak_gb(args.device) - (0 if args.device.startswith("cuda") else base)
    return {"peak_gb": peak, "loaded_gb": loaded, "step_s": seconds}


def export(folder: Path, args, base: float) -> dict:
    """The language-model part of vcap export: bf16 base + adapter, merged, written in shards."""
    import shutil
    import tempfile

    import torch

    from qwen3_backbone import save_pretrained

    model = lora_model("lora-vcap", folder)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)  # a trained adapter (zero B would merge nothing)
    merged = model.merge_and_unload()
    out = Path(tempfile.mkdtemp(prefix="vcap-scale-export-"))
    try:
        save_pretrained(merged, out / "lm", max_shard_bytes=2 * GB)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"peak_gb": peak_gb(args.device) - (0 if args.device.startswith("cuda") else base)}


def split_params(name: str) -> tuple[int, int]:
    """(parameters a 4-bit build quantizes, parameters it keeps in bf16) for a named Qwen3 config."""
    import torch

    from qwen3_backbone import Qwen3Config, Qwen3ForCausalLM
    from qwen3_backbone.quantize import quantized_layer_names

    with torch.device("meta"):
        model = Qwen3ForCausalLM(Qwen3Config.from_name(name))
    packed = sum(model.get_submodule(n).weight.numel() for n in quantized_layer_names(model))
    return packed, sum(p.numel() for p in model.parameters()) - packed


# -- the table ------------------------------------------------------------------------------------------------

LINE_UP = {"Qwen3-4B": "T4 (~3 GB)", "Qwen3-8B": "L4 (~5 GB)", "Qwen3-14B": "A100 (~8 GB)", "Qwen3-32B": "H100 (~18 GB)",
           "Qwen3-30B-A3B": "H100 (~18 GB)"}


def report(rows: list[dict], args) -> str:
    def cell(row, kind, key="peak_gb"):
        value = row.get(kind, {})
        if "error" in value:
            return "error"
        if key not in value:
            return "-"
        if key == "live_gb" and "resident_gb" in value:
            return f"{value['live_gb']:.2f} ({value['resident_gb']:.2f})"
        return f"{value[key]:.2f}"

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, {args.device}"
    lines = [f"machine: {machine}; training step: batch 4 x {args.tokens} tokens; GB = GiB; peaks and resident "
             "memory above the process's size before loading (libraries imported); 4-bit resident = after the "
             "checkpoint's mapped pages are paged out, a 16-token forward reads back what the model uses and the "
             "C heap returns freed buffers (in brackets: before that return)", "",
             "| model | params | bf16 weights GB | bf16 load peak | 4-bit resident vcap | 4-bit resident transformers+bnb "
             "| 4-bit build peak vcap | 4-bit build peak transformers | LoRA step peak vcap | LoRA step peak transformers+peft "
             "| export peak | line-up (4-bit) |",
             "|---" * 12 + "|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['params_b']:.2f} B | {row['weights_gb']:.2f} | {cell(row, 'bf16')} | "
                     f"{cell(row, '4bit-vcap', 'live_gb')} | {cell(row, '4bit-transformers', 'live_gb')} | "
                     f"{cell(row, '4bit-vcap')} | {cell(row, '4bit-transformers')} | {cell(row, 'lora-vcap')} | "
                     f"{cell(row, 'lora-transformers')} | {cell(row, 'export')} | {LINE_UP.get(row['model'], '')} |")
    lines += ["", "Targets, per model measured above:", ""]
    for row in rows:
        w = row["weights_gb"]
        checks = []
        v4, t4 = row.get("4bit-vcap", {}), row.get("4bit-transformers", {})
        if "live_gb" in v4 and "live_gb" in t4:
            checks.append(f"4-bit footprint {v4['live_gb']:.2f} vs transformers {t4['live_gb']:.2f} GB "
                          f"({'met' if v4['live_gb'] <= t4['live_gb'] * 1.02 else 'MISSED'}; weights alone "
                          f"{v4['weights_gb']:.3f} vs {t4['weights_gb']:.3f} GB)")
        if "peak_gb" in v4:
            limit = 1.3 * v4["live_gb"] + 1
            checks.append(f"4-bit build peak {v4['peak_gb']:.2f} <= {limit:.2f} GB ({'met' if v4['peak_gb'] <= limit else 'MISSED'})")
        for kind, label in (("bf16", "bf16 load"), ("export", "export")):
            if "peak_gb" in row.get(kind, {}):
                peak = row[kind]["peak_gb"]
                checks.append(f"{label} peak {peak:.2f} = {peak / w:.2f} x the weights "
                              f"({'met' if peak <= 1.2 * w + 0.5 else 'MISSED'})")
        lv, lt = row.get("lora-vcap", {}), row.get("lora-transformers", {})
        if "peak_gb" in lv and "peak_gb" in lt:
            checks.append(f"LoRA step peak {lv['peak_gb']:.2f} vs transformers+peft {lt['peak_gb']:.2f} GB "
                          f"({'met' if lv['peak_gb'] <= lt['peak_gb'] * 1.02 else 'MISSED'}); that first step took {lv['step_s']:.1f} s "
                          f"vs {lt['step_s']:.1f} s (one cold step: bench/train.py measures speed)")
        lines.append(f"- {row['model']}: " + "; ".join(checks))
    measured = [row for row in rows if "weights_gb" in row.get("4bit-vcap", {})]
    if measured:
        largest = measured[-1]["4bit-vcap"]
        per_4bit = (largest["weights_gb"] * GB - 2 * largest["params_plain"]) / largest["params_4bit"]
        lines += ["", f"Derived, not measured: each 4-bit parameter costs {per_4bit:.4f} bytes with its statistics "
                      f"(measured on {measured[-1]['model']}), each embedding, head and norm parameter 2 bytes (bf16). "
                      "Weights only: add the runtime (activations, the allocator's slack; the resident column "
                      "above minus the weights) and, for training, the step.", ""]
        for name in ("Qwen3-4B", "Qwen3-8B", "Qwen3-14B", "Qwen3-32B", "Qwen3-30B-A3B"):
            if name in [r["model"] for r in measured]:
                continue
            packed, plain = split_params(name)
            lines.append(f"- {name}: {(packed + plain) / 1e9:.1f} B parameters -> {(packed * per_4bit + 2 * plain) / GB:.1f} GB "
                         f"of weights in 4-bit, {(packed + plain) * 2 / GB:.1f} GB in bf16; line-up: {LINE_UP.get(name, '')}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
