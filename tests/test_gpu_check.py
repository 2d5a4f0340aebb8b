"""`make gpu-check` can start every step on a machine without a GPU: no missing import, no wrong
path, no test or benchmark that fails to collect. The GPU itself checks the rest."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_check, variants

ROOT = Path(__file__).resolve().parents[1]
PYTEST_ERRORS = re.compile(r"^ERROR|\b\d+ errors?\b", re.MULTILINE)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["--fast"]], ids=["full", "fast"])
def test_dry_run_starts_every_step_and_writes_its_files(tmp_path, mode):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "bench", "gpu-check", "--dry-run", "--out", str(tmp_path), *mode],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    slug = variants.device_slug()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{slug}-versions.txt", f"{slug}-tests.txt", f"{slug}-bench.txt"])
    versions = (tmp_path / f"{slug}-versions.txt").read_text()
    assert "torch " in versions and "triton " in versions and "device" in versions
    tests_log = (tmp_path / f"{slug}-tests.txt").read_text()
    assert not PYTEST_ERRORS.search(tests_log), tests_log[-3000:]
    collected = int(tests_log.split(" tests collected")[0].rsplit("\n", 1)[-1])
    assert collected >= (20 if mode else 200), tests_log[-2000:]
    bench_log = (tmp_path / f"{slug}-bench.txt").read_text()
    assert " tests collected" in bench_log and not PYTEST_ERRORS.search(bench_log), bench_log[-3000:]
    assert "[bench: ok" in bench_log


def test_gpu_check_needs_an_output_folder():
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    done = subprocess.run([sys.executable, "-m", "bench", "gpu-check"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "gpu-check needs --out DIR" in done.stderr


def test_a_step_past_its_limit_is_stopped_and_says_so(tmp_path):
    log = tmp_path / "step.txt"
    status, seconds = gpu_check.run_step("sleep", [sys.executable, "-c", "import time; time.sleep(60)"], log, 1)
    assert status == "stopped at its 1 s limit" and seconds < 30
    assert "[sleep: stopped at its 1 s limit" in log.read_text()
