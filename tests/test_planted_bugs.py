"""Proof that the GPU-plan tests can fail: each bug below, planted in a copy of the package, turns
the tests written to catch it red.

On a CPU the launchers pick the interpreter's plan (few, large programs), so a kernel that ignores
its program id passes every test that runs that plan alone, and a wrong offset width shows only
past 2**31 elements. Each case copies lenet_triton/ and tests/ to a scratch folder, plants one bug by editing the
source there, and runs the tests that must catch it in a new process, from that folder; every one
of them must fail.
"""

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Bug:
    path: str              # the file to edit, from the repository root
    correct: str           # text that must be there, as many times as `count`
    planted: str           # what replaces it
    count: int
    tests: tuple           # what to run: test files and node ids, with `keyword` as pytest's -k
    keyword: str
    must_fail: tuple       # every test whose name starts with one of these must fail


# "not interpreter": the odd-case tables run under both plans; the interpreter plan's cases take one
# program, so they cannot see these bugs.
BUGS = {
    "linear_kernel ignores its row-tile index": Bug(
        "lenet_triton/kernels/linear.py", "    pid_m = tl.program_id(0)\n", "    pid_m = tl.program_id(0) * 0\n", 1,
        ("tests/test_gpu_launch_plan.py", "tests/test_linear.py::test_odd_cases"), "linear and not interpreter",
        ("test_linear_crosses_row_column_and_reduction_boundaries", "test_linear_weight_gradient_with_split_k",
         "test_odd_cases[gpu-plan-x_shape=(2, 3, 7, 11),", "test_odd_cases[gpu-plan-x_shape=(31, 17),")),
    "both pool kernels ignore program_id": Bug(
        "lenet_triton/kernels/pool.py", " = tl.program_id(", " = 0 * tl.program_id(", 2,
        ("tests/test_gpu_launch_plan.py", "tests/test_pool.py::test_arguments"), "(pool or arguments) and not interpreter",
        ("test_max_pool2d_forward_and_backward_take_several_programs", "test_arguments[gpu-plan-")),
    "index_dtype always returns int32": Bug(
        "lenet_triton/kernels/config.py",
        "return tl.int64 if largest > INT32_LIMIT else tl.int32", "return tl.int32", 1,
        ("tests/test_gpu_launch_plan.py", "tests/test_large_index.py"), "index or large_index",
        ("test_index_dtype_is_int32_where_offsets_fit_and_int64_where_they_do_not", "test_conv2d",
         "test_max_pool2d", "test_linear")),
}


def _plant(bug: Bug, folder: Path) -> None:
    for part in ("lenet_triton", "tests"):
        shutil.copytree(ROOT / part, folder / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", folder)
    source = folder / bug.path
    text = source.read_text()
    assert text.count(bug.correct) == bug.count, f"{bug.path} no longer holds {bug.correct!r} {bug.count} time(s)"
    source.write_text(text.replace(bug.correct, bug.planted))


@pytest.mark.parametrize("name", list(BUGS))
def test_the_gpu_plan_tests_catch_a_planted_bug(name, tmp_path):
    bug = BUGS[name]
    _plant(bug, tmp_path)
    report = tmp_path / "report.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", *bug.tests, "-k", bug.keyword, "-q", "-p", "no:cacheprovider",
                           f"--junitxml={report}"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert report.exists(), f"pytest did not finish (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    # A test counts as caught only when it failed an assertion: an error in its set-up, or an
    # exception of another kind, could come from a broken copy rather than from the bug.
    outcomes = {}
    for case in ElementTree.parse(report).iter("testcase"):
        failure = case.find("failure")
        caught = failure is not None and failure.get("message", "").startswith("AssertionError")
        outcomes[case.get("name")] = "caught" if caught else "not caught"
    for prefix in bug.must_fail:
        matching = {test: outcome for test, outcome in outcomes.items() if test.startswith(prefix)}
        assert matching, f"{name}: no test named {prefix}... ran; ran {sorted(outcomes)}"
        missed = [test for test, outcome in matching.items() if outcome != "caught"]
        assert not missed, f"{name}: these tests did not fail an assertion with the bug planted: {missed}\n" \
                           f"{done.stdout[-3000:]}"
