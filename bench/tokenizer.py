"""Tokenizer speed: this project's Qwen3Tokenizer, transformers' and tiktoken, same ranks, one run.

Encodes the mixed corpus of tests/corpus.py (English prose and code, Korean, Chinese, Japanese,
emoji, whitespace, NFD input; ~110k tokens) with each tokenizer built from the same packaged
ranks, one document at a time and as one batch, on the same thread count, and prints MB/s,
tokens/s and the ratio to the fastest. Also times first use from a cold cache (the conversion
of the ranks into a byte-level BPE) and from a warm cache.

    .venv/bin/python bench/tokenizer.py [--threads 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import timeit
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLD_START = """
import sys, time
start = time.perf_counter()
from qwen3_backbone.tokenizer import Qwen3Tokenizer
tok = Qwen3Tokenizer.default(cache_dir=sys.argv[1])
tok.encode("warm up")
print(time.perf_counter() - start)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # tokenizers' batch parallelism
    os.environ["TOKENIZERS_PARALLELISM"] = "true"

    import vcap  # noqa: F401  (torchvision fix before transformers)
    from tests.corpus import mixed_corpus

    import tiktoken
    from transformers import Qwen2Tokenizer

    from qwen3_backbone.tokenizer import PRETOKENIZE_PATTERN, Qwen3Tokenizer, read_ranks

    # -- first use: cold cache (conversion) and warm cache, each in a fresh process -------------
    with tempfile.TemporaryDirectory() as cache:
        cold = float(subprocess.check_output([sys.executable, "-c", COLD_START, cache], cwd=ROOT))
        warm = min(float(subprocess.check_output([sys.executable, "-c", COLD_START, cache], cwd=ROOT))
                   for _ in range(args.repeat))

    ours = Qwen3Tokenizer.load()
    spec = json.loads(ours.backend.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    hf = Qwen2Tokenizer(vocab=spec["vocab"], merges=merges)
    tk = tiktoken.Encoding(name="qwen", pat_str=PRETOKENIZE_PATTERN, mergeable_ranks=read_ranks(), special_tokens={})

    corpus = mixed_corpus()
    nfc = [unicodedata.normalize("NFC", d) for d in corpus]  # tiktoken has no normaliser
    megabytes = sum(len(d.encode("utf-8")) for d in corpus) / 1e6
    tokens = sum(len(ids) for ids in ours.encode_batch(corpus))
    assert ours.encode_batch(corpus) == [hf.encode(d, add_special_tokens=False) for d in corpus]

    candidates = {
        "vcap Qwen3Tokenizer": (lambda: [ours.encode(d) for d in corpus], lambda: ours.encode_batch(corpus)),
        "transformers Qwen2Tokenizer": (
            lambda: [hf.encode(d, add_special_tokens=False) for d in corpus],
            lambda: hf(corpus, add_special_tokens=False)["input_ids"],
        ),
        "tiktoken (same ranks)": (
            lambda: [tk.encode_ordinary(d) for d in nfc],
            lambda: tk.encode_ordinary_batch(nfc, num_threads=args.threads),
        ),
    }
    results = {}
    for name, (one_by_one, batch) in candidates.items():
        results[name] = (best_time(one_by_one, args.repeat), best_time(batch, args.repeat))
    # vcap's per-piece cache is warm after the first pass; time a first pass with it empty, too
    def first_pass(fn):
        ours._fast.cache.clear()
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    results["vcap Qwen3Tokenizer, first pass (empty piece cache)"] = (
        min(first_pass(candidates["vcap Qwen3Tokenizer"][0]) for _ in range(args.repeat)),
        min(first_pass(candidates["vcap Qwen3Tokenizer"][1]) for _ in range(args.repeat)),
    )

    print(f"corpus: {len(corpus)} documents, {megabytes:.2f} MB, {tokens} tokens; threads: {args.threads}; "
          f"first use from a cold cache (conversion): {cold:.2f} s, warm cache: {warm:.2f} s\n")
    print("| tokenizer | one by one MB/s | tokens/s | time / fastest | batch MB/s | tokens/s | time / fastest |")
    print("|---|---|---|---|---|---|---|")
    fastest_single = min(t for t, _ in results.values())
    fastest_batch = min(t for _, t in results.values())
    for name, (single, batch) in results.items():
        print(f"| {name} | {megabytes / single:.2f} | {tokens / single:,.0f} | {single / fastest_single:.2f}"
              f" | {megabytes / batch:.2f} | {tokens / batch:,.0f} | {batch / fastest_batch:.2f} |")


def best_time(fn, repeat: int) -> float:
    fn()  # warm-up
    return min(timeit.repeat(fn, number=1, repeat=repeat))


if __name__ == "__main__":
    main()
