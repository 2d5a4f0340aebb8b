"""The whole GPU check in one command, sized for one device call of at most 10 minutes.

    make gpu-check [FAST=1]        (python3 -m bench gpu-check --out "$OUT" [--fast])

Runs with whatever python3 it is started with (the GPU image's: torch 2.11, triton 3.6, no venv,
no network) and writes at most 5 files into --out:

    <device>-versions.txt   versions, device properties, TF32 switches, nvidia-smi
    <device>-tests.txt      the test suite on cuda (pytest's log, summary line last)
    <device>-bench.txt      the benchmark run's log
    <device>.json/.md/.png  the benchmark grid (pytest-benchmark JSON, report, plot)

--fast runs a smoke subset (the LeNet-shape cases of every op, the model, the fused kernels and
TrainStep (CUDA graph included), the GPU-only cases and
a one-round benchmark at a tiny batch) for a first call. --dry-run starts every step but has pytest
only collect, so a machine without a GPU can check that nothing is missing. Every step has a time
limit; a step that runs past it gets Ctrl-C (pytest then writes its summary, and the benchmark the
results it has), says so in its log, and the next step still runs.
"""

import importlib.util
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from lenet_triton.files import write_text

from . import variants

ROOT = Path(__file__).resolve().parents[1]

# Seconds per step, chosen so that the whole check ends inside one 10-minute call.
TIME_LIMITS = {"full": {"tests": 290, "bench": 220}, "fast": {"tests": 60, "bench": 45}}
# After its limit a step gets Ctrl-C and this long to wrap up (pytest's summary, the benchmark's
# JSON and report) before it is killed.
GRACE_SECONDS = 25

SMOKE_TESTS = ["tests/test_conv.py::test_lenet_shapes", "tests/test_pool.py::test_lenet_shapes",
               "tests/test_linear.py::test_lenet_shapes", "tests/test_model.py",
               "tests/test_scale_and_precision.py", "tests/test_import.py::test_import_needs_no_settings",
               "tests/test_fused.py::test_forward_and_every_gradient_match_torch",
               "tests/test_fused.py::test_train_step_matches_torch_optim_for_20_steps"]


def versions_text() -> str:
    import numpy
    import onnxruntime
    import torch
    import triton

    lines = [f"python {platform.python_version()} ({sys.executable})", f"torch {torch.__version__} "
             f"(cuda {torch.version.cuda})", f"triton {triton.__version__}", f"numpy {numpy.__version__}",
             f"onnxruntime {onnxruntime.__version__}, providers {onnxruntime.get_available_providers()}",
             f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')}",
             f"allow_tf32: matmul {torch.backends.cuda.matmul.allow_tf32}, cudnn {torch.backends.cudnn.allow_tf32}"]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines += [f"device {props.name}, capability {props.major}.{props.minor}, "
                  f"{props.multi_processor_count} SMs, {props.total_memory / 2**30:.1f} GiB"]
    else:
        lines += ["device: no CUDA device (the kernels run through Triton's interpreter)"]
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
        lines += ["", smi.stdout.strip() or smi.stderr.strip()]
    except (OSError, subprocess.TimeoutExpired) as error:
        lines += ["", f"nvidia-smi: {error}"]
    return "\n".join(lines) + "\n"


def test_command(fast: bool, dry_run: bool) -> list:
    command = [sys.executable, "-m", "pytest", *(SMOKE_TESTS if fast else ["tests"]), "-q", "-ra",
               "-p", "no:cacheprovider", "--durations=25"]
    if dry_run:
        return command + ["--collect-only"]
    if importlib.util.find_spec("xdist") is not None:
        # Triton compiles each kernel configuration on the host: spread that over the cores.
        command += ["-n", str(min(8, os.cpu_count() or 1))]
    return command


def bench_command(out: Path, dry_run: bool) -> list:
    command = [sys.executable, "-m", "bench", "run", "--results", str(out)]
    return command + (["--collect-only"] if dry_run else [])


def run_step(name: str, command: list, log: Path, limit: float, env=None) -> tuple:
    """Runs command in its own process group, output to log; returns (status, seconds)."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        handle.write(f"$ {' '.join(command)}\n\n")
        handle.flush()
        process = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True, preexec_fn=_default_sigint)
        try:
            code = process.wait(timeout=limit)
            status = "ok" if code == 0 else f"exit {code}"
        except subprocess.TimeoutExpired:
            # Ctrl-C first: pytest then ends its session, so the log has its summary and the
            # benchmark still writes what it timed. Killed if it does not stop.
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            status = f"stopped at its {limit:.0f} s limit"
        handle.write(f"\n[{name}: {status} after {time.perf_counter() - start:.0f} s]\n")
    return status, time.perf_counter() - start


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def last_line(path: Path, must_contain: str = "") -> str:
    lines = [line for line in path.read_text().splitlines() if must_contain in line] if path.exists() else []
    return lines[-1].strip() if lines else "-"


def gpu_check(out: Path, fast: bool = False, dry_run: bool = False) -> int:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    slug = variants.device_slug()
    limits = TIME_LIMITS["fast" if fast else "full"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if fast:
        env["LENET_BENCH_QUICK"] = "1"

    write_text(out / f"{slug}-versions.txt", versions_text())
    results = {"versions": ("ok", 0.0)}
    results["tests"] = run_step("tests", test_command(fast, dry_run), out / f"{slug}-tests.txt",
                                limits["tests"], env)
    results["bench"] = run_step("bench", bench_command(out, dry_run), out / f"{slug}-bench.txt",
                                limits["bench"], env)

    report = out / f"{slug}.md"
    if report.exists():
        print(report.read_text())
    # Last, so that the end of the output (all a device call shows) holds the verdict.
    print(f"gpu-check on {variants.device_name()} ({'fast' if fast else 'full'}"
          f"{', dry run' if dry_run else ''}), files in {out}:")
    for name, (status, seconds) in results.items():
        print(f"  {name:9s} {status:28s} {seconds:6.0f} s")
    print(f"  tests:   {last_line(out / f'{slug}-tests.txt', ' in ')}")
    return 0 if all(status == "ok" for status, _ in results.values()) else 1
