"""On a CUDA GPU: bf16 parity with transformers, QLoRA steps with their peak memory, exact resume
with GPU random state, compiled decoding. Every test here is marked `gpu` (skipped without CUDA)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from ..qwen3_backbone.conftest import padded_batch
from ..vcap.trainkit import metrics, run_cfg

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", ["dense_tied_gqa", "moe_norm_topk"])
def test_bf16_on_cuda_matches_transformers(hf_checkpoints, name):
    from transformers import AutoModelForCausalLM

    from qwen3_backbone import load_pretrained
    from qwen3_backbone.generate import generate

    hf = AutoModelForCausalLM.from_pretrained(hf_checkpoints[name], dtype=torch.bfloat16).cuda().eval()
    ours = load_pretrained(hf_checkpoints[name], dtype=torch.bfloat16, device="cuda")
    ids, mask = (t.cuda() for t in padded_batch(seed=2))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
        out = ours(ids, attention_mask=mask).float()
    real = mask.bool()
    span = (ref[real].max() - ref[real].min()).item()
    assert (out - ref).abs()[real].max().item() <= 0.01 * span
    assert (out[real].argmax(-1) == ref[real].argmax(-1)).float().mean() >= 0.99
    ours_tokens = generate(ours, ids[:1, -5:], mask[:1, -5:], max_new_tokens=16, stop_token_ids=())
    hf_tokens = hf.generate(ids[:1, -5:], attention_mask=mask[:1, -5:], max_new_tokens=16, min_new_tokens=16,
                            do_sample=False)[:, 5:]
    assert (ours_tokens == hf_tokens).float().mean() >= 0.9  # bf16 kernels may part ways late in a sequence


def test_qlora_builds_and_trains_three_steps(data, tmp_path):
    import bitsandbytes as bnb

    from qwen3_backbone import Qwen3Config, Qwen3ForCausalLM, save_pretrained
    from vcap.stages import build_for_training
    from vcap.train import train

    torch.manual_seed(0)
    save_pretrained(Qwen3ForCausalLM(Qwen3Config.from_name("mini")).to(torch.bfloat16), tmp_path / "base")
    cfg = run_cfg(data, tmp_path / "run", stage="lora", qlora=True, max_steps=3, precision="bf16",
                  lora={"r": 4, "alpha": 8})
    cfg.model.language_model, cfg.model.dtype = str(tmp_path / "base"), "auto"
    torch.cuda.reset_peak_memory_stats()
    captioner = build_for_training(cfg)
    assert isinstance(captioner.backbone.model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)
    run = train(cfg, progress=False)
    assert [m["step"] for m in metrics(run) if "loss" in m] == [1, 2, 3]
    print(f"QLoRA (mini preset) peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


def test_a_run_extracts_vision_features_on_its_gpu(data, tmp_path):
    from vcap.data import read_manifest
    from vcap.features import FeatureCache, encoder_fingerprint, extract_features

    from ..tiny import tiny_captioner

    captioner = tiny_captioner()
    videos = sorted({s.video for s in read_manifest(data["train"])})[:3]
    on_cpu = FeatureCache(tmp_path / "cpu", encoder_fingerprint(captioner), torch.float32)
    on_gpu = FeatureCache(tmp_path / "gpu", encoder_fingerprint(captioner), torch.float32)
    extract_features(captioner, videos, on_cpu, progress=False)
    devices = []
    original = captioner.encode
    captioner.encode = lambda clips: devices.append(captioner.vision.device.type) or original(clips)
    extract_features(captioner, videos, on_gpu, progress=False, device="cuda")
    assert devices == ["cuda"] and captioner.vision.device.type == "cpu"  # ran there, came back
    for video in videos:
        torch.testing.assert_close(on_gpu.get(video), on_cpu.get(video), rtol=1e-3, atol=1e-3)


def test_train_and_resume_exactly_on_the_gpu(data, tmp_path):
    """Dropout draws from the GPU's generator: its state is in the checkpoint."""
    from vcap.train import train

    def cfg(name, steps):
        c = run_cfg(data, tmp_path / name, stage="lora", max_steps=steps, save_every=2, precision="bf16",
                    lora={"r": 4, "alpha": 8, "dropout": 0.3})
        c.model.dtype = "bfloat16"
        return c

    whole = train(cfg("whole", 4), progress=False)
    train(cfg("split", 2), progress=False)
    split = train(cfg("split", 4), resume=True, progress=False)
    assert [m.get("loss") for m in metrics(split)] == [m.get("loss") for m in metrics(whole)]
    state = json.loads((split / "step-00000004" / "trainer_state.json").read_text())
    assert state["step"] == 4


def test_compiled_decode_runs_and_reports_its_speed(hf_checkpoints):
    from qwen3_backbone import load_pretrained
    from qwen3_backbone.generate import generate

    model = load_pretrained(hf_checkpoints["dense_tied_gqa"], dtype=torch.bfloat16, device="cuda")
    ids = torch.randint(1, 200, (1, 32), device="cuda")
    plain = generate(model, ids, max_new_tokens=64, stop_token_ids=())
    generate(model, ids, max_new_tokens=64, stop_token_ids=(), compile=True)  # compiles
    torch.cuda.synchronize()
    start = time.perf_counter()
    compiled = generate(model, ids, max_new_tokens=64, stop_token_ids=(), compile=True)
    torch.cuda.synchronize()
    print(f"compiled decode: {64 / (time.perf_counter() - start):.0f} tokens/s")
    assert (compiled == plain).float().mean() >= 0.9


def test_sharded_lora_trains_on_the_gpus(data, tmp_path):
    """train.fsdp with NCCL on every visible GPU (one is enough: torchrun with one process), bf16
    LoRA with gradient checkpointing; the checkpoint exports."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from vcap.export import export

    from ..vcap.trainkit import tiny_run, write_yaml

    root = Path(__file__).resolve().parents[2]
    gpus = torch.cuda.device_count()
    config = write_yaml(tmp_path / "run.yaml", tiny_run(
        data, tmp_path / "run", cache=tmp_path / "cache", stage="lora", max_steps=3, fsdp=True, precision="bf16",
        gradient_checkpointing=True, lora={"r": 4, "alpha": 8}))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(gpus), "-m", "vcap",
                             "train", str(config), "--quiet"], env={**os.environ, "PYTHONPATH": str(root)},
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [m["step"] for m in metrics(tmp_path / "run") if "loss" in m] == [1, 2, 3]
    export(tmp_path / "run", tmp_path / "captioner")
    assert (tmp_path / "captioner" / "language_model").is_dir()
