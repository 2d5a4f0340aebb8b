"""Every benchmark runs once (pytest-benchmark disabled, tiny batches), so the suite can't rot: the
rows that run Triton kernels on every triton version, the others (torch, onnxruntime) on one;
and the report writer turns its JSON into the tables and plot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report, variants

ROOT = Path(__file__).resolve().parents[1]


def _run_every_benchmark_once(marker: str, env: dict) -> str:
    """pytest over bench/ with the rows that `marker` selects; returns its output."""
    env = dict(env, LENET_BENCH_QUICK="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "bench"), "-q", "-p", "no:cacheprovider",
                           "--benchmark-disable", "-m", marker], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return done.stdout


def _rows(triton: bool) -> int:
    """How many benchmark rows run Triton kernels (or, with triton=False, none): one batch each."""
    names = [*variants.TRAIN_VARIANTS, *variants.INFERENCE_VARIANTS, *variants.HOST_STEP_VARIANTS,
             *variants.host_op_rows(), *(3 * 2 * variants.OP_IMPLEMENTATIONS)]  # 3 ops, forward and backward
    return sum(variants.runs_triton(name) == triton for name in names)


@pytest.mark.slow
def test_every_triton_benchmark_runs_once():
    out = _run_every_benchmark_once("not torch_only", os.environ)
    assert f"{_rows(triton=True)} passed, {_rows(triton=False)} deselected" in out, out[-2000:]


@pytest.mark.slow
@pytest.mark.torch_only
def test_every_torch_benchmark_runs_once():
    # With torch's own thread count, as `make bench` runs: torch 2.13's torch.compile computes wrong
    # gradients for LeNet on one CPU thread (bench/NOTES.md), which the compile rows' check refuses.
    # Idle OpenMP threads sleep instead of spinning, which costs the other stages a core's share.
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    out = _run_every_benchmark_once("torch_only", env)
    assert f"{_rows(triton=False)} passed, {_rows(triton=True)} deselected" in out, out[-2000:]


def _fake_run(path):
    rows = []
    for group, names, baseline in (("train step, batch 64", variants.TRAIN_VARIANTS[:-1], "eager"),
                                   ("op: conv2d forward, batch 64", variants.OP_IMPLEMENTATIONS, "torch")):
        for i, name in enumerate(names):
            rows.append({"extra_info": {"group": group, "variant": name, "batch": 64, "flops_per_call": 1.45e8,
                                        "peak_gflops": 100.0, "device": "test device", "precision": "float32",
                                        "first_call_seconds": 0.5, "interpreter": variants.runs_triton(name),
                                        "torch": "t",
                                        "triton": "tr", "onnxruntime": "o", "lenet_triton": "l"},
                         "stats": {"median": 0.01 * (i + 1), "iqr": 0.001, "rounds": 10}})
    for i, name in enumerate(variants.HOST_STEP_VARIANTS):
        rows.append({"extra_info": {**rows[0]["extra_info"], "group": "host: training step, batch 1", "variant": name,
                                    "batch": 1, "flops_per_call": 0, "launches": 3 * i, "host_only": i > 0},
                     "stats": {"median": 1e-3 / (i + 1), "iqr": 1e-5, "rounds": 100}})
    path.write_text(json.dumps({"benchmarks": rows}))


@pytest.mark.torch_only
def test_report_tables_and_plot(tmp_path):
    _fake_run(tmp_path / "run.json")
    text = report.write(tmp_path / "run.json", tmp_path / "run.md", tmp_path / "run.png")
    assert (tmp_path / "run.md").read_text().strip() == text.strip()
    assert (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"
    eager_row = next(line for line in text.splitlines() if line.startswith("| eager |"))
    cells = [c.strip() for c in eager_row.split("|")[1:-1]]
    assert cells[1] == "10 ms" and cells[3] == "6,400" and cells[4] == "1.00x"
    assert cells[6] == "14.50" and cells[7] == "7"            # 1.45e8 FLOP / 10 ms; 10 ms / 1.45 ms floor
    compile_row = next(line for line in text.splitlines() if line.startswith("| compile-default |"))
    assert "| 2x slower |" in compile_row and "| 1.00x |" in compile_row  # vs eager, vs the best compile mode
    assert f"| {variants.TRAIN_VARIANTS[-1]} | not timed" in text  # a missing variant is reported, not hidden
    assert "vs torch" in text
    host = text[text.index("### host: training step, batch 1"):]
    assert f"| {variants.HOST_STEP_VARIANTS[1]} | 500 us | 10 us | 3 | 2.00x |" in host, host
    # The interpreter's rows: each Triton row's time as a multiple of eager's, before the tables.
    summary = text[text.index("### Summary"):text.index("### train step")]
    triton_rows = [v for v in variants.TRAIN_VARIANTS[:-1] if variants.runs_triton(v)]
    expected = " | ".join(f"{variants.TRAIN_VARIANTS.index(v) + 1}x" for v in triton_rows)
    assert f"| train step, batch 64 | 10 ms | {expected} |" in summary, summary


def test_interpreter_costs_measures_both_figures(capsys):
    """python -m bench.interpreter_costs: the two costs InterpreterPlan sizes its tiles by."""
    from bench import interpreter_costs
    from lenet_triton.kernels import config

    if not config.interpreting():
        with pytest.raises(RuntimeError, match="measures Triton's interpreter"):
            interpreter_costs.measure(1)
        return
    costs = interpreter_costs.measure(repeats=1)
    assert 1e-7 < costs["op_seconds"] < 1e-2 and 1e-11 < costs["element_seconds"] < 1e-6, costs
    assert interpreter_costs.main(["--repeats", "1", "--count"]) == 0
    out = capsys.readouterr().out
    assert "per tl op:" in out and "TrainStep, batch 4: " in out and "per-op step, batch 64: " in out, out
    from triton.runtime import interpreter
    assert "create_masked_load" not in vars(interpreter.interpreter_builder), "the counting wrappers stayed"


@pytest.mark.slow
def test_distributed_bench_runs_across_two_ranks(tmp_path):
    """python -m bench distributed at a tiny batch: a DDP and a TrainStep variant, each in one process
    and across two gloo ranks, ending at the same parameters, with the collective timed apart."""
    done = subprocess.run([sys.executable, "-m", "bench", "distributed", "--batch", "3", "--rounds", "1", "--warmup",
                           "0", "--variants", "eager", "fused-step", "--results", str(tmp_path)],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / f"{variants.device_slug()}-distributed.json").read_text())
    assert result["ranks"] == 2 and result["backend"] == "gloo"
    assert [row["variant"] for row in result["rows"]] == ["eager", "fused-step"]
    for row in result["rows"]:
        assert row["agrees"], row
        assert 0 < row["collective_seconds"] < row["ranks_seconds"], row
    assert "| fused-step |" in (tmp_path / f"{variants.device_slug()}-distributed.md").read_text()


@pytest.mark.torch_only
def test_distributed_bench_refuses_fewer_samples_than_ranks():
    done = subprocess.run([sys.executable, "-m", "bench", "distributed", "--ranks", "3", "--batch", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--batch 2 is smaller than --ranks 3" in done.stderr, done.stderr
