# vcap: two commands on a fresh machine.
#   make quickstart   create .venv, install, run the offline end-to-end recipe (both tasks)
#   make test         create .venv, install, run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export GRADIO_ANALYTICS_ENABLED ?= False
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-gpu quickstart screenshots chromium clean

install: $(STAMP)

# torch first, pinned (pip takes the local CPU wheel); then the project and its dev extras
# under constraints.txt, which pins torch and the matching torchvision. Editable in setuptools'
# compat mode (the source folder on sys.path): its default finder is asked only after the current
# directory, so Python started in a run folder took its `projector/` for the package.
$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]" --config-settings editable_mode=compat
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

# the GPU tests (marked `gpu`; they skip without CUDA); on a CUDA machine install a CUDA torch first
test-gpu: install
	$(BIN)/python -m pytest -q -m gpu -s

# runs/quickstart: single captions and dense (timed) captions, each against its targets (exit 1 on
# a miss); `vcap quickstart --no-dense` runs the single-caption task alone
quickstart: install
	$(BIN)/vcap quickstart

# The README's pictures of the demo, taken in headless Chromium from the quickstart's captioner;
# a picture whose caption is not the clip's reference caption is not written (exit 1).
screenshots: install chromium
	test -f runs/quickstart/captioner/captioner.json || $(MAKE) quickstart
	$(BIN)/python -m demo.screenshots --run runs/quickstart --out docs

# Headless Chromium for the browser test of the demo (Debian's packages), with a Korean font so
# the page's Hangul renders in screenshots.
chromium:
	command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi nanum || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-nanum >/dev/null; }

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
