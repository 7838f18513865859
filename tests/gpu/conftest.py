"""GPU tests: run by `make test-gpu` on a machine with CUDA; skipped (with a reason) elsewhere."""

from ..qwen3_backbone.conftest import hf_checkpoints  # noqa: F401  (transformers checkpoints, as a fixture)
from ..vcap.conftest import data  # noqa: F401  (a small synthetic dataset, as a fixture)
