"""`make setup` installs requirements-lock.txt (two groups side by side, without resolving): the
lock must hold every pin of requirements.txt, each package once, and the line that splits it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import triton

ROOT = Path(__file__).resolve().parents[1]
# The Makefile's LOCK_SPLIT: the line that starts the second group.
SPLIT = "# the rest"

pytestmark = pytest.mark.torch_only


def _pins(lines) -> list:
    """(normalized name, version) of each `name==version` line."""
    pins = []
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins.append((re.sub(r"[-_.]+", "-", name).lower(), version))
    return pins


def test_the_lock_holds_every_pin_of_requirements_txt_once():
    lock = (ROOT / "requirements-lock.txt").read_text().splitlines()
    names = [name for name, _ in _pins(lock)]
    assert len(names) == len(set(names)), f"listed twice: {sorted({n for n in names if names.count(n) > 1})}"
    locked = dict(_pins(lock))
    wanted = _pins((ROOT / "requirements.txt").read_text().splitlines())
    differ = {name: (version, locked.get(name)) for name, version in wanted if locked.get(name) != version}
    assert not differ, f"pins of requirements.txt that the lock lacks or pins otherwise (wanted, locked): {differ}; " \
                       "make lock rewrites it"
    splits = [i for i, line in enumerate(lock) if line.startswith(SPLIT)]
    assert len(splits) == 1, f"the lock needs one line starting {SPLIT!r}, where the Makefile splits it in two"
    assert {"torch", "triton"} <= {name for name, _ in _pins(lock[:splits[0]])}, "torch and triton go first"


def test_the_makefile_splits_the_lock_where_the_lock_says():
    assert f"LOCK_SPLIT := ^\\{SPLIT}" in (ROOT / "Makefile").read_text()


def test_each_stage_refuses_a_triton_other_than_its_pin():
    """tests/conftest.py stops a stage whose venv holds another triton than the Makefile said."""
    env = dict(os.environ, LENET_TRITON_EXPECTED_TRITON="0.0.1")
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "tests/test_setup.py"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 4, done.stdout + done.stderr
    assert f"this stage expects triton 0.0.1 (LENET_TRITON_EXPECTED_TRITON, set by the Makefile), but imported " \
           f"triton {triton.__version__}" in done.stderr, done.stderr
    makefile = (ROOT / "Makefile").read_text()
    for stage, python in (("test-triton39-kernels", "$(PYTEST39)"), ("test-torch-only", "$(PYTEST39)"),
                          ("test-triton36", "$(PYTEST36)")):
        assert re.search(rf"^{stage}:.*\n\t{re.escape(python)} tests", makefile, re.M), stage
    assert "PYTEST36 := LENET_TRITON_EXPECTED_TRITON=$(TRITON36) $(PY36) -m pytest" in makefile
    assert "TRITON36 := $(shell sed -n 's/^triton==//p' requirements-triton36.txt)" in makefile
