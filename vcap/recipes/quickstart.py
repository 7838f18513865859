"""``vcap quickstart``: the whole recipe end to end, offline, at a tiny scale (``make quickstart``).

1. writes synthetic train/val/test clips (moving shapes; captions in Korean and English; half of
   the test clips show attribute combinations training never shows);
2. pre-trains the small open_clip image tower that stands in for a pretrained CLIP on the
   training clips and their caption words (vcap.recipes.vision_pretrain), to the file the stage configs
   name as ``model.vision_weights``; it stays frozen from then on;
3. stage 0: pre-trains a tiny Qwen3 language model with the real Qwen3 tokenizer on the caption
   text (quickstart-0-text-lm.yaml), standing in for a pretrained Qwen3;
4. stage 1: trains the projector (quickstart-1-projector.yaml);
5. stage 2: trains LoRA adapters and the projector (quickstart-2-lora.yaml);
6. merges and exports the captioner to OUT/captioner, captions the held-out test clips in both
   languages and prints BLEU-4 / ROUGE-L / CIDEr-D and the attribute accuracy (the share of
   captions that state every attribute of the clip correctly);
7. the dense-caption task (``--no-dense`` leaves it out, for the single-caption task alone in
   about 5 minutes): multi-event clips (2-3 events in 6-12 s, ``vcap synth --events``) are
   written too, stage 0 also reads the event text of the first of them (as many as the
   single-event training clips), stage 3 (quickstart-3-dense.yaml) trains LoRA and the projector
   from stage 2 on all of them, each event's caption seeing only its own frames and each time
   only the frames after the start before it (``event_windows``, vcap/windows.py), and the
   exported OUT/captioner-dense lists the events of the held-out clips, scored by temporal IoU
   (F1 at tIoU 0.5 and the matched events' attribute accuracy).

``--timestamps none`` runs every stage that reads frames without their times in the prompt (the
ablation).

Exit code 0 when the attribute accuracy (and unless --no-dense, F1@0.5 and the event attribute
accuracy) reaches --target in both languages (overall and on the unseen combinations), 1 when it
does not, 2 on a usage error. A rerun resumes: finished stages are not repeated and cached
vision features are reused (a re-trained image tower, or a stage that starts over, starts the
stages after it over).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

STAGES = ("quickstart-0-text-lm.yaml", "quickstart-1-projector.yaml", "quickstart-2-lora.yaml")
DENSE_STAGE = "quickstart-3-dense.yaml"
DEFAULT_OUT = "runs/quickstart"
SYNTHETIC = dict(n_train=400, n_val=24, n_test=48, size=64, num_frames=16, fps=8)
DENSE_SYNTHETIC = dict(n_train=1440, n_val=24, n_test=48, size=64, fps=4, events=(2, 3), seconds=(6.0, 12.0))
VISION_PRETRAIN = dict(steps=300, batch_size=64, lr=2e-3, frames_per_clip=16)  # about a minute on 2 cores


def configs_dir() -> Path:
    """The stage configs shipped with the package (``vcap/recipes/configs``, package data)."""
    from importlib.resources import files

    return Path(str(files("vcap.recipes") / "configs"))


def stage_config(path: Path, out: Path, timestamps: str | None = None):
    """A quickstart stage config with its ``runs/quickstart`` paths moved under ``out`` (and with
    ``timestamps``, the ``model.frames.timestamps`` of a stage that reads frames set to it)."""
    from ..config import RunConfig
    from ..config_io import config_from_dict, read_config_file

    def move(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, str) and (value == DEFAULT_OUT or value.startswith(DEFAULT_OUT + "/")):
            return str(out) + value[len(DEFAULT_OUT):]
        return value

    raw = move(read_config_file(path))
    if timestamps is not None and not raw.get("data", {}).get("text_only"):
        frames = raw.setdefault("model", {}).setdefault("frames", {})
        frames["timestamps"] = timestamps
        frames["end_label"] = frames.get("end_label", False) and timestamps == "text"  # a label among labels
    return config_from_dict(RunConfig, raw, where=str(path))


def pretrain_tower(stage_cfgs: list, train_manifest: Path, say=print, progress: bool = True) -> bool:
    """Pre-train the stand-in image tower to the stages' ``model.vision_weights`` unless it is there;
    returns whether it trained. Stages that read the features of an older tower then start over."""
    from .vision_pretrain import VisionPretrainConfig, pretrain_vision

    model = stage_cfgs[-1].model
    if not model.vision_weights or Path(model.vision_weights).exists():
        return False
    say(f"stand-in image tower: caption-word pre-training on the training clips -> {model.vision_weights}")
    result = pretrain_vision(model, train_manifest, model.vision_weights, VisionPretrainConfig(**VISION_PRETRAIN),
                             progress=progress)
    say(f"  loss {result['first_loss']:.3f} -> {result['last_loss']:.3f}")
    for cfg in stage_cfgs:
        if not cfg.data.text_only and Path(cfg.train.out_dir).exists():
            shutil.rmtree(cfg.train.out_dir)
    return True


def quickstart(out: str | Path = DEFAULT_OUT, configs: str | Path | None = None, target: float = 0.9, *,
               progress: bool = True, dense: bool = True, timestamps: str | None = None) -> tuple[dict[str, Any], bool]:
    """Run every step; returns ({"single": its evaluation report, and with ``dense`` (the default)
    "dense": the dense task's}, whether every target is met)."""
    from dataclasses import replace

    from ..builder import load_captioner
    from ..config_io import absolute_paths
    from ..evaluate import evaluate, format_report
    from ..export import export
    from ..outputs import write_text
    from ..train import dump_config, train
    from .synthetic import judge_attributes, make_dataset, make_dense_dataset

    out = Path(out)
    folder = Path(configs) if configs else configs_dir()
    names = STAGES + ((DENSE_STAGE,) if dense else ())
    missing = [name for name in names if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing {', '.join(missing)} (pass --configs DIR)")
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", flush=True)

    say(f"synthetic clips -> {out / 'data'}")
    manifests = make_dataset(out / "data", seed=0, progress=progress, **SYNTHETIC)
    stage_cfgs = [stage_config(folder / name, out, timestamps) for name in names]
    if dense:
        say(f"synthetic multi-event clips -> {out / 'data-dense'}")
        dense_manifests = make_dense_dataset(out / "data-dense", seed=0, progress=progress, **DENSE_SYNTHETIC)
        # stage 0 also learns the events' text (digits, the m:ss.s layout) in as many steps as
        # without it: half the epochs over both texts, the events' cut to as many lines as the
        # single captions' (stage 3 reads every multi-event clip)
        text_lm = stage_cfgs[0]
        lines = len(Path(manifests["train"]).read_text(encoding="utf-8").splitlines())
        events_text = write_text(out / "data-dense" / "train-text.jsonl", "".join(
            Path(dense_manifests["train"]).read_text(encoding="utf-8").splitlines(keepends=True)[:lines]))
        stage_cfgs[0] = replace(
            text_lm, data=replace(text_lm.data, train=[text_lm.data.train, str(events_text)]),
            train=replace(text_lm.train, epochs=max(1, text_lm.train.epochs // 2)))
    pretrain_tower(stage_cfgs, manifests["train"], say, progress)
    over = False  # once a stage starts over, every stage after it, which started from it, does too
    for name, cfg in zip(names, stage_cfgs):
        say(f"{name}: stage {cfg.train.stage} -> {cfg.train.out_dir}")
        saved = Path(cfg.train.out_dir) / "config.yaml"
        changed = saved.exists() and saved.read_text(encoding="utf-8") != dump_config(absolute_paths(cfg))
        if Path(cfg.train.out_dir).exists() and (changed or over):
            say(f"  {'this stage changed' if changed else 'an earlier stage started over'} since the last run: "
                f"starting {cfg.train.out_dir} over")
            shutil.rmtree(cfg.train.out_dir)
        over = over or not saved.exists()
        train(cfg, resume=True, progress=progress)  # a finished stage is not repeated
        losses = [json.loads(line) for line in (Path(cfg.train.out_dir) / "metrics.jsonl").read_text().splitlines()]
        train_loss = [m["loss"] for m in losses if "loss" in m]
        val_loss = [m["val_loss"] for m in losses if "val_loss" in m]
        say(f"  loss {train_loss[0]:.3f} -> {train_loss[-1]:.3f}" + (f", validation {val_loss[-1]:.3f}" if val_loss else ""))

    reports, met = {}, True
    tasks = [("single", stage_cfgs[len(STAGES) - 1], "captioner", manifests["test"], "test_captions.jsonl")]
    if dense:
        tasks.append(("dense", stage_cfgs[-1], "captioner-dense", dense_manifests["test"], "test_dense_captions.jsonl"))
    for task, cfg, name, test, rows_file in tasks:
        captioner_dir = export(cfg.train.out_dir, out / name, overwrite=True)  # the quickstart's own folder
        say(f"exported the merged captioner -> {captioner_dir}")
        report = evaluate(load_captioner(captioner_dir), test, out / rows_file, batch_size=16, progress=progress,
                          judge=judge_attributes)
        say(f"held-out test clips ({'dense captions' if task == 'dense' else 'one caption each'}), greedy:")
        print(format_report(report))
        rows = [json.loads(line) for line in (out / rows_file).read_text(encoding="utf-8").splitlines()]
        ok = [r for r in rows if r["status"] == "ok"]
        for row in ok[:2] + ok[-2:]:  # a dense caption's lines stay aligned under its first
            caption = row["caption"].replace("\n", "\n" + " " * 7)
            reference = row["references"][0].replace("\n", "\n" + " " * 18)
            print(f"  [{row['lang']}] {caption}\n       reference: {reference}")
        task_met, wanted = _targets_met(report, task, target)
        say(f"{wanted} target {target:.0%} in both languages (incl. unseen combinations): "
            + ("met" if task_met else "MISSED"))
        reports[task], met = report, met and task_met
    first = out / "captioner"
    print(f"\nNext:\n  vcap caption {first} {out / 'data' / 'test'} --out captions.jsonl   # caption a folder\n"
          + (f"  vcap caption {out / 'captioner-dense'} {out / 'data-dense' / 'test'} --dense --out events.jsonl\n"
             if dense else "")
          + f"  vcap demo {first}                                                 # the web demo\n"
          + (f"  vcap demo {out / 'captioner-dense'}                                           # its Dense captions mode\n"
             if dense else ""), end="")
    return reports, met


def _targets_met(report: dict[str, Any], task: str, target: float) -> tuple[bool, str]:
    """Whether ``report`` reaches ``target`` in both languages, overall and on the unseen
    combinations, and what was asked (single: attribute accuracy; dense: F1@0.5 and event
    attribute accuracy)."""
    if task == "single":
        return all(report.get(lang, {}).get(key, 0.0) >= target for lang in ("ko", "en")
                   for key in ("attribute_accuracy", "attribute_accuracy_unseen")), "attribute accuracy"
    wanted = (("dense", "F1@0.5"), ("dense_unseen", "F1@0.5"),  # dense_unseen: the clips with an unseen event
              ("dense", "event_attribute_accuracy"), ("dense", "event_attribute_accuracy_unseen"))  # the unseen events
    return all(report.get(lang, {}).get(part, {}).get(key, 0.0) >= target for lang in ("ko", "en")
               for part, key in wanted), "dense F1@0.5 and event attribute accuracy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"working folder (default {DEFAULT_OUT})")
    parser.add_argument("--configs", help="folder with the quickstart-*.yaml stage configs (default: the ones "
                                          "shipped in vcap/recipes/configs)")
    parser.add_argument("--target", type=float, default=0.9,
                        help="attribute accuracy to reach, and for the dense task F1@0.5 and event attribute "
                             "accuracy (default 0.9)")
    parser.add_argument("--dense", action=argparse.BooleanOptionalAction, default=True,
                        help="also train and score dense captions on multi-event clips (stage 3, the default); "
                             "--no-dense runs the single-caption task alone (about 5 of the 14-15 minutes on 2 cores)")
    parser.add_argument("--timestamps", choices=["text", "none"],
                        help="frames.timestamps of every stage that reads frames (default: the configs' 'text'); "
                             "'none' is the ablation")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    _, met = quickstart(args.out, args.configs, args.target, progress=not args.quiet, dense=args.dense,
                        timestamps=args.timestamps)
    return 0 if met else 1
