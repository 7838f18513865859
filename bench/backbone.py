"""Backbone speed: this project's Qwen3 against transformers on the same weights, in one run.

Creates once (under bench/out/) a random-weight checkpoint with the exact Qwen3-0.6B architecture
and a reduced MoE model (the first layers of Qwen3-30B-A3B's shape), then, for each dtype, runs
this project's ``generate`` and transformers' ``generate`` on the same prompts, thread count and
greedy settings, each in its own subprocess (so peak memory is per system), and prints a markdown
table with ratios:

- prefill tokens/s: time to the first new token for a batch of P-token prompts;
- decode tokens/s: the following N tokens per row (total time minus prefill);
- peak RSS of the process;
- the batch-1 decode roofline: bytes of weights read per decoded token x tokens/s, against the
  memory read bandwidth measured in the same run (a reduction over a 1 GiB tensor);
- the prefill's share of the machine's peak matrix-multiply throughput: floating-point operations
  per prompt token (2 per weight of the decoder's linears, plus causal attention's scores and
  sums) x tokens/s, against the best of a large square matmul in the same dtype, measured in the
  same run.

    .venv/bin/python bench/backbone.py                       # 0.6B fp32 + bf16, batch 1 and 8, MoE
    .venv/bin/python bench/backbone.py --device cuda --compile   # on a GPU: adds compiled decode
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens per row")
    parser.add_argument("--new", type=int, default=128, help="decoded tokens per row")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time this project's compiled decode step")
    parser.add_argument("--no-moe", action="store_true", help="skip the reduced MoE model")
    parser.add_argument("--moe-layers", type=int, default=4)
    parser.add_argument("--moe-dtypes", nargs="+", default=["bfloat16"],
                        help="dtypes for the MoE model (fp32 needs ~13 GB per process)")
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "CHECKPOINT", "DTYPE"), help=argparse.SUPPRESS)
    parser.add_argument("--make-checkpoint", nargs=3, metavar=("NAME", "PRESET", "LAYERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.make_checkpoint:
        name, preset, layers = args.make_checkpoint
        make_checkpoint(OUT / name, preset, int(layers) or None)
        return

    dense = ensure_checkpoint("qwen3-0.6b-random", "Qwen3-0.6B", None)
    models = [("Qwen3-0.6B", dense, args.batches, args.dtypes)]
    if not args.no_moe:
        moe = ensure_checkpoint(f"qwen3-30b-a3b-{args.moe_layers}layers-random", "Qwen3-30B-A3B", args.moe_layers)
        models.append((f"30B-A3B shape, {args.moe_layers} layers", moe, args.batches, args.moe_dtypes))
    bandwidth = read_bandwidth(args.threads, args.device)
    gemm = {dtype: peak_gemm(args.threads, args.device, dtype) for dtype in sorted(set(args.dtypes + args.moe_dtypes))}
    print(describe_machine(args, bandwidth) + "; peak matmul " + ", ".join(
        f"{d} {v:.0f} GFLOP/s" for d, v in gemm.items()), flush=True)

    rows = []
    for label, path, batches, dtypes in models:
        for dtype in dtypes:
            impls = ["vcap", "transformers"] + (["vcap-compiled"] if args.compile else [])
            results = {impl: run_worker(impl, path, dtype, args, batches) for impl in impls}
            rows.append((label, dtype, results))
    # the peak again after the workers (a checkpoint written just before can still be flushing to
    # disk at the start, and this machine is shared): the better of the two is the machine's
    gemm = {d: max(v, peak_gemm(args.threads, args.device, d)) for d, v in gemm.items()}
    print("peak matmul, best of the start and the end: " + ", ".join(f"{d} {v:.0f} GFLOP/s" for d, v in gemm.items()))
    print_table(rows, bandwidth, gemm)


# -- checkpoints ----------------------------------------------------------------------------------

def ensure_checkpoint(name: str, preset: str, layers: int | None) -> Path:
    """The random-weight checkpoint, written once by a subprocess (so this process stays small)."""
    path = OUT / name
    if not (path / "config.json").exists():
        subprocess.run([sys.executable, __file__, "--make-checkpoint", name, preset, str(layers or 0)], check=True)
    return path


def make_checkpoint(path: Path, preset: str, layers: int | None) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch

    from qwen3_backbone import Qwen3Config, Qwen3ForCausalLM, save_pretrained

    overrides = {"num_hidden_layers": layers} if layers else {}
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config.from_name(preset, **overrides)).to(torch.bfloat16)
    print(f"writing {path} (random weights, {preset} architecture)", flush=True)
    save_pretrained(model, path)


# -- measurement (each implementation in its own process) ---------------------------------------

def run_worker(impl: str, path: Path, dtype: str, args: argparse.Namespace, batches: list[int]) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, str(path), dtype, "--prompt", str(args.prompt),
           "--new", str(args.new), "--threads", str(args.threads), "--device", args.device,
           "--batches", *map(str, batches)]
    print(f"  {impl:14s} {path.name} {dtype} ...", end="", flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        print(" failed")
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(1)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(" done", flush=True)
    return result


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    import vcap  # noqa: F401  (torchvision fix before transformers)

    impl, path, dtype_name = args.worker
    dtype = getattr(torch, dtype_name)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    if impl.startswith("vcap"):
        from qwen3_backbone import load_pretrained, pack_for_cpu_inference
        from qwen3_backbone.generate import generate

        model = load_pretrained(path, dtype=dtype, device=device)
        if device.type == "cpu":
            pack_for_cpu_inference(model)  # bf16: oneDNN's blocked weight layout (no-op for fp32)
        compile_ = impl == "vcap-compiled"

        def run(ids, n):
            return generate(model, ids, max_new_tokens=n, stop_token_ids=(), compile=compile_)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()

        def run(ids, n):
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                     do_sample=False, eos_token_id=None, pad_token_id=0)
            return out[:, ids.shape[1]:]

    def timed(ids, n):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = run(ids, n)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, out

    g = torch.Generator().manual_seed(0)
    warm = torch.randint(0, 150000, (1, 16), generator=g).to(device)
    timed(warm, 4)  # page in the weights, build kernels (and compile)
    results = {"batches": {}}
    for B in args.batches:
        ids = torch.randint(0, 150000, (B, args.prompt), generator=g).to(device)
        prefill = min(timed(ids, 1)[0] for _ in range(2))
        total, tokens = timed(ids, args.new + 1)
        results["batches"][B] = {
            "prefill_tps": B * args.prompt / prefill,
            "decode_tps": B * args.new / max(total - prefill, 1e-9),
            "first_tokens": tokens[0, :16].tolist(),
        }
    results["peak_rss_mb"] = peak_rss_mb()
    if device.type == "cuda":
        results["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    n_params = sum(p.numel() for p in model.parameters())
    embed = model.model.embed_tokens.weight
    # Weights read per decoded token: every parameter except the embedding table, of which only
    # one row per token is read (for tied models the table is still read whole, as the head).
    tied = model.lm_head.weight is embed
    read = n_params - (0 if tied else embed.numel())
    if getattr(model.config, "num_experts", 0):
        read = active_parameters(model) - (0 if tied else embed.numel())
    results["bytes_per_token"] = read * embed.element_size()
    results["prefill_flops_per_token"] = prefill_flops_per_token(model, args.prompt)
    print(json.dumps(results))


def prefill_flops_per_token(model, prompt: int) -> float:
    """Multiply-adds x 2 per prompt token: every decoder linear weight once (an MoE's active experts
    only), and causal attention's scores and weighted sums over prompt/2 keys on average. The head
    runs at the last position only, in both implementations' generate."""
    cfg = model.config
    linear = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n and p.dim() == 2
                 and ".experts." not in n and not n.endswith("mlp.gate.weight"))
    if getattr(cfg, "num_experts", 0):
        one_expert = sum(p.numel() for n, p in model.named_parameters() if ".experts.0." in n)
        linear += cfg.num_experts_per_tok * one_expert  # k experts per layer run per token
    attention = cfg.num_hidden_layers * 2 * cfg.num_attention_heads * cfg.head_dim * (prompt / 2)
    return 2 * (linear + attention)


def active_parameters(model) -> int:
    """Parameters touched per token in an MoE model: of each layer's E experts, only top-k run."""
    shared = sum(p.numel() for name, p in model.named_parameters() if ".experts." not in name)
    one_expert_per_layer = sum(p.numel() for name, p in model.named_parameters() if ".experts.0." in name)
    return shared + model.config.num_experts_per_tok * one_expert_per_layer


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def read_bandwidth(threads: int, device: str) -> float:
    """Memory read bandwidth in GB/s: best of 5 reductions over a 1 GiB tensor."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(2**28, dtype=torch.float32, device=device)
    x.sum()
    best = float("inf")
    for _ in range(5):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        x.sum()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best / 1e9


def peak_gemm(threads: int, device: str, dtype_name: str, n: int = 2048) -> float:
    """The machine's matrix-multiply throughput in GFLOP/s: best of 5 (n x n) @ (n x n) in dtype."""
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(5):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def describe_machine(args: argparse.Namespace, bandwidth: float) -> str:
    import torch

    cpu = "unknown CPU"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import transformers

    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "none"
    return (
        f"machine: {cpu}, {os.cpu_count()} cores, {args.threads} threads, GPU: {gpu}; "
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}; "
        f"read bandwidth {bandwidth:.1f} GB/s; prompt {args.prompt} tokens, {args.new} new tokens, greedy"
    )


def print_table(rows, bandwidth: float, gemm: dict[str, float]) -> None:
    print()
    print("| model | dtype | batch | prefill tok/s vcap | transformers | ratio | decode tok/s vcap | transformers"
          " | ratio | same tokens | peak RSS MB vcap / transformers |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, dtype, results in rows:
        ours, ref = results["vcap"], results["transformers"]
        for B, o in ours["batches"].items():
            r = ref["batches"][B]
            same = "yes" if o["first_tokens"] == r["first_tokens"] else "no"
            print(f"| {label} | {dtype} | {B} | {o['prefill_tps']:.0f} | {r['prefill_tps']:.0f} | "
                  f"{o['prefill_tps'] / r['prefill_tps']:.2f}x | {o['decode_tps']:.2f} | {r['decode_tps']:.2f} | "
                  f"**{o['decode_tps'] / r['decode_tps']:.2f}x** | {same} | "
                  f"{ours['peak_rss_mb']:.0f} / {ref['peak_rss_mb']:.0f} |")
    print()
    print("| model | dtype | weights read per token | batch-1 decode, vcap | roofline share | transformers |")
    print("|---|---|---|---|---|---|")
    for label, dtype, results in rows:
        ours, ref = results["vcap"], results["transformers"]
        per_token = ours["bytes_per_token"]
        share = lambda r: per_token * r["batches"]["1"]["decode_tps"] / 1e9 / bandwidth  # noqa: E731
        print(f"| {label} | {dtype} | {per_token / 1e9:.2f} GB | "
              f"{per_token * ours['batches']['1']['decode_tps'] / 1e9:.1f} GB/s | **{share(ours):.0%}** | "
              f"{share(ref):.0%} |")
        if "vcap-compiled" in results:
            c = results["vcap-compiled"]["batches"]
            print(f"| {label} | {dtype} compiled | | " + ", ".join(
                f"batch {b}: {v['decode_tps']:.1f} tok/s" for b, v in c.items()) + " | | |")
    print()
    print("| model | dtype | batch | prefill GFLOP/s vcap | share of peak matmul | transformers | share |")
    print("|---|---|---|---|---|---|---|")
    for label, dtype, results in rows:
        ours, ref = results["vcap"], results["transformers"]
        flops = ours["prefill_flops_per_token"]
        for B, o in ours["batches"].items():
            a, b = o["prefill_tps"] * flops / 1e9, ref["batches"][B]["prefill_tps"] * flops / 1e9
            print(f"| {label} | {dtype} | {B} | {a:.0f} | **{a / gemm[dtype]:.0%}** | {b:.0f} | {b / gemm[dtype]:.0%} |")


if __name__ == "__main__":
    main()
