# Every target does its own set-up: the first run creates .venv and installs the pinned deps.
# Commands run from the repository root, so the packages import without an install step.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.setup-done

.PHONY: setup test bench train clean

TRAIN_DIR := runs/default

setup: $(SETUP_STAMP)

$(SETUP_STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

test: $(SETUP_STAMP)
	$(PY) -m pytest tests

# The default training run: embedded digits, Triton backend; writes $(TRAIN_DIR)/checkpoint.pt,
# metrics.json and curves.png. TRAIN_ARGS adds options, e.g. make train TRAIN_ARGS="--epochs 2".
train: $(SETUP_STAMP)
	$(PY) -m lenet_triton.train --out-dir $(TRAIN_DIR) $(TRAIN_ARGS)

$(TRAIN_DIR)/checkpoint.pt: | $(SETUP_STAMP)
	$(MAKE) train

bench: $(SETUP_STAMP)
	@echo "make bench: not built yet (the benchmark suite lands with the benchmark issue)."

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .benchmarks
