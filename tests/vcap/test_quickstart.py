"""The quickstart's wiring (the whole run takes minutes; `make quickstart` runs it)."""

from __future__ import annotations

from pathlib import Path

from vcap.recipes.quickstart import (DENSE_STAGE, STAGES, VISION_PRETRAIN, _targets_met, configs_dir, pretrain_tower,
                                     stage_config)


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


def test_no_stage_depends_on_the_working_folder(tmp_path, monkeypatch):
    """A rerun from another folder must find its finished stages unchanged, not start them over."""
    from vcap.config_io import absolute_paths
    from vcap.train import dump_config

    def saved(cwd: Path) -> list[str]:
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        return [dump_config(absolute_paths(stage_config(configs_dir() / name, tmp_path / "qs")))
                for name in (*STAGES, DENSE_STAGE)]

    assert saved(tmp_path / "here") == saved(tmp_path / "there")


def test_the_dense_stage_starts_from_stage_2_on_the_multi_event_clips(tmp_path):
    lora, dense = (stage_config(configs_dir() / name, tmp_path) for name in (STAGES[-1], DENSE_STAGE))
    assert dense.train.stage == "lora" and dense.train.init_from == lora.train.out_dir
    assert dense.model.language_model == lora.model.language_model == str(tmp_path / "text_lm")
    assert dense.data.train == str(tmp_path / "data-dense" / "train.jsonl")
    assert dense.model.vision == lora.model.vision and dense.model.projector == lora.model.projector
    frames = dense.model.frames  # by time: two frames a second, each after its time as text
    assert (frames.strategy, frames.fps, frames.max_frames, frames.timestamps) == ("fps", 2, 24, "text")
    assert dense.model.max_new_tokens >= 120  # three events of about 40 tokens


def test_timestamps_none_sets_every_stage_that_reads_frames_for_the_ablation(tmp_path):
    for name in (*STAGES, DENSE_STAGE):
        frames = stage_config(configs_dir() / name, tmp_path).model.frames
        assert frames.timestamps == "text" and frames.end_label
        ablation = stage_config(configs_dir() / name, tmp_path, timestamps="none")
        assert ablation.model.frames.timestamps == ("text" if ablation.data.text_only else "none")
        assert ablation.model.frames.end_label == ablation.data.text_only  # the end label is a time label too
    assert stage_config(configs_dir() / STAGES[0], tmp_path, timestamps="none").data.text_only  # stage 0 is kept


def test_the_dense_targets_ask_for_f1_and_attributes_in_both_languages_and_on_unseen_events():
    good = {"F1@0.5": 0.95, "event_attribute_accuracy": 0.93, "event_attribute_accuracy_unseen": 0.91}
    report = {lang: {"dense": dict(good), "dense_unseen": dict(good)} for lang in ("ko", "en")}
    assert _targets_met(report, "dense", 0.9)[0]
    for lang, part, key in [("ko", "dense", "F1@0.5"), ("en", "dense_unseen", "F1@0.5"),
                            ("en", "dense", "event_attribute_accuracy_unseen"), ("ko", "dense", "event_attribute_accuracy")]:
        worse = {lang_: {part_: dict(v) for part_, v in entry.items()} for lang_, entry in report.items()}
        worse[lang][part][key] = 0.89
        assert not _targets_met(worse, "dense", 0.9)[0], (lang, part, key)
    assert not _targets_met({"ko": report["ko"]}, "dense", 0.9)[0]  # a language with no figures misses
    single = {lang: {"attribute_accuracy": 1.0, "attribute_accuracy_unseen": 0.9} for lang in ("ko", "en")}
    assert _targets_met(single, "single", 0.9)[0] and not _targets_met(single, "single", 0.95)[0]


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


def _fake_run(tmp_path, monkeypatch) -> tuple[list, list]:
    """The quickstart with its data, training, export and evaluation replaced by fakes that record
    what they were asked: (trained stage configs, (run, output folder name, keyword arguments) of each export)."""
    import vcap.evaluate
    import vcap.export
    import vcap.builder
    import vcap.recipes.quickstart as quickstart
    import vcap.recipes.synthetic
    import vcap.train
    from vcap.config_io import absolute_paths

    trained, exports = [], []
    def manifests(out, *, n_train, **kw):  # a line per training clip, each naming its clip
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "train.jsonl").write_text("".join(f'{{"video": "train_{i}.mp4"}}\n' for i in range(n_train)))
        return {s: Path(out) / f"{s}.jsonl" for s in ("train", "val", "test")}

    monkeypatch.setattr(vcap.recipes.synthetic, "make_dataset", manifests)
    monkeypatch.setattr(vcap.recipes.synthetic, "make_dense_dataset", manifests)
    monkeypatch.setattr(quickstart, "pretrain_tower", lambda *a, **k: False)

    def fake_train(cfg, resume, progress):  # like train(): the config first, a finished stage is not repeated
        folder = Path(cfg.train.out_dir)
        if not (folder / "metrics.jsonl").exists():
            trained.append(cfg)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.yaml").write_text(vcap.train.dump_config(absolute_paths(cfg)), encoding="utf-8")
            (folder / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')

    def fake_evaluate(captioner, manifest, out, **kw):
        Path(out).write_text('{"video": "a.mp4", "lang": "en", "status": "ok", "caption": "x", "references": ["x"]}\n')
        good = {"clips": 1, "predicted_events": 2, "reference_events": 2, "F1@0.5": 1.0,
                "event_attribute_accuracy": 1.0, "event_attribute_accuracy_unseen": 1.0}
        return {"manifest": str(manifest), "captions": 1, "errors": 0,
                **{lang: {"n": 1, "attribute_accuracy": 1.0, "attribute_accuracy_unseen": 1.0, "dense": good,
                          "dense_unseen": good} for lang in ("ko", "en")}}

    monkeypatch.setattr(vcap.train, "train", fake_train)
    monkeypatch.setattr(vcap.export, "export", lambda run, out, **kw: exports.append((run, Path(out).name, kw)) or Path(out))
    monkeypatch.setattr(vcap.builder, "load_captioner", lambda folder: None)
    monkeypatch.setattr(vcap.evaluate, "evaluate", fake_evaluate)
    return trained, exports


def test_a_rerun_replaces_its_own_captioner(tmp_path, monkeypatch):
    """The quickstart exports into OUT/captioner on every run; the second export must be allowed."""
    import vcap.recipes.quickstart as quickstart

    trained, exports = _fake_run(tmp_path, monkeypatch)
    for _ in range(2):
        assert quickstart.quickstart(tmp_path / "qs", progress=False, dense=False)[1]
    assert [kw for _, _, kw in exports] == [{"overwrite": True}] * 2
    assert len(trained) == len(STAGES)  # the second run found every stage finished


def test_dense_trains_stage_3_after_a_stage_0_that_reads_the_event_text(tmp_path, monkeypatch):
    import vcap.recipes.quickstart as quickstart

    trained, exports = _fake_run(tmp_path, monkeypatch)
    reports, met = quickstart.quickstart(tmp_path / "qs", progress=False)  # both tasks by default
    assert met and set(reports) == {"single", "dense"}
    assert [Path(cfg.train.out_dir).name for cfg in trained] == ["text_lm", "projector", "lora", "dense"]
    single, events = trained[0].data.train
    assert single == str(tmp_path / "qs" / "data" / "train.jsonl")
    # stage 0 reads the first multi-event clips' text, as many lines as the single captions'
    # (stage 3 reads all of them: more clips than single-event ones)
    assert events == str(tmp_path / "qs" / "data-dense" / "train-text.jsonl")
    every = (tmp_path / "qs" / "data-dense" / "train.jsonl").read_text().splitlines(keepends=True)
    n_single = quickstart.SYNTHETIC["n_train"]
    assert len(every) == quickstart.DENSE_SYNTHETIC["n_train"] > n_single
    assert Path(events).read_text() == "".join(every[:n_single])
    assert trained[-1].data.train == str(tmp_path / "qs" / "data-dense" / "train.jsonl")
    alone = quickstart.stage_config(quickstart.configs_dir() / quickstart.STAGES[0], tmp_path / "qs")
    assert trained[0].train.epochs * 2 == alone.train.epochs  # both texts (as many lines each) in as many steps
    assert [(Path(run).name, name) for run, name, _ in exports] == [("lora", "captioner"), ("dense", "captioner-dense")]


def test_a_stage_that_starts_over_starts_the_later_stages_over(tmp_path, monkeypatch):
    """Stage 1 and 2 start from stage 0's language model: a new stage 0 leaves them stale."""
    import vcap.recipes.quickstart as quickstart

    trained, _ = _fake_run(tmp_path, monkeypatch)
    quickstart.quickstart(tmp_path / "qs", progress=False, dense=False)
    saved = tmp_path / "qs" / "text_lm" / "config.yaml"
    saved.write_text(saved.read_text(encoding="utf-8").replace("epochs: 2", "epochs: 1"), encoding="utf-8")
    del trained[:]
    quickstart.quickstart(tmp_path / "qs", progress=False, dense=False)
    assert [Path(cfg.train.out_dir).name for cfg in trained] == ["text_lm", "projector", "lora"]
    del trained[:]
    quickstart.quickstart(tmp_path / "qs", progress=False, dense=False)
    assert trained == []  # and then nothing is repeated


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


def test_the_command_runs_both_tasks_in_one_folder_unless_told_no_dense(monkeypatch):
    """`make quickstart` (`vcap quickstart`) trains and scores the single and the dense task in
    runs/quickstart; --no-dense leaves the dense task out (same folder)."""
    import argparse

    import vcap.recipes.quickstart as quickstart

    calls = []
    monkeypatch.setattr(quickstart, "quickstart", lambda out, configs, target, **kw: calls.append((out, kw)) or ({}, True))
    for argv in ([], ["--no-dense"], ["--dense", "--out", "elsewhere"]):
        parser = argparse.ArgumentParser()
        quickstart.add_arguments(parser)
        assert quickstart.run(parser.parse_args(argv)) == 0
    assert [(out, kw["dense"]) for out, kw in calls] == [
        ("runs/quickstart", True), ("runs/quickstart", False), ("elsewhere", True)]
