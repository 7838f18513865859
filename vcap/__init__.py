"""vcap: video captioning with a frozen open_clip encoder, a trained projector and Qwen3.

The public API (every entry point uses it)::

    import vcap
    captioner = vcap.load_captioner("runs/quickstart/captioner")      # a captioner folder
    results = captioner.caption(["clip.mp4"], lang="ko")              # -> list[CaptionResult]
    print(results[0].caption)

Importing vcap first makes torchvision importable on a CPU-only torch (see
``vcap/torchvision_fix.py``); the rest is imported on first use, so ``import vcap`` stays light.
"""

from typing import TYPE_CHECKING, Any

from . import torchvision_fix

torchvision_fix.apply()

__version__ = "0.1.0"

_LAZY = {
    "load_captioner": "vcap.builder",
    "save_captioner": "vcap.builder",
    "build_captioner": "vcap.builder",
    "VideoCaptioner": "vcap.model",
    "CaptionResult": "vcap.model",
    "CaptionEvent": "vcap.model",
    "GenerationOptions": "vcap.generation",
    "VideoProcessor": "vcap.processor",
    "CaptionerConfig": "vcap.config",
    "FramesConfig": "vcap.config",
    "VisionConfig": "vcap.vision",
    "VisionEncoder": "vcap.vision",
    "read_frames": "vcap.video",
    "Frames": "vcap.video",
    "VideoReadError": "vcap.video",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from .config import CaptionerConfig, FramesConfig
    from .builder import build_captioner, load_captioner, save_captioner
    from .generation import GenerationOptions
    from .model import CaptionEvent, CaptionResult, VideoCaptioner
    from .processor import VideoProcessor
    from .video import Frames, VideoReadError, read_frames
    from .vision import VisionConfig, VisionEncoder


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        return getattr(module, name)
    raise AttributeError(f"module 'vcap' has no attribute {name!r}")
