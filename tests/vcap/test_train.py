"""Training: the three stages (checked against peft and transformers), QLoRA, exact resume after a
kill, several processes, mixed precision, and one run per output folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vcap.cli import main
from vcap.config_io import load_config
from vcap.data import read_manifest
from vcap.features import FeatureCache, encoder_fingerprint, extract_features

from .trainkit import metrics, run_cfg, tiny_run, write_yaml

ROOT = Path(__file__).resolve().parents[2]


# -- manifests ------------------------------------------------------------------------------------------


# -- configs --------------------------------------------------------------------------------------------


# -- the feature cache ----------------------------------------------------------------------------------


# -- stages ---------------------------------------------------------------------------------------------

def test_projector_stage_trains_only_the_projector(tmp_path, data, monkeypatch):
    import vcap.stages as stages
    from vcap.builder import build_captioner
    from vcap.train import seed_everything, train

    built = []
    build = stages.build_for_training
    monkeypatch.setattr(stages, "build_for_training", lambda *a, **k: built.append(build(*a, **k)) or built[-1])
    cfg = run_cfg(data, tmp_path / "run", stage="projector", epochs=3, lr=3e-3)
    run = train(cfg, progress=False)
    seed_everything(cfg.train.seed)  # as train() does before it builds: the same random base weights
    untrained = build_captioner(cfg.model)
    for part in ("language_model", "vision"):  # frozen: every weight as it was built
        after, before = getattr(built[0], part).state_dict(), getattr(untrained, part).state_dict()
        assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before), part
    assert any(not torch.equal(a, b) for a, b in zip(built[0].projector.state_dict().values(),
                                                   untrained.projector.state_dict().values()))
    losses = [m["loss"] for m in metrics(run) if "loss" in m]
    assert len(losses) == 9 and losses[-1] < losses[0]
    assert any("val_loss" in m for m in metrics(run))
    ckpt = run / "step-00000009"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "config.yaml", "optimizer.json", "optimizer.safetensors", "projector", "rng.safetensors", "trainer_state.json"]
    assert load_config(run / "config.yaml") == cfg  # the resolved config is saved with the run
    # the language model is untouched: it is still the preset's seed-0 initialisation
    torch.manual_seed(0)
    fresh = build_captioner(cfg.model)
    from vcap.checkpoint import load_trainable_weights

    before = {k: v.clone() for k, v in fresh.projector.state_dict().items()}
    load_trainable_weights(ckpt, fresh, "projector")
    assert any(not torch.equal(before[k], v) for k, v in fresh.projector.state_dict().items())


def test_lora_stage_writes_an_adapter_peft_loads(tmp_path, data):
    from peft import PeftModel
    from transformers import Qwen3ForCausalLM

    from qwen3_backbone import save_pretrained
    from vcap.stages import build_for_training
    from vcap.train import train

    cfg = run_cfg(data, tmp_path / "run", stage="lora", epochs=1, lr=5e-3, projector_lr=1e-3,
                  lora={"r": 4, "alpha": 8, "dropout": 0.0})
    run = train(cfg, progress=False)
    adapter = run / "step-00000003" / "adapter"
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and set(adapter_config["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())

    # peft itself loads the adapter onto transformers' Qwen3 and computes what our model computes
    captioner = build_for_training(cfg)
    from vcap.checkpoint import load_trainable_weights

    load_trainable_weights(run / "step-00000003", captioner, "lora")
    captioner.eval()
    ids = torch.tensor([captioner.tokenizer.encode("Two small red circles move from left to right.")])
    with torch.no_grad():
        ours = captioner.backbone(ids)
    base_dir = tmp_path / "base"
    save_pretrained(captioner.language_model.unload(), base_dir)  # the base weights, adapter layers removed
    reference = PeftModel.from_pretrained(Qwen3ForCausalLM.from_pretrained(base_dir), str(adapter)).eval()
    with torch.no_grad():
        theirs = reference(ids).logits
        base_logits = Qwen3ForCausalLM.from_pretrained(base_dir)(ids).logits
    assert not torch.allclose(ours, base_logits, atol=1e-3)  # the adapter changes the model
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_full_stage_and_text_only_pretraining(tmp_path, data):
    from vcap.train import train

    cfg = run_cfg(data, tmp_path / "lm", stage="full", epochs=2, lr=3e-3)
    cfg.data.text_only = True
    run = train(cfg, progress=False)
    losses = [m["loss"] for m in metrics(run) if "loss" in m]
    assert losses[-1] < losses[0]
    lm_dir = run / "step-00000006" / "language_model"
    assert (lm_dir / "config.json").exists() and (lm_dir / "model.safetensors").exists()
    # a later stage starts from that language model by naming the run folder
    cfg2 = run_cfg(data, tmp_path / "proj", stage="projector", epochs=1)
    cfg2.model.language_model = str(run)
    from vcap.stages import build_for_training

    captioner = build_for_training(cfg2)
    trained = load_file(str(lm_dir / "model.safetensors"))
    assert torch.equal(captioner.backbone.model.embed_tokens.weight, trained["model.embed_tokens.weight"])


def test_unreadable_videos_are_skipped_and_logged(tmp_path, data):
    from vcap.train import train

    manifest = tmp_path / "train.jsonl"
    lines = Path(data["train"]).read_text().splitlines()[:4]
    lines = [json.dumps({**json.loads(line), "video": str(Path(data["train"]).parent / json.loads(line)["video"])})
             for line in lines]
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    lines.append(json.dumps({"video": "broken.mp4", "caption": "x", "lang": "en"}))
    lines.append(json.dumps({"video": "missing.mp4", "caption": "x", "lang": "en"}))
    manifest.write_text("\n".join(lines) + "\n")
    cfg = run_cfg({"train": manifest, "val": data["val"]}, tmp_path / "run", stage="projector", max_steps=1)
    run = train(cfg, progress=False)
    log = (run / "train.log").read_text()
    assert "skipped unreadable video" in log and "broken.mp4" in log and "missing.mp4" in log
    assert "training samples: 4 (2 skipped: their video could not be read)" in log


def test_qlora_on_cpu(tmp_path, data):
    import bitsandbytes as bnb

    from vcap.stages import build_for_training
    from vcap.train import train

    cfg = run_cfg(data, tmp_path / "run", stage="lora", qlora=True, epochs=2, lr=5e-3,
                  lora={"r": 4, "alpha": 8, "dropout": 0.0})
    captioner = build_for_training(cfg)
    q_proj = captioner.backbone.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit) and q_proj.base_layer.weight.dtype == torch.uint8
    assert all(p.dtype == torch.float32 for n, p in captioner.named_parameters() if p.requires_grad)
    run = train(cfg, progress=False)
    losses = [m["loss"] for m in metrics(run) if "loss" in m]
    assert losses[-1] < losses[0]


# -- resume after a kill ---------------------------------------------------------------------------------

KILLER = """
import os, signal, sys
import vcap.checkpoint as checkpoint
kill_step, mid_write = int(sys.argv[2]), sys.argv[3] == "mid-write"
save, save_optimizer = checkpoint.save_checkpoint, checkpoint._save_optimizer

def save_then_maybe_die(run_dir, step, *args, **kwargs):
    if step == kill_step and mid_write:
        checkpoint._save_optimizer = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
    out = save(run_dir, step, *args, **kwargs)
    if step == kill_step:
        os.kill(os.getpid(), signal.SIGKILL)
    return out

import vcap.train as train
train.save_checkpoint = save_then_maybe_die  # where the trainer calls it
from vcap.cli import main
sys.exit(main(["train", sys.argv[1], "--quiet"]))
"""


@pytest.mark.parametrize("mid_write", [False, True], ids=["after-checkpoint", "during-checkpoint"])
def test_killed_run_resumes_exactly(tmp_path, data, mid_write):
    from vcap.cli import main

    def config(name):
        return write_yaml(tmp_path / f"{name}.yaml", tiny_run(
            data, tmp_path / name, cache=tmp_path / "cache", stage="lora", epochs=3, lr=5e-3, projector_lr=2e-3,
            lora={"r": 4, "alpha": 8, "dropout": 0.2}))  # dropout: the random state must be restored too

    assert main(["train", str(config("whole")), "--quiet"]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", KILLER, str(config("killed")), "6",
                             "mid-write" if mid_write else "after"], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    steps = sorted(p.name for p in (tmp_path / "killed").glob("step-*"))
    assert steps[-1] == ("step-00000004" if mid_write else "step-00000006")
    if mid_write:
        assert list((tmp_path / "killed").glob(".tmp-step-*"))  # the half-written checkpoint never got a real name
    assert main(["train", str(config("killed")), "--resume", "--quiet"]) == 0
    assert not list((tmp_path / "killed").glob(".tmp-step-*"))

    whole, resumed = metrics(tmp_path / "whole"), metrics(tmp_path / "killed")
    assert [m.get("loss", m.get("val_loss")) for m in resumed] == [m.get("loss", m.get("val_loss")) for m in whole]
    assert [m["step"] for m in resumed if "loss" in m] == list(range(1, 10))
    for part in ("projector/projector.safetensors", "adapter/adapter_model.safetensors"):
        a = load_file(str(tmp_path / "whole" / "step-00000009" / part))
        b = load_file(str(tmp_path / "killed" / "step-00000009" / part))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


def test_resume_refuses_a_changed_model(tmp_path, data, capsys):
    from vcap.cli import main

    config = write_yaml(tmp_path / "run.yaml", tiny_run(data, tmp_path / "run", stage="projector", max_steps=2))
    assert main(["train", str(config), "--quiet"]) == 0
    assert main(["train", str(config), "model.projector.type=linear", "--resume", "--quiet"]) == 2
    assert "different model.projector" in capsys.readouterr().err
    assert main(["train", str(config), "train.max_steps=3", "--resume", "--quiet"]) == 0  # longer: fine
    assert [m["step"] for m in metrics(tmp_path / "run") if "loss" in m] == [1, 2, 3]


# -- export and evaluation -------------------------------------------------------------------------------


def test_two_processes_share_each_epoch(tmp_path, data):
    """Data parallel training in two CPU processes (torchrun; `accelerate launch` on GPUs)."""
    config = write_yaml(tmp_path / "run.yaml", tiny_run(data, tmp_path / "run", cache=tmp_path / "cache",
                                                        stage="lora", epochs=1, lora={"r": 4, "alpha": 8}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "vcap",
                             "train", str(config), "--quiet"], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [m["step"] for m in metrics(tmp_path / "run") if "loss" in m]
    assert steps == [1, 2]  # 12 samples, batches of 4: 3 batches, split over 2 processes -> 2 steps each
    assert (tmp_path / "run" / "step-00000002" / "adapter" / "adapter_model.safetensors").exists()


def test_gradient_checkpointing_and_bf16_mixed_precision_train(tmp_path, data):
    """Checkpointed layers give the same loss and gradients; bf16 autocast (accelerate) runs on CPU."""
    from vcap.data import CaptionDataset, collate
    from vcap.stages import build_for_training
    from vcap.train import seed_everything, train

    def loss_and_grads(checkpointing: bool):
        cfg = run_cfg(data, tmp_path / "unused", stage="full", gradient_checkpointing=checkpointing)
        seed_everything(0)
        captioner = build_for_training(cfg)
        samples = read_manifest(data["train"])[:4]
        cache = FeatureCache(tmp_path / "cache", encoder_fingerprint(captioner), torch.float32)
        extract_features(captioner, [s.video for s in samples], cache, progress=False)
        batch = collate([CaptionDataset(samples, cache, captioner)[i] for i in range(4)], captioner.tokenizer.pad_id)
        loss = captioner(batch["video_features"], batch["input_ids"], batch["attention_mask"], batch["labels"])
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in captioner.named_parameters() if p.grad is not None}

    plain, plain_grads = loss_and_grads(False)
    checkpointed, checkpointed_grads = loss_and_grads(True)
    assert torch.allclose(plain, checkpointed, atol=1e-6)
    assert plain_grads.keys() == checkpointed_grads.keys() and len(plain_grads) > 10
    assert all(torch.allclose(plain_grads[k], checkpointed_grads[k], atol=1e-5) for k in plain_grads)

    run = train(run_cfg(data, tmp_path / "bf16", stage="lora", precision="bf16", max_steps=2,
                        lora={"r": 4, "alpha": 8, "dropout": 0.0}), progress=False)
    assert [m["step"] for m in metrics(run) if "loss" in m] == [1, 2]
def test_a_second_run_never_mixes_with_the_first(data, tmp_path, capsys):
    out = tmp_path / "run"
    first = write_yaml(tmp_path / "a.yaml", tiny_run(data, out, stage="projector", max_steps=4, save_every=4))
    assert main(["train", str(first), "--quiet"]) == 0
    old_weights = load_file(str(out / "step-00000004" / "projector" / "projector.safetensors"))
    second = write_yaml(tmp_path / "b.yaml", tiny_run(data, out, stage="projector", max_steps=2, keep_last=1, lr=0.05,
                                                      save_every=2))
    assert main(["train", str(second), "--quiet"]) == 2
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    assert main(["train", str(second), "--quiet", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("step-")) == ["step-00000002"]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "step-00000004").is_dir()  # the old run, whole, beside it
    new_weights = load_file(str(out / "step-00000002" / "projector" / "projector.safetensors"))
    assert any(not torch.equal(old_weights[k], new_weights[k]) for k in old_weights)


def test_a_folder_that_is_not_a_run_is_refused(data, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("\\documentclass{article}")
    config = write_yaml(tmp_path / "c.yaml", tiny_run(data, folder, stage="projector", max_steps=1))
    for extra in ([], ["--resume"], ["--overwrite"]):
        assert main(["train", str(config), "--quiet", *extra]) == 2
        assert "holds no vcap run" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]


def test_resume_repairs_a_torn_metrics_line(data, tmp_path):
    out = tmp_path / "run"
    config = write_yaml(tmp_path / "r.yaml", tiny_run(data, out, stage="projector", max_steps=2, save_every=2))
    assert main(["train", str(config), "--quiet"]) == 0
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 3, "epoch": 1, "lo')  # a kill in the middle of a line
    assert main(["train", str(config), "train.max_steps=3", "--resume", "--quiet"]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if "loss" in m] == [1, 2, 3]


def test_overrides_and_options_in_any_order_and_lr_is_train_lr(data, tmp_path):
    out = tmp_path / "run"
    config = write_yaml(tmp_path / "o.yaml", tiny_run(data, out, stage="lora", scheduler="constant",
                                                      lora={"r": 2, "alpha": 4}))
    assert main(["train", "--quiet", str(config), "train.max_steps=1", "train.lr=0.004", "train.projector_lr=0.001"]) == 0
    assert main(["train", str(config), "--resume", "train.max_steps=2", "--quiet", "train.lr=0.004",
                 "train.projector_lr=0.001"]) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]
    assert all(m["lr"] == pytest.approx(0.004) and m["projector_lr"] == pytest.approx(0.001)
               for m in metrics if "loss" in m)


def test_a_list_of_manifests_is_trained_on_together(tmp_path, data):
    """data.train (and data.val) may list manifests, each read with its own folder as the base of
    its video paths: a run mixes datasets (e.g. single captions and dense captions)."""
    from vcap.config_io import absolute_paths
    from vcap.data import build_datasets
    from vcap.stages import build_for_training

    other = tmp_path / "elsewhere" / "train.jsonl"
    other.parent.mkdir()
    rows = [json.loads(line) for line in Path(data["train"]).read_text(encoding="utf-8").splitlines()]
    for row in rows:  # the same clips, named relative to the second manifest's folder
        row["video"] = os.path.relpath(Path(data["train"]).parent / row["video"], other.parent)
        row["caption"] = "elsewhere: " + row["caption"]
    other.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg = run_cfg(data, tmp_path / "run", stage="lora")
    cfg.data.train = [str(data["train"]), os.path.relpath(other)]
    cfg.data.val = [str(data["val"])]
    assert absolute_paths(cfg).data.train == [str(data["train"]), str(other.resolve())]
    train_set, val_set = build_datasets(absolute_paths(cfg), build_for_training(cfg), progress=False)
    captions = [s.caption for s in train_set.samples]
    assert len(captions) == 2 * len(rows) and sum(c.startswith("elsewhere: ") for c in captions) == len(rows)
    assert all(s.video.exists() for s in train_set.samples) and len(val_set) == len(read_manifest(data["val"]))
    path = write_yaml(tmp_path / "run.yaml", tiny_run(data, tmp_path / "run"))
    from vcap.config import ConfigError

    with pytest.raises(ConfigError, match="data.train"):
        load_config(path, ["data.train=[a.jsonl, '']"])
