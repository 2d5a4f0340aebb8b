# Every target does its own set-up: the first run creates .venv and installs the pinned deps.
# Commands run from the repository root, so the packages import without an install step.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.setup-done

.PHONY: setup test bench bench-compare train export onnx clean

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

# `make export onnx` (or either word alone): export the default run's checkpoint, training it first
# if it is absent, then prove the file with onnxruntime parity.
ONNX_FILE := $(TRAIN_DIR)/lenet.onnx
PARITY_REPORT := $(TRAIN_DIR)/parity.json

export: $(TRAIN_DIR)/checkpoint.pt | $(SETUP_STAMP)
	$(PY) -m export onnx --checkpoint $(TRAIN_DIR)/checkpoint.pt --out $(ONNX_FILE)
	$(PY) -m export parity $(ONNX_FILE) --checkpoint $(TRAIN_DIR)/checkpoint.pt --report $(PARITY_REPORT)
	@echo "ONNX file:     $(ONNX_FILE)"
	@echo "parity report: $(PARITY_REPORT)"

onnx: export
	@:

# The main job: training-step, inference and per-op benchmarks; writes bench/results/<device>.json,
# .md and .png and ends by printing the report.
bench: $(SETUP_STAMP)
	$(PY) -m bench run

# Regression gate: the suite against the last saved `make bench` run; fails past BENCH_FAIL.
BENCH_FAIL ?= median:10%
bench-compare: $(SETUP_STAMP)
	$(PY) -m bench compare --fail $(BENCH_FAIL)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .benchmarks
