"""Entry points import cleanly on a CPU-only machine, and imports stay light."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_python(code: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd)


def compiled_torchvision_loads() -> bool:
    """Whether torchvision's own compiled library loads here (decided without vcap's code)."""
    probe = run_python(
        "import glob, importlib.util, os, torch\n"
        "spec = importlib.util.find_spec('torchvision')\n"
        "libs = glob.glob(os.path.join(spec.submodule_search_locations[0], '_C*.so'))\n"
        "torch.ops.load_library(libs[0])\n"
    )
    return probe.returncode == 0


def test_vcap_makes_torchvision_and_its_dependents_importable():
    result = run_python(
        "import vcap, torch\n"
        "import torchvision, torchvision.transforms.v2, timm, open_clip, peft\n"
        "from transformers import Qwen3ForCausalLM\n"
        "m, _, preprocess = open_clip.create_model_and_transforms('ViT-B-32', pretrained=None)\n"
        "print('ok', torchvision.__version__)\n"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok")


def test_a_run_folder_does_not_shadow_vcaps_packages(tmp_path):
    """A run folder holds a `projector/` folder (stage 1's output; a checkpoint's weights), and
    Python started there (a notebook, `python -c`) puts it first on sys.path. vcap's packages must
    still be the ones imported: `make install` installs in setuptools' compat editable mode, whose
    path entry finds the regular packages; its default finder came after the folder."""
    for name in ("projector", "qwen3_backbone", "vcap"):
        (tmp_path / name).mkdir()
    result = run_python("import vcap.builder, projector; print('ok', projector.__file__)", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stderr[-2000:]
    assert str(tmp_path) not in result.stdout  # the package's own __init__.py, not the folder


def test_the_fix_acts_only_when_the_compiled_ops_cannot_load():
    needed = not compiled_torchvision_loads()
    result = run_python("import vcap.torchvision_fix as f, sys; print(f.apply())")
    # vcap/__init__ already applied it once, so report its recorded decision
    decided = run_python("import vcap.torchvision_fix as f; print(f._LIBRARY is not None)")
    assert decided.stdout.strip() == str(needed), decided.stderr
    assert result.returncode == 0
    if needed:  # and without vcap, the breakage it fixes is real
        bare = run_python("import torchvision")
        assert bare.returncode != 0 and "torchvision::nms does not exist" in bare.stderr


HEAVY = ["torchvision", "transformers", "open_clip", "decord", "av", "gradio", "peft", "bitsandbytes", "accelerate"]


@pytest.mark.parametrize("package", ["qwen3_backbone", "vcap", "vcap.cli"])
def test_importing_a_package_loads_no_heavy_dependency(package):
    result = run_python(f"import sys, {package}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
