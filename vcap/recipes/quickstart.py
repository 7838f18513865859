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
   captions that state every attribute of the clip correctly).

Exit code 0 when the attribute accuracy reaches --target in both languages (overall and on the
unseen combinations), 1 when it does not, 2 on a usage error. A rerun resumes: finished stages
are not repeated and cached vision features are reused (a re-trained image tower starts the
stages that read its features over).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

STAGES = ("quickstart-0-text-lm.yaml", "quickstart-1-projector.yaml", "quickstart-2-lora.yaml")
DEFAULT_OUT = "runs/quickstart"
SYNTHETIC = dict(n_train=400, n_val=24, n_test=48, size=64, num_frames=16, fps=8)
VISION_PRETRAIN = dict(steps=300, batch_size=64, lr=2e-3, frames_per_clip=16)  # about a minute on 2 cores


def configs_dir() -> Path:
    """The stage configs shipped with the package (``vcap/recipes/configs``, package data)."""
    from importlib.resources import files

    return Path(str(files("vcap.recipes") / "configs"))


def stage_config(path: Path, out: Path):
    """A quickstart stage config with its ``runs/quickstart`` paths moved under ``out``."""
    from ..config import RunConfig
    from ..config_io import config_from_dict, read_config_file

    def move(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, str) and (value == DEFAULT_OUT or value.startswith(DEFAULT_OUT + "/")):
            return str(out) + value[len(DEFAULT_OUT):]
        return value

    return config_from_dict(RunConfig, move(read_config_file(path)), where=str(path))


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


def quickstart(out: str | Path = DEFAULT_OUT, configs: str | Path | None = None, target: float = 0.9,
               progress: bool = True) -> tuple[dict[str, Any], bool]:
    """Run every step; returns (evaluation report, whether the accuracy target is met)."""
    from ..evaluate import evaluate, format_report
    from ..export import export
    from ..builder import load_captioner
    from .synthetic import judge_attributes, make_dataset
    from ..config_io import absolute_paths
    from ..train import dump_config, train

    out = Path(out)
    folder = Path(configs) if configs else configs_dir()
    missing = [name for name in STAGES if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing {', '.join(missing)} (pass --configs DIR)")
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", flush=True)

    say(f"synthetic clips -> {out / 'data'}")
    manifests = make_dataset(out / "data", seed=0, progress=progress, **SYNTHETIC)
    stage_cfgs = [stage_config(folder / name, out) for name in STAGES]
    pretrain_tower(stage_cfgs, manifests["train"], say, progress)
    for name, cfg in zip(STAGES, stage_cfgs):
        say(f"{name}: stage {cfg.train.stage} -> {cfg.train.out_dir}")
        saved = Path(cfg.train.out_dir) / "config.yaml"
        if saved.exists() and saved.read_text(encoding="utf-8") != dump_config(absolute_paths(cfg)):
            say(f"  {name} changed since the last run: starting {cfg.train.out_dir} over")
            shutil.rmtree(cfg.train.out_dir)
        train(cfg, resume=True, progress=progress)  # a finished stage is not repeated
        losses = [json.loads(line) for line in (Path(cfg.train.out_dir) / "metrics.jsonl").read_text().splitlines()]
        train_loss = [m["loss"] for m in losses if "loss" in m]
        val_loss = [m["val_loss"] for m in losses if "val_loss" in m]
        say(f"  loss {train_loss[0]:.3f} -> {train_loss[-1]:.3f}" + (f", validation {val_loss[-1]:.3f}" if val_loss else ""))
    captioner_dir = export(cfg.train.out_dir, out / "captioner", overwrite=True)  # the quickstart's own folder
    say(f"exported the merged captioner -> {captioner_dir}")
    captioner = load_captioner(captioner_dir)
    report = evaluate(captioner, manifests["test"], out / "test_captions.jsonl", batch_size=16, progress=progress,
                      judge=judge_attributes)
    say("held-out test clips, greedy captions:")
    print(format_report(report))
    rows = [json.loads(line) for line in (out / "test_captions.jsonl").read_text(encoding="utf-8").splitlines()]
    for row in [r for r in rows if r["status"] == "ok"][:2] + [r for r in rows if r["status"] == "ok"][-2:]:
        print(f"  [{row['lang']}] {row['caption']}\n       reference: {row['references'][0]}")
    met = all(report.get(lang, {}).get(key, 0.0) >= target
              for lang in ("ko", "en") for key in ("attribute_accuracy", "attribute_accuracy_unseen"))
    say(f"attribute accuracy target {target:.0%} in both languages (incl. unseen combinations): "
        + ("met" if met else "MISSED"))
    print(f"\nNext:\n  vcap caption {captioner_dir} {out / 'data' / 'test'} --out captions.jsonl   # caption a folder\n"
          f"  vcap demo {captioner_dir}                                                 # the web demo")
    return report, met


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"working folder (default {DEFAULT_OUT})")
    parser.add_argument("--configs", help="folder with the quickstart-*.yaml stage configs (default: the checkout's configs/)")
    parser.add_argument("--target", type=float, default=0.9, help="attribute accuracy to reach (default 0.9)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    _, met = quickstart(args.out, args.configs, args.target, progress=not args.quiet)
    return 0 if met else 1
