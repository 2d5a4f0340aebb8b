"""The Python examples of README.md and docs/ run as written (they launch the kernels, so both
triton stages run them)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [(page, number, code) for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
            for number, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))]


def test_there_are_examples():
    assert {page.name for page, _, _ in EXAMPLES} >= {"README.md", "api.md"}


@pytest.mark.parametrize("page, number, code", EXAMPLES, ids=[f"{p.name}-{n}" for p, n, _ in EXAMPLES])
def test_example_runs_as_written(page, number, code):
    exec(compile(code, f"{page.name}, example {number}", "exec"), {"__name__": "__docs_example__"})
