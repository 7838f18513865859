"""vcap: video captioning with a frozen open_clip encoder, a trained projector and Qwen3.

Importing vcap first makes torchvision importable on a CPU-only torch (see
``vcap/torchvision_fix.py``); nothing else heavy happens at import time.
"""

from . import torchvision_fix

torchvision_fix.apply()

__version__ = "0.1.0"
