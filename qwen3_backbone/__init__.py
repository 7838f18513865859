"""qwen3_backbone: a Qwen3 language model (dense and MoE) written from scratch.

Usable on its own: config presets and ``Qwen3Config.from_hf``, the model, a preallocated KV cache,
batched generation, safetensors loading/saving in the Hugging Face format, the Qwen3 tokenizer,
the official chat template and the hybrid-thinking helpers. It knows nothing about video.
"""

from .cache import KVCache
from .config import PRESETS, Qwen3Config
from .generate import SAMPLING_PRESETS, SamplingConfig, generate
from .model import Qwen3ForCausalLM, pack_for_cpu_inference, unpack_weights
from .weights import CheckpointError, load_pretrained, save_pretrained

__all__ = [
    "PRESETS",
    "SAMPLING_PRESETS",
    "SamplingConfig",
    "CheckpointError",
    "KVCache",
    "Qwen3Config",
    "Qwen3ForCausalLM",
    "generate",
    "load_pretrained",
    "pack_for_cpu_inference",
    "save_pretrained",
    "unpack_weights",
]
