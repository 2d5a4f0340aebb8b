"""`make gpu-check` can start every step on a machine without a GPU: no missing import, no wrong
path, no test or benchmark that fails to collect. The GPU itself checks the rest."""

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bench import gpu_check, variants

ROOT = Path(__file__).resolve().parents[1]
PYTEST_ERRORS = re.compile(r"^ERROR|\b\d+ errors?\b", re.MULTILINE)
# The dry run trains with the torch backend and has pytest and the rehearsal only collect and list:
# no Triton kernel runs, so the triton 3.6 stage leaves this module out.
pytestmark = pytest.mark.torch_only


MODES = {"full": [], "fast": ["--fast"]}


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """Both modes' dry runs, side by side: each is mostly one core's worth of imports."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = {}
    for mode, options in MODES.items():
        out = tmp_path_factory.mktemp(mode)
        process = subprocess.Popen([sys.executable, "-m", "bench", "gpu-check", "--dry-run", "--out", str(out),
                                    *options], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        started[mode] = out, process
    return {mode: (out, *process.communicate(timeout=600), process.returncode)
            for mode, (out, process) in started.items()}


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_dry_run_starts_every_step_and_writes_its_files(dry_runs, mode):
    tmp_path, stdout, stderr, returncode = dry_runs[mode]
    assert returncode == 0, stdout[-3000:] + stderr[-3000:]
    slug = variants.device_slug()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{slug}-versions.txt", f"{slug}-tests.txt", f"{slug}-bench.txt", f"{slug}-train.txt", f"{slug}-train.tar.gz",
         *([f"{slug}-kernels.txt", f"{slug}-distributed.txt", f"{slug}-distributed.json", f"{slug}-distributed.md"]
           if mode == "full" else [])])
    versions = (tmp_path / f"{slug}-versions.txt").read_text()
    assert "torch " in versions and "triton " in versions and "device" in versions
    tests_log = (tmp_path / f"{slug}-tests.txt").read_text()
    assert not PYTEST_ERRORS.search(tests_log), tests_log[-3000:]
    collected = int(tests_log.split(" tests collected")[0].rsplit("\n", 1)[-1])
    assert collected >= (20 if mode == "fast" else 200), tests_log[-2000:]
    bench_log = (tmp_path / f"{slug}-bench.txt").read_text()
    assert " tests collected" in bench_log and not PYTEST_ERRORS.search(bench_log), bench_log[-3000:]
    assert "[bench: ok" in bench_log
    train_log = (tmp_path / f"{slug}-train.txt").read_text()
    assert "train step: every run passed" in train_log and "[train: ok" in train_log, train_log[-3000:]
    assert "parity PASSED" in train_log and "train:   train step: every run passed" in stdout
    with tarfile.open(tmp_path / f"{slug}-train.tar.gz") as tar:
        names = set(tar.getnames())
        metrics = json.load(tar.extractfile("fused/metrics.json"))
    assert {"triton/metrics.json", "fused/curves.png", "fused/checkpoint.pt", "lenet.onnx",
            "parity-torch-cpu.json"} <= names, names
    assert len(metrics["epochs"]) == 1 and "seconds_to_target" in metrics
    if mode == "full":
        distributed_log = (tmp_path / f"{slug}-distributed.txt").read_text()
        assert "[distributed: ok" in distributed_log, distributed_log[-3000:]
        rows = json.loads((tmp_path / f"{slug}-distributed.json").read_text())["rows"]
        assert [(row["variant"], row["agrees"]) for row in rows] == [("eager", True)], rows
        kernels_log = (tmp_path / f"{slug}-kernels.txt").read_text()
        assert "[kernels: ok" in kernels_log, kernels_log[-3000:]
        assert all(name in kernels_log for name in gpu_check.MEASURED_SCENARIOS), kernels_log[-3000:]


def test_gpu_check_needs_an_output_folder():
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    done = subprocess.run([sys.executable, "-m", "bench", "gpu-check"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "gpu-check needs --out DIR" in done.stderr


def test_a_failed_training_run_fails_the_train_step_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    import lenet_triton.train

    def broken(argv):
        raise RuntimeError("no kernel image is available")  # what a bad GPU build would raise

    monkeypatch.setattr(lenet_triton.train, "main", broken)
    assert gpu_check.train_and_export(tmp_path, epochs=1, dry_run=True) == 1
    # Nothing was trained, so the export and parity also fail, each on its own and by name.
    assert not (tmp_path / "lenet.onnx").exists()
    out, err = capsys.readouterr()
    assert err.count("RuntimeError: no kernel image is available") == 2, err  # each run's traceback is shown
    assert ("train step: training triton failed (exit 1); training fused failed (exit 1); export failed (exit 2); "
            "parity torch/cpu failed (exit 2)") in out, out


def test_a_step_past_its_limit_is_stopped_and_says_so(tmp_path):
    log = tmp_path / "step.txt"
    status, seconds = gpu_check.run_step("sleep", [sys.executable, "-c", "import time; time.sleep(60)"], log, 1)
    assert status == "stopped at its 1 s limit" and seconds < 30
    assert "[sleep: stopped at its 1 s limit" in log.read_text()


@pytest.mark.parametrize("mode", MODES)
def test_every_step_at_its_limit_still_ends_inside_one_device_call(mode):
    # A device call is at most 600 s; leave room for python's start-up and the versions step.
    limits = gpu_check.TIME_LIMITS[mode]
    worst = sum(limits.values()) + len(limits) * gpu_check.GRACE_SECONDS
    assert worst <= (570 if mode == "full" else 180), f"{mode}: {worst} s at worst"
