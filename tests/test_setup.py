"""`make setup` installs requirements-lock.txt (two groups side by side, without resolving): the
lock must hold every pin of requirements.txt, each package once, and the line that splits it."""

import re
from pathlib import Path

import pytest

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
