"""The quickstart's wiring (the whole run takes minutes; `make quickstart` runs it)."""

from __future__ import annotations

from pathlib import Path

from vcap.recipes.quickstart import STAGES, VISION_PRETRAIN, configs_dir, pretrain_tower, stage_config


def test_stage_configs_chain_under_the_output_folder(tmp_path):
    text_lm, projector, lora = (stage_config(configs_dir() / name, tmp_path) for name in STAGES)
    assert text_lm.data.text_only and text_lm.train.stage == "full"
    assert text_lm.model.language_model == "preset:mini"
    assert projector.train.stage == "projector" and lora.train.stage == "lora"
    for cfg in (projector, lora):  # later stages start from stage 0's language model
        assert cfg.model.language_model == text_lm.train.out_dir == str(tmp_path / "text_lm")
        assert cfg.data.train == str(tmp_path / "data" / "train.jsonl")
        assert cfg.data.feature_cache == str(tmp_path / "feature_cache")
    assert lora.train.init_from == projector.train.out_dir
    assert projector.model == lora.model  # the same encoder, projector type and frames in both stages


def test_every_stage_reads_the_pretrained_tower_under_the_output_folder(tmp_path):
    cfgs = [stage_config(configs_dir() / name, tmp_path) for name in STAGES]
    assert {cfg.model.vision_weights for cfg in cfgs} == {str(tmp_path / "vision" / "vision.safetensors")}
    assert all(cfg.model.vision == cfgs[0].model.vision for cfg in cfgs)


def test_a_new_tower_starts_the_stages_that_read_its_features_over(tmp_path, monkeypatch):
    import vcap.recipes.vision_pretrain

    cfgs = [stage_config(configs_dir() / name, tmp_path) for name in STAGES]
    for cfg in cfgs:
        (Path(cfg.train.out_dir) / "step-1").mkdir(parents=True)
    calls = []

    def fake_pretrain(model, manifest, out_file, cfg, progress):
        calls.append((manifest, cfg.steps))
        Path(out_file).parent.mkdir(parents=True, exist_ok=True)
        Path(out_file).write_bytes(b"weights")
        return {"first_loss": 0.7, "last_loss": 0.1}

    monkeypatch.setattr(vcap.recipes.vision_pretrain, "pretrain_vision", fake_pretrain)
    assert pretrain_tower(cfgs, tmp_path / "train.jsonl", say=lambda _: None)
    assert calls == [(tmp_path / "train.jsonl", VISION_PRETRAIN["steps"])]
    text_lm, projector, lora = (Path(cfg.train.out_dir) for cfg in cfgs)
    assert text_lm.exists() and not projector.exists() and not lora.exists()  # the text LM never saw a frame
    projector.mkdir()
    assert not pretrain_tower(cfgs, tmp_path / "train.jsonl", say=lambda _: None)  # there already: a rerun keeps it
    assert projector.exists() and len(calls) == 1


def test_a_rerun_replaces_its_own_captioner(tmp_path, monkeypatch):
    """The quickstart exports into OUT/captioner on every run; the second export must be allowed."""
    import vcap.evaluate
    import vcap.export
    import vcap.builder
    import vcap.recipes.quickstart as quickstart
    import vcap.recipes.synthetic
    import vcap.train

    exports = []
    monkeypatch.setattr(vcap.recipes.synthetic, "make_dataset", lambda out, **kw: {s: tmp_path / f"{s}.jsonl" for s in
                                                                           ("train", "val", "test")})
    monkeypatch.setattr(quickstart, "pretrain_tower", lambda *a, **k: False)

    def fake_train(cfg, resume, progress):
        Path(cfg.train.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.train.out_dir) / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')

    monkeypatch.setattr(vcap.train, "train", fake_train)
    monkeypatch.setattr(vcap.export, "export", lambda run, out, **kw: exports.append(kw) or Path(out))
    monkeypatch.setattr(vcap.builder, "load_captioner", lambda folder: None)

    def fake_evaluate(captioner, manifest, out, **kw):
        Path(out).write_text('{"video": "a.mp4", "lang": "en", "status": "ok", "caption": "x", "references": ["x"]}\n')
        return {"manifest": str(manifest), "captions": 1, "errors": 0,
                **{lang: {"n": 1, "attribute_accuracy": 1.0, "attribute_accuracy_unseen": 1.0} for lang in ("ko", "en")}}

    monkeypatch.setattr(vcap.evaluate, "evaluate", fake_evaluate)
    for _ in range(2):
        quickstart.quickstart(tmp_path / "qs", progress=False)
    assert exports == [{"overwrite": True}] * 2


def test_the_stage_configs_ship_inside_the_wheel(tmp_path):
    """`vcap quickstart` from an installed wheel finds its stage configs (package data)."""
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[2]
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("vcap-*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "installed")
    found = subprocess.run([sys.executable, "-c", "from vcap.recipes.quickstart import STAGES, configs_dir; "
                            "print(configs_dir()); print(all((configs_dir() / s).is_file() for s in STAGES))"],
                           env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "installed")},
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr[-2000:]
    folder, ok = found.stdout.split()
    assert folder.startswith(str(tmp_path / "installed")) and ok == "True"
