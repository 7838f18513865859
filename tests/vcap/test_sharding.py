"""Sharded training (train.fsdp, PyTorch FSDP2) on two CPU processes with gloo, launched by torchrun:
the losses follow a single-process run of the same global batch, a checkpoint resumes exactly, and
vcap export puts the slices back together."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .trainkit import metrics, tiny_run, write_yaml

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
# Each process's loss is a mean over its own target tokens, so two processes' averaged gradients
# differ from one process's by the weighting of samples with unequal caption lengths: measured
# 4e-4 relative at most over 12 steps.
LOSS_RTOL = 2e-3


def torchrun(config: Path, *args: str, cwd: Path, processes: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "-m",
                           "vcap", "train", str(config), "--quiet", *args], env=ENV, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def losses(run: Path) -> list[float]:
    return [m["loss"] for m in metrics(run) if "loss" in m]


def validation_loss(captioner, cfg) -> float:
    """Mean loss per validation sample, computed the way training computes it (vcap.train)."""
    from vcap.data import build_datasets, collate

    _, val = build_datasets(cfg, captioner, progress=False)
    total = 0.0
    with torch.no_grad():
        for i in range(len(val)):
            batch = collate([val[i]], captioner.tokenizer.pad_id)
            total += float(captioner(batch["video_features"], batch["input_ids"], batch["attention_mask"],
                                     batch["labels"]))
    return total / len(val)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
    """An FSDP run on two processes (a sample each per step) and a single-process run (two per step)."""
    folder = tmp_path_factory.mktemp("fsdp")

    def config(name: str, batch: int, fsdp: bool) -> Path:
        return write_yaml(folder / f"{name}.yaml", tiny_run(
            data, folder / name, cache=folder / "cache", stage="lora", epochs=2, batch_size=batch, lr=5e-3,
            projector_lr=2e-3, fsdp=fsdp, lora={"r": 4, "alpha": 8, "dropout": 0.1}))

    sharded = torchrun(config("fsdp", 1, True), cwd=folder)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    from vcap.cli import main

    assert main(["train", str(config("single", 2, False)), "--quiet"]) == 0
    return folder


def test_sharded_losses_follow_one_process(runs):
    sharded, single = losses(runs / "fsdp"), losses(runs / "single")
    assert len(sharded) == len(single) >= 6
    assert sharded == pytest.approx(single, rel=LOSS_RTOL)
    assert sharded != single  # two processes really computed it (their sums differ in the last digits)


def test_each_process_holds_half_of_every_parameter(runs):
    folder = runs / "fsdp" / "step-00000006" / "fsdp"
    layout = json.loads((folder / "layout.json").read_text())
    assert layout["world"] == 2
    halves = [safe_open(str(folder / f"rank-{r:05d}-of-00002.safetensors"), "pt") for r in (0, 1)]
    for name, shape in layout["params"].items():
        parts = [h.get_slice(f"param/{name}").get_shape() for h in halves]
        assert parts[0][0] + parts[1][0] == shape[0] and parts[0][0] == -(-shape[0] // 2), name
    assert not (runs / "fsdp" / "step-00000006" / "projector").exists()  # only slices: no process held it whole


def test_sharded_checkpoint_resumes_exactly(runs):
    whole, resumed = runs / "fsdp", runs / "resumed"
    shutil.copytree(whole, resumed)
    for late in resumed.glob("step-*"):
        if int(late.name.removeprefix("step-")) > 4:
            shutil.rmtree(late)  # the newest left is step 4
    cfg = (runs / "fsdp.yaml").read_text().replace(str(whole), str(resumed))
    (resumed / "config.yaml").write_text((resumed / "config.yaml").read_text().replace(str(whole), str(resumed)))
    result = torchrun(write_yaml(runs / "resumed.yaml", __import__("yaml").safe_load(cfg)), "--resume", cwd=runs)
    assert result.returncode == 0, result.stderr[-3000:]
    assert losses(resumed) == losses(whole)
    last = sorted(p.name for p in whole.glob("step-*"))[-1]
    for rank in (0, 1):
        a = load_file(str(whole / last / "fsdp" / f"rank-{rank:05d}-of-00002.safetensors"))
        b = load_file(str(resumed / last / "fsdp" / f"rank-{rank:05d}-of-00002.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_accelerate_launch_shards_the_same_way(runs):
    """`accelerate launch` starts the processes as torchrun does (its multi-GPU launcher also runs
    gloo processes on a CPU): vcap shards the model itself, so the losses are torchrun's exactly."""
    cfg = __import__("yaml").safe_load((runs / "fsdp.yaml").read_text())
    cfg["train"]["out_dir"] = str(runs / "accelerate")
    config = write_yaml(runs / "accelerate.yaml", cfg)
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                             "-m", "vcap", "train", str(config), "--quiet"], env=ENV, cwd=runs, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert losses(runs / "accelerate") == losses(runs / "fsdp")
    assert (runs / "accelerate" / "step-00000006" / "fsdp" / "rank-00001-of-00002.safetensors").is_file()
    assert result.stdout.count("run folder:") == 1  # printed once, not once per process


def test_resuming_with_another_process_count_is_refused(runs, tmp_path):
    result = torchrun(runs / "fsdp.yaml", "--resume", cwd=tmp_path, processes=1)
    assert result.returncode != 0 and "exitcode: 2" in result.stderr  # vcap's usage error; torchrun reports it
    assert "written by 2 processes" in result.stderr and "--nproc_per_node 2" in result.stderr


def test_export_puts_the_slices_together(runs, tmp_path):
    """The exported captioner's validation loss is the sharded run's last one: every slice is
    back in its place (one out of order would change it)."""
    from vcap import load_captioner
    from vcap.config_io import load_config
    from vcap.export import export

    export(runs / "fsdp", tmp_path / "captioner")
    captioner = load_captioner(tmp_path / "captioner")
    run_val = [m["val_loss"] for m in metrics(runs / "fsdp") if "val_loss" in m][-1]
    assert validation_loss(captioner, load_config(runs / "fsdp" / "config.yaml")) == pytest.approx(run_val, rel=1e-5)


def test_fsdp_without_a_launcher_is_a_usage_error(tmp_path, data, capsys):
    from vcap.cli import main

    config = write_yaml(tmp_path / "run.yaml", tiny_run(data, tmp_path / "run", stage="lora", fsdp=True))
    assert main(["train", str(config), "--quiet"]) == 2
    assert "torchrun --nproc_per_node" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_fsdp_with_qlora_is_refused():
    from vcap.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="train.fsdp"):
        TrainConfig(stage="lora", qlora=True, fsdp=True)
