# Every target does its own set-up: the first run creates .venv and installs the pinned deps.
# Commands run from the repository root, so the packages import without an install step.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.setup-done
# The second test stage: the GPU image's triton 3.6 through the interpreter, in its own venv. That
# venv holds only the pins of requirements-triton36.txt; a .pth file puts .venv's packages after
# them, so every other pin is requirements.txt's, with no second install of torch.
VENV36 := .venv-triton36
PY36 := $(VENV36)/bin/python
SETUP36_STAMP := $(VENV36)/.setup-done

.PHONY: setup lock test test-triton39 test-triton39-kernels test-torch-only test-triton36 bench bench-compare bench-distributed gpu-check kernels train export onnx clean

TRAIN_DIR := runs/default

setup: $(SETUP_STAMP)

# requirements.txt names what the project needs; requirements-lock.txt (`make lock` writes it from
# requirements.txt) every package that makes, at its exact version, in two groups: torch and triton
# with what they need, then the rest. pip installs one package at a time, so the two groups install
# side by side, without resolving (--no-deps), then pip check proves nothing is missing. pip also
# byte-compiles on one core; compile_dir does it on two (and, as pip does, skips files it can't
# compile, such as torch's Python 3.12-only ones). It leaves out what no command here imports: the
# packages' own test suites, pip and setuptools (a fifth of the files; 21 -> 16 s on 2 cores).
LOCK := requirements-lock.txt
LOCK_SPLIT := ^\# the rest
$(SETUP_STAMP): requirements.txt $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	sed '/$(LOCK_SPLIT)/,$$d' $(LOCK) > $(VENV)/lock-torch.txt && sed -n '/$(LOCK_SPLIT)/,$$p' $(LOCK) > $(VENV)/lock-rest.txt
	$(PY) -m pip install --quiet --no-compile --no-deps -r $(VENV)/lock-torch.txt & \
	    $(PY) -m pip install --quiet --no-compile --no-deps -r $(VENV)/lock-rest.txt; rest=$$?; wait $$! && [ $$rest = 0 ]
	$(PY) -m pip check
	$(PY) -c 'import compileall, re, sysconfig; compileall.compile_dir(sysconfig.get_paths()["purelib"], quiet=2, workers=2, \
	    rx=re.compile(r"/(tests|pip|setuptools|pkg_resources|_distutils_hack)/"))'
	touch $@

# Rewrites requirements-lock.txt: requirements.txt resolved in a scratch venv, torch and triton first.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet $$(grep -E '^(torch|triton)==' requirements.txt)
	.venv-lock/bin/pip freeze --all --exclude pip | sed -E 's/\+[A-Za-z0-9.]+$$//' > .venv-lock/torch.txt
	.venv-lock/bin/pip install --quiet -r requirements.txt
	.venv-lock/bin/pip freeze --all --exclude pip | sed -E 's/\+[A-Za-z0-9.]+$$//' > .venv-lock/all.txt
	{ echo "# Written by make lock from requirements.txt: every package of .venv at its exact version."; \
	  echo "# torch, triton and what they need:"; cat .venv-lock/torch.txt; \
	  echo "# the rest (make setup installs the two groups side by side):"; \
	  grep -vxFf .venv-lock/torch.txt .venv-lock/all.txt; } > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)
	rm -rf .venv-lock

$(SETUP36_STAMP): requirements-triton36.txt
	$(PYTHON) -m venv $(VENV36)
	$(PY36) -m pip install --quiet --no-deps -r requirements-triton36.txt
	$(PY36) -c 'import pathlib, sys, sysconfig; own = pathlib.Path(sysconfig.get_paths()["purelib"]); \
	    base = pathlib.Path("$(VENV)").resolve() / own.relative_to(sys.prefix); \
	    (own / "lenet-triton-base-venv.pth").write_text(f"{base}\n")'
	touch $@

# Three pytest processes side by side, after both set-ups (also side by side), then each one's
# time and the total (tests/run_stages.py): triton 3.9's tests that run Triton kernels; the tests
# marked torch_only (torch, onnx, the CLIs: the same on every triton version), on their own so that
# neither 3.9 process holds up the end; and triton 3.6's tests that run Triton kernels.
test:
	@started=$$(date +%s.%N); $(MAKE) --no-print-directory -j2 $(SETUP_STAMP) $(SETUP36_STAMP) && \
	$(PY) tests/run_stages.py --started $$started --make "$(MAKE)" test-triton39-kernels test-torch-only test-triton36

# Each stage tells the tests which triton its venv must hold (tests/conftest.py checks it), read from
# the pin that installed it, so that a path mistake cannot run one triton twice and pass.
TRITON39 := $(shell sed -n 's/^triton==//p' requirements.txt)
TRITON36 := $(shell sed -n 's/^triton==//p' requirements-triton36.txt)
PYTEST39 := LENET_TRITON_EXPECTED_TRITON=$(TRITON39) $(PY) -m pytest
PYTEST36 := LENET_TRITON_EXPECTED_TRITON=$(TRITON36) $(PY36) -m pytest

# The whole suite on triton 3.9 in one process (what make test runs in two).
test-triton39: $(SETUP_STAMP)
	$(PYTEST39) tests

test-triton39-kernels: $(SETUP_STAMP)
	$(PYTEST39) tests -m "not torch_only"

test-torch-only: $(SETUP_STAMP)
	$(PYTEST39) tests -m torch_only

test-triton36: $(SETUP36_STAMP) $(SETUP_STAMP)
	$(PYTEST36) tests -m "not torch_only"

# The default training run: embedded digits on the fast path (the whole-network kernels and
# TrainStep); writes $(TRAIN_DIR)/checkpoint.pt, metrics.json and curves.png. TRAIN_ARGS adds options,
# which win over these, e.g. make train TRAIN_ARGS="--epochs 2", or TRAIN_ARGS="--backend triton
# --no-fused-step" for the per-op kernels with torch's optimizer.
TRAIN_PATH := --backend fused --fused-step
train: $(SETUP_STAMP)
	$(PY) -m lenet_triton.train --out-dir $(TRAIN_DIR) $(TRAIN_PATH) $(TRAIN_ARGS)

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

# The training step across 2 ranks of this machine (gloo; NCCL with a GPU each) beside one process,
# with the collective's share: bench/results/<device>-distributed.md and .json. DIST_ARGS: e.g. "--ranks 4".
bench-distributed: $(SETUP_STAMP)
	$(PY) -m bench distributed $(DIST_ARGS)

# The kernel report, bench/results/kernels-sm90.md and .json: every launch of the public API bound
# and compiled for an H100 on this CPU (one rehearsal process per core), with each kernel's
# registers, spills, shared memory, occupancy, waves and floor. KERNELS_ARGS="--update" only merges
# the times of the newest gpu-check run.
kernels: $(SETUP_STAMP)
	$(PY) -m bench kernels $(KERNELS_ARGS)

# The whole GPU check in one device call (at most 10 minutes): versions, the test suite on cuda, the
# benchmark grid, and digits training with ONNX parity, every file into $OUT (else gpu-check-out/).
# Runs on the GPU image's own python3, no venv and no set-up. FAST=1: a smoke subset for a re-check
# after a fix (about 2 minutes).
GPU_CHECK_OUT ?= $(or $(OUT),gpu-check-out)
gpu-check:
	$(PYTHON) -m bench gpu-check --out $(GPU_CHECK_OUT) $(if $(FAST),--fast)

clean:
	rm -rf $(VENV) $(VENV36) .venv-lock .pytest_cache .hypothesis .benchmarks
