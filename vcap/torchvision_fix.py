"""Make ``import torchvision`` work on a CPU-only torch (the one place vcap handles this).

Why: the torchvision 0.28.0 wheel on PyPI is a CUDA build. On a CPU torch its compiled library
(``torchvision/_C.so``) cannot be loaded (it needs ``libc10_cuda.so``); torchvision swallows that
failure, and its ``_meta_registrations.py`` then raises
``RuntimeError: operator torchvision::nms does not exist`` at import time. Everything that imports
torchvision breaks with it: open_clip, timm, peft and transformers' model classes.

What: before torchvision is first imported, try to load its compiled library exactly as
torchvision would. Only if that fails, declare the two operator schemas its meta registrations
look up (``torchvision::nms`` and ``torchvision::qnms``). After that torchvision, its transforms,
timm, open_clip, peft and transformers import and work; only torchvision's compiled kernels (nms,
the jpeg/png codecs) stay unavailable, and vcap uses none of them. Where the library loads (a
torch build that matches the wheel, e.g. CUDA), nothing is changed.

``vcap/__init__.py`` calls :func:`apply` first thing, so every entry point (the library, the
``vcap`` CLI, the tests, the demo and the benchmarks) is covered.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

import torch

# Keeps the schema definitions alive: torch drops them when the Library object is collected.
_LIBRARY: torch.library.Library | None = None


def apply() -> bool:
    """Declare torchvision's missing operator schemas if its compiled ops cannot load.

    Returns True when the schemas were declared (a CPU torch with a CUDA torchvision wheel),
    False when nothing was needed: torchvision absent, already imported, or loading fine.
    """
    global _LIBRARY
    if _LIBRARY is not None or "torchvision" in sys.modules:
        return _LIBRARY is not None
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    libraries = glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.so")) + glob.glob(
        os.path.join(spec.submodule_search_locations[0], "_C*.pyd")
    )
    if not libraries:
        return False
    try:
        torch.ops.load_library(libraries[0])
        return False
    except (OSError, RuntimeError):
        pass
    library = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY = library
    return True
