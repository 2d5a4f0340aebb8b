# Every target does its own set-up: the first run creates .venv and installs the pinned deps.
# Commands run from the repository root, so the packages import without an install step.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.setup-done

.PHONY: setup test bench clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

test: $(SETUP_STAMP)
	$(PY) -m pytest tests

bench: $(SETUP_STAMP)
	@echo "make bench: not built yet (the benchmark suite lands with the benchmark issue)."

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .benchmarks
