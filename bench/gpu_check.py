"""The whole GPU check in one command, sized for one device call of at most 10 minutes.

    make gpu-check [FAST=1]        (python3 -m bench gpu-check --out "$OUT" [--fast])

Runs with whatever python3 it is started with (the GPU image's: torch 2.11, triton 3.6, no venv,
no network) and writes at most 13 files into --out:

    <device>-versions.txt    versions, device properties, TF32 switches, nvidia-smi
    <device>-tests.txt       the test suite on cuda (pytest's log, summary line last)
    <device>-bench.txt       the benchmark run's log
    <device>.json/.md/.png   the benchmark grid (pytest-benchmark JSON, report, plot)
    <device>-train.txt       digits training on the GPU with the per-op (triton) backend and with
                             the fused backend and TrainStep, each one's seconds to 95% test accuracy;
                             the fused run exported to ONNX and checked against both backends with
                             onnxruntime's CPU provider (and its CUDA provider where it has one)
    <device>-train.tar.gz    those runs' metrics.json, curves.png, checkpoints, ONNX file and parity reports
    <device>-distributed.txt (not with --fast) the NCCL training step at world size 1 (TrainStep's
    <device>-distributed.json  all_gather and all_reduce paths, and DDP) beside one process, TrainStep
    <device>-distributed.md    graphed and not: what the collective path costs (bench/distributed.py)
    <device>-kernels.txt     (not with --fast) LeNet's launches (per-op, fused, TrainStep), each timed again
    <device>-kernels.json    on its own: the log, and the launches with their times, for the kernel report
                             (`python -m bench kernels --update` puts them beside the bounds in
                             bench/results/kernels-sm90.md)

--fast runs a smoke subset (the LeNet-shape cases of every op, the model, the fused kernels and
TrainStep (CUDA graph included), the GPU-only cases, a one-round benchmark at a tiny batch and
one epoch of each training run), for a re-check after a fix. --dry-run starts every step but has
pytest only collect, and trains one epoch on the CPU with the torch backend, so a machine without
a GPU can check that nothing is missing.

Every step has a time limit; a step that runs past it gets Ctrl-C (pytest then writes its summary,
and the benchmark the results it has), says so in its log, and the next step still runs. So a
broken set-up costs little time, and with 15 minutes of device time a session (a machine's start
included) the full check is the first call to make: a fast call first would leave too little for
the full one after a second machine start.
"""

import argparse
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

from lenet_triton.files import atomic_path, write_text

from . import variants

ROOT = Path(__file__).resolve().parents[1]

# Seconds per step, chosen so that the whole check ends inside one 10-minute call even when every
# step runs to its limit and its grace.
TIME_LIMITS = {"full": {"tests": 195, "bench": 150, "train": 60, "distributed": 25, "kernels": 40},
               "fast": {"tests": 50, "bench": 35, "train": 35}}
# After its limit a step gets Ctrl-C and this long to wrap up (pytest's summary, the benchmark's
# JSON and report) before it is killed.
GRACE_SECONDS = 20
# The training runs of the train step: name -> lenet_triton.train options.
TRAINING_RUNS = {"triton": ["--backend", "triton"], "fused": ["--backend", "fused", "--fused-step"]}

# The launches whose times the kernel report puts beside their bounds: bench.rehearsal scenarios,
# most wanted first (the step writes its JSON after each one, so a step stopped early keeps them).
# The full check only: the fast one has no time to spare.
MEASURED_SCENARIOS = ["lenet-fused fp32 c1 b256", "train-step sgd fp32 c1 b256", "lenet-triton fp32 c1 b256",
                      "lenet-fused fp32 c1 b4096", "train-step sgd fp32 c1 b4096", "lenet-triton fp32 c1 b4096",
                      "train-step adam fp32 c1 b4096", "lenet-fused fp32 c1 b65536", "train-step sgd fp32 c1 b65536"]

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
        # loadscope: a module's tests share one worker, so its module fixtures are made once, and the
        # rehearsal's tests one rehearsal (tests/conftest.py).
        command += ["-n", str(min(8, os.cpu_count() or 1)), "--dist", "loadscope"]
    return command


def bench_command(out: Path, dry_run: bool) -> list:
    command = [sys.executable, "-m", "bench", "run", "--results", str(out)]
    return command + (["--collect-only"] if dry_run else [])


def kernels_command(out_file: Path, dry_run: bool) -> list:
    command = [sys.executable, "-m", "bench.rehearsal", "--measure", "--only", *MEASURED_SCENARIOS, "--json",
               str(out_file)]
    return command + (["--list"] if dry_run else [])


def distributed_command(out: Path, dry_run: bool) -> list:
    command = [sys.executable, "-m", "bench", "distributed", "--ranks", "1", "--results", str(out)]
    # The dry run: one round of eager DDP at a tiny batch on the CPU (gloo), so no kernel runs.
    return command + (["--device", "cpu", "--batch", "2", "--rounds", "1", "--warmup", "0", "--variants", "eager"]
                      if dry_run else [])


def train_command(work: Path, fast: bool, dry_run: bool) -> list:
    return [sys.executable, "-m", "bench.gpu_check", str(work), *(["--epochs", "1"] if fast or dry_run else []),
            *(["--dry-run"] if dry_run else [])]


def train_and_export(work: Path, epochs=None, dry_run: bool = False) -> int:
    """The train step, in one process: each of TRAINING_RUNS on the GPU, then the fused run's
    checkpoint exported to ONNX and checked against each backend by every onnxruntime provider
    there is. A dry run trains on the CPU with the torch backend instead."""
    import onnxruntime

    from export.__main__ import main as export_main
    from export.parity import PROVIDERS
    from lenet_triton.train import main as train_main

    failures = []

    def attempt(label, module, main, argv):
        print(f"\n$ python -m {module} {' '.join(argv)}", flush=True)
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's errors
            code = exit_.code
        except Exception:
            traceback.print_exc()
            code = 1
        if code:
            failures.append(f"{label} failed (exit {code})")

    epoch_options = ["--epochs", str(epochs)] if epochs else []
    for run, backend_options in TRAINING_RUNS.items():
        run_options = ["--backend", "torch", "--device", "cpu"] if dry_run else [*backend_options, "--device", "cuda"]
        attempt(f"training {run}", "lenet_triton.train", train_main,
                [*run_options, *epoch_options, "--out-dir", str(work / run)])
    onnx_file, checkpoint = work / "lenet.onnx", work / "fused" / "checkpoint.pt"
    attempt("export", "export", export_main, ["onnx", "--checkpoint", str(checkpoint), "--out", str(onnx_file)])
    providers = [key for key, (name, _) in PROVIDERS.items() if name in onnxruntime.get_available_providers()]
    for backend in ["torch"] if dry_run else TRAINING_RUNS:
        for provider in providers:
            attempt(f"parity {backend}/{provider}", "export", export_main,
                    ["parity", str(onnx_file), "--checkpoint", str(checkpoint), "--backend", backend,
                     "--provider", provider, "--report", str(work / f"parity-{backend}-{provider}.json")])
    print(f"\nonnxruntime providers: {', '.join(onnxruntime.get_available_providers())}")
    for line in training_summary(work):
        print(line)
    print("train step: " + ("; ".join(failures) if failures else "every run passed"), flush=True)
    return 1 if failures else 0


def training_summary(work: Path) -> list:
    """A line per training run: final accuracy, seconds to the target, and a later epoch's time."""
    from lenet_triton.train import target_summary

    lines = []
    for run in TRAINING_RUNS:
        path = work / run / "metrics.json"
        if not path.exists():
            lines.append(f"{run}: no metrics.json")
            continue
        metrics = json.loads(path.read_text())
        epochs = metrics["epochs"]
        # The first epoch also pays for Triton's compiles.
        later = (f", a later epoch {statistics.median(e['seconds'] for e in epochs[1:]):.2f} s (median)"
                 if len(epochs) > 1 else "")
        lines.append(f"{run}: {100 * metrics['final_test_accuracy']:.2f}% at epoch {len(epochs)} on "
                     f"{metrics['device_name']}; {target_summary(metrics)}; first epoch {epochs[0]['seconds']:.2f} s{later}")
    return lines


def pack(folder: Path, archive: Path) -> None:
    """folder's files into a .tar.gz, written atomically."""
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(folder)))


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
    with tempfile.TemporaryDirectory() as work:
        results["train"] = run_step("train", train_command(Path(work), fast, dry_run), out / f"{slug}-train.txt",
                                    limits["train"], env)
        pack(Path(work), out / f"{slug}-train.tar.gz")
    if "distributed" in limits:
        results["distributed"] = run_step("distributed", distributed_command(out, dry_run),
                                          out / f"{slug}-distributed.txt", limits["distributed"], env)
    if "kernels" in limits:
        results["kernels"] = run_step("kernels", kernels_command(out / f"{slug}-kernels.json", dry_run),
                                      out / f"{slug}-kernels.txt", limits["kernels"], env)

    report = out / f"{slug}.md"
    if report.exists():
        print(report.read_text())
    # Last, so that the end of the output (all a device call shows) holds the verdict.
    print(f"gpu-check on {variants.device_name()} ({'fast' if fast else 'full'}"
          f"{', dry run' if dry_run else ''}), files in {out}:")
    for name, (status, seconds) in results.items():
        print(f"  {name:9s} {status:28s} {seconds:6.0f} s")
    print(f"  tests:   {last_line(out / f'{slug}-tests.txt', ' in ')}")
    print(f"  train:   {last_line(out / f'{slug}-train.txt', 'train step')}")
    return 0 if all(status == "ok" for status, _ in results.values()) else 1


def main(argv=None) -> int:
    """python -m bench.gpu_check WORK [--epochs N] [--dry-run]: gpu-check's train step alone."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=train_and_export.__doc__)
    parser.add_argument("work", type=Path, help="folder for the runs' files")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the training default)")
    parser.add_argument("--dry-run", action="store_true", help="train on the CPU with the torch backend")
    args = parser.parse_args(argv)
    return train_and_export(args.work, args.epochs, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
