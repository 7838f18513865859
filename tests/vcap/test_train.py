"""Training: manifests, configs, the feature cache, the three stages, QLoRA, exact resume after a
kill, evaluation and export (checked against peft and transformers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .trainkit import tiny_run, write_yaml
from vcap.config import ConfigError, RunConfig, config_from_dict, load_config
from vcap.data import IGNORE_INDEX, FeatureCache, ManifestError, encoder_fingerprint, extract_features, read_manifest
from vcap.synthetic import make_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    return make_dataset(folder, n_train=6, n_val=2, n_test=4, seed=1, size=64, num_frames=8, progress=False)


def run_cfg(data, out_dir, **train) -> RunConfig:
    return config_from_dict(RunConfig, tiny_run(data, out_dir, **train))


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- manifests ------------------------------------------------------------------------------------------

def test_manifest_forms_and_relative_paths(tmp_path):
    (tmp_path / "clips").mkdir()
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"video": "clips/a.mp4", "caption": "빨간 공이 굴러갑니다.", "lang": "ko"}, ensure_ascii=False) + "\n\n"
        + json.dumps({"video": "/abs/b.mp4", "conversations": [
            {"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "A ball rolls."},
            {"from": "human", "value": "What colour?"}, {"from": "gpt", "value": "Red."}]}) + "\n",
        encoding="utf-8")
    a, b = read_manifest(manifest)
    assert a.video == tmp_path / "clips" / "a.mp4" and a.lang == "ko" and a.caption == "빨간 공이 굴러갑니다."
    assert a.turns[0][0]  # the default Korean instruction
    assert b.video == Path("/abs/b.mp4") and b.turns == [("What happens?", "A ball rolls."), ("What colour?", "Red.")]


def test_manifest_errors_name_every_bad_line(tmp_path):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text("\n".join([
        json.dumps({"video": "a.mp4", "caption": "ok", "lang": "en"}),
        "{not json",
        json.dumps({"caption": "no video", "lang": "en"}),
        json.dumps({"video": "c.mp4", "caption": "x", "lang": "fr"}),
        json.dumps({"video": "d.mp4", "caption": "no language"}),
        json.dumps({"video": "e.mp4", "conversations": [{"from": "human", "value": "no marker"},
                                                        {"from": "gpt", "value": "x"}]}),
        json.dumps([1, 2]),
    ]) + "\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(manifest)
    assert [line for line, _ in err.value.problems] == [2, 3, 4, 5, 6, 7]
    text = str(err.value)
    assert f"{manifest}:2: not valid JSON" in text and "'video'" in text and "'fr'" in text and "<video>" in text
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_manifest(tmp_path / "missing.jsonl")


def test_loss_covers_only_the_answer(data):
    from ..tiny import tiny_captioner
    from vcap.data import tokenize_sample

    captioner = tiny_captioner()
    sample = read_manifest(data["train"])[1]
    ids, labels = tokenize_sample(captioner.tokenizer, sample, num_video_tokens=12)
    targets = [t for t in labels if t != IGNORE_INDEX]
    im_end = captioner.tokenizer.token_to_id("<|im_end|>")
    assert targets == captioner.tokenizer.encode(sample.caption) + [im_end]
    assert ids.count(captioner.tokenizer.token_to_id("<|video_pad|>")) == 12
    # a non-thinking answer is rendered as the template does: an empty think block precedes it
    text = captioner.tokenizer.decode(ids)
    assert text.endswith(f"<|im_start|>assistant\n<think>\n\n</think>\n\n{sample.caption}<|im_end|>\n")


# -- configs --------------------------------------------------------------------------------------------

def test_every_shipped_config_loads():
    files = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(files) >= 10
    from projector import projector_config_from_dict

    for path in files:
        cfg = load_config(path)
        assert cfg.model.language_model and cfg.data.train, path
        options = {"vision_hidden_size": 768, "text_hidden_size": 1024, **cfg.model.projector}
        projector_config_from_dict(options, f"{path.name}: projector")  # raises on an unknown option


def test_config_errors_name_the_key(tmp_path, data):
    path = write_yaml(tmp_path / "run.yaml", tiny_run(data, tmp_path / "run"))
    assert load_config(path, ["train.lr=2e-4", "train.lora.r=4"]).train.lr == 2e-4
    cases = {
        "train.lrr=1": "train.lrr",
        "train.batch_size=two": "train.batch_size",
        "train.stage=everything": "train.stage",
        "model.frames.num_frames=0": "frames",
        "data.text_only=true": "text_only",
        "nonsense": "key=value",
    }
    for override, expected in cases.items():
        with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
            load_config(path, [override])
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(broken)


# -- the feature cache ----------------------------------------------------------------------------------

def test_feature_cache_reuses_and_invalidates(tmp_path, data):
    from ..tiny import tiny_captioner

    captioner = tiny_captioner()
    videos = sorted({s.video for s in read_manifest(data["train"])})
    cache = FeatureCache(tmp_path / "cache", encoder_fingerprint(captioner))
    first, failed = extract_features(captioner, videos, cache, progress=False)
    assert not failed and len(list((tmp_path / "cache").glob("*.safetensors"))) == len(videos)

    calls = []
    original = captioner.encode_frames
    captioner.encode_frames = lambda clips: calls.append(len(clips)) or original(clips)
    again, _ = extract_features(captioner, videos, cache, progress=False)
    assert calls == [] and all(torch.equal(first[v], again[v]) for v in videos)

    os.utime(videos[0], ns=(1, 1))  # the file changed: its features are recomputed
    extract_features(captioner, videos, cache, progress=False)
    assert calls == [1]
    other = tiny_captioner(seed=1)
    other.vision.visual.conv1.weight.data.mul_(2)  # another encoder: another key
    assert encoder_fingerprint(other) != encoder_fingerprint(captioner)


# -- stages ---------------------------------------------------------------------------------------------

def test_projector_stage_trains_only_the_projector(tmp_path, data, monkeypatch):
    import vcap.train as training
    from vcap.model import build_captioner
    from vcap.train import seed_everything, train

    built = []
    build = training.build_for_training
    monkeypatch.setattr(training, "build_for_training", lambda *a, **k: built.append(build(*a, **k)) or built[-1])
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
    from vcap.train import build_for_training, train

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
        ours = captioner.lm(ids)
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
    from vcap.train import build_for_training

    captioner = build_for_training(cfg2)
    trained = load_file(str(lm_dir / "model.safetensors"))
    assert torch.equal(captioner.lm.model.embed_tokens.weight, trained["model.embed_tokens.weight"])


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
    assert "training samples: 4 (2 videos skipped)" in log


def test_qlora_on_cpu(tmp_path, data):
    import bitsandbytes as bnb

    from vcap.train import build_for_training, train

    cfg = run_cfg(data, tmp_path / "run", stage="lora", qlora=True, epochs=2, lr=5e-3,
                  lora={"r": 4, "alpha": 8, "dropout": 0.0})
    captioner = build_for_training(cfg)
    q_proj = captioner.lm.model.layers[0].self_attn.q_proj
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

checkpoint.save_checkpoint = save_then_maybe_die
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

@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, data):
    from vcap.train import train

    out = tmp_path_factory.mktemp("lora_run")
    cfg = run_cfg(data, out / "run", stage="lora", epochs=2, lr=1e-2, projector_lr=3e-3,
                  lora={"r": 4, "alpha": 8, "dropout": 0.0})
    return train(cfg, progress=False)


def test_export_merges_the_adapter_and_transformers_loads_it(tmp_path, lora_run, data):
    from peft import PeftModel
    from transformers import Qwen3ForCausalLM

    from vcap.checkpoint import latest_checkpoint, load_trainable_weights
    from vcap.cli import main
    from vcap.model import build_captioner, load_captioner
    from vcap.train import seed_everything

    assert main(["export", str(lora_run), str(tmp_path / "captioner")]) == 0
    exported = load_captioner(tmp_path / "captioner")
    assert not hasattr(exported.language_model, "peft_config")  # merged: a plain Qwen3 model
    reference = Qwen3ForCausalLM.from_pretrained(tmp_path / "captioner" / "language_model").eval()
    ids = torch.tensor([exported.tokenizer.encode("검은색 배경에서 큰 파란색 삼각형")])
    with torch.no_grad():
        assert torch.allclose(exported.lm(ids), reference(ids).logits, atol=1e-4)

    # the unmerged run (peft's own adapter application) captions exactly as the export does
    checkpoint = latest_checkpoint(lora_run)
    cfg = load_config(checkpoint / "config.yaml")
    seed_everything(cfg.train.seed)
    unmerged = build_captioner(cfg.model)
    unmerged.language_model = PeftModel.from_pretrained(unmerged.language_model, str(checkpoint / "adapter"))
    load_trainable_weights(checkpoint, unmerged, "projector")
    unmerged.eval()
    videos = [str(s.video) for s in read_manifest(data["test"])[:4:2]]
    assert [r.caption for r in exported.caption(videos, lang="en")] == [r.caption for r in unmerged.caption(videos, lang="en")]


def test_caption_scores_and_korean_tokens():
    from vcap.evaluate import Tokenizer, caption_scores

    tok = Tokenizer()
    assert tok("Two large blue triangles move, from top to bottom.", "en") == "two large blue triangles move from top to bottom"
    assert tok("검은색 배경에서 움직입니다.", "ko").split()[:3] == ["검은색", "배경", "에서"]
    refs = {0: ["a red circle moves left"], 1: ["two blue squares move up"]}
    perfect = caption_scores(refs, {0: "a red circle moves left", 1: "two blue squares move up"}, with_meteor=False)
    assert perfect["BLEU-1"] == pytest.approx(1.0) and perfect["ROUGE-L"] == pytest.approx(1.0)
    wrong = caption_scores(refs, {0: "three green triangles", 1: "nothing here at all"}, with_meteor=False)
    assert wrong["BLEU-1"] < 0.1 and wrong["CIDEr-D"] < perfect["CIDEr-D"]


def test_vcap_eval_reports_metrics_and_attribute_accuracy(tmp_path, lora_run, data, capsys):
    from vcap.cli import main
    from vcap.synthetic import states_all_attributes

    assert main(["export", str(lora_run), str(tmp_path / "captioner")]) == 0
    out, report_path = tmp_path / "eval.jsonl", tmp_path / "report.json"
    code = main(["eval", str(tmp_path / "captioner"), str(data["test"]), "--out", str(out), "--report",
                 str(report_path), "--no-meteor", "--quiet"])
    assert code == 0
    report = json.loads(report_path.read_text())
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert report["captions"] == len(rows) == 8 and report["errors"] == 0
    for lang in ("ko", "en"):
        part = [r for r in rows if r["lang"] == lang]
        correct = sum(states_all_attributes(r["caption"], lang, next(
            json.loads(line)["attributes"] for line in Path(data["test"]).read_text().splitlines()
            if json.loads(line)["video"] in r["video"])) for r in part)
        assert report[lang]["attribute_accuracy"] == pytest.approx(correct / len(part))
        assert {"BLEU-4", "ROUGE-L", "CIDEr-D"} <= report[lang].keys()
    printed = capsys.readouterr().out
    assert "| ko |" in printed and "CIDEr-D" in printed


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


def test_epoch_batches_cover_the_data_and_split_evenly():
    from vcap.train import epoch_batches

    single = epoch_batches(10, 4, seed=0, epoch=0)
    assert sorted(i for b in single for i in b) == list(range(10)) and [len(b) for b in single] == [4, 4, 2]
    assert epoch_batches(10, 4, seed=0, epoch=1) != single  # a new order each epoch
    shares = [epoch_batches(10, 4, seed=0, epoch=0, rank=r, world=2) for r in range(2)]
    assert [len(s) for s in shares] == [2, 2]  # padded: every process joins every step
    assert {i for s in shares for b in s for i in b} == set(range(10))


def test_gradient_checkpointing_and_bf16_mixed_precision_train(tmp_path, data):
    """Checkpointed layers give the same loss and gradients; bf16 autocast (accelerate) runs on CPU."""
    from vcap.data import CaptionDataset, collate
    from vcap.train import build_for_training, seed_everything, train

    def loss_and_grads(checkpointing: bool):
        cfg = run_cfg(data, tmp_path / "unused", stage="full", gradient_checkpointing=checkpointing)
        seed_everything(0)
        captioner = build_for_training(cfg)
        samples = read_manifest(data["train"])[:4]
        features, _ = extract_features(captioner, [s.video for s in samples], None, progress=False)
        batch = collate([CaptionDataset(samples, features, captioner)[i] for i in range(4)], captioner.tokenizer.pad_id)
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
