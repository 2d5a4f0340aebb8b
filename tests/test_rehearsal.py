"""Every GPU launch path of the public API, rehearsed for an H100 on this CPU (bench/rehearsal.py).

Triton's interpreter never runs the launch path, so these are the only tests that see what a GPU
would refuse: an argument the binder cannot specialize, an undeclared keyword, a plain global, a
kernel that needs more shared memory or threads than the H100 has, or one that spills. The
rehearsal binds and compiles each launch for sm_90 with the installed triton (this suite runs on
triton 3.9 and 3.6) in its own process, then the limits of bench/kernels.py are checked: the
representative set here, the whole grid in bench/results/kernels-sm90.md.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import kernels
from bench.kernels import H100, blocks_per_sm, launch_cost, lenet_backward_flops, lenet_forward_flops

ROOT = Path(__file__).resolve().parents[1]
KERNEL_MODULES = ["conv", "lenet", "linear", "pool", "reduce"]


def _run(args, timeout):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRITON_INTERPRET="0")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def rehearsal(rehearsal_run):
    """The representative set's launches: the parts that the rehearsal processes wrote (python -m
    bench.rehearsal --queue DIR --json FILE, which conftest.py starts as soon as the tests are
    collected), merged."""
    paths, log = rehearsal_run
    if not all(path.exists() for path in paths):
        pytest.fail(f"the rehearsal wrote nothing to {[str(p) for p in paths if not p.exists()]}:\n{log[-5000:]}")
    print("\n".join(line for line in log.splitlines() if " scenarios, " in line))
    return kernels.merge_parts([json.loads(path.read_text()) for path in paths])


def _rows(result, **match):
    return [r for r in kernels.rows(result) if all(r[key] in values for key, values in match.items())]


def test_every_launch_binds_and_compiles_for_sm90(rehearsal):
    assert not rehearsal["failures"], "\n".join(f"{f['scenario']}: {f['error']}" for f in rehearsal["failures"])


def test_fused_kernels_fit_the_h100(rehearsal):
    """No spills, at most 113 KB of shared memory, 8 warps resident per SM, 132 programs in flight
    at batch >= 256: in fp32 (TF32 off), fp16 and bf16."""
    problems = [p for p in kernels.violations(rehearsal) if "lenet_" in p]
    assert not problems, "\n".join(problems)
    fused = _rows(rehearsal, group=kernels.FUSED_GROUPS, precision=kernels.FITTED_PRECISIONS)
    assert {r["kernel"] for r in fused} == {"lenet_forward_kernel", "lenet_backward_kernel", "lenet_train_kernel",
                                             "lenet_reduce_kernel"}
    worst = max(fused, key=lambda r: (r["spill"], r["shared"], -r["resident_warps"]))
    print(f"tightest fused launch: {worst['kernel']} in {worst['scenario']}: {worst['registers']} registers, "
          f"{worst['spill']} B spilled, {worst['shared']} B shared, {worst['resident_warps']} warps per SM")


def test_per_op_kernels_in_lenet_layers_do_not_spill(rehearsal):
    problems = [p for p in kernels.violations(rehearsal) if "lenet-triton" in p]
    assert not problems, "\n".join(problems)


def test_every_kernel_and_launch_path_is_rehearsed(rehearsal):
    """Each @triton.jit kernel of lenet_triton.kernels (the probe aside), every precision, both channel
    counts, every batch size, every optimizer and each group of the public API."""
    defined = set()
    for module in KERNEL_MODULES:
        text = (ROOT / "lenet_triton" / "kernels" / f"{module}.py").read_text()
        defined |= {line.split("(")[0].removeprefix("def ") for line in text.splitlines()
                    if line.startswith("def ") and line.split("(")[0].endswith("_kernel")}
    launched = {launch["kernel"] for launch in rehearsal["launches"]}
    assert launched == defined, f"never rehearsed: {defined - launched}; unknown: {launched - defined}"
    scenarios = rehearsal["scenarios"]
    for word in ["fp32", "tf32", "fp16", "bf16", "fp64", "c1", "c3", *(f"b{b}" for b in (1, 7, 256, 4096, 65536)),
                 "sgd", "momentum", "nesterov", "adam", "lenet-triton", "lenet-fused", "train-step", "distributed-step", "ops",
                 "int64"]:
        assert any(word in name.split() for name in scenarios), f"no scenario with {word}"


def test_stand_in_driver_refuses_what_a_gpu_refuses():
    """Small kernels with each hazard: the rehearsal must refuse each one, and pass a sound kernel."""
    done = _run([str(ROOT / "tests" / "rehearsal_hazards.py")], timeout=600)
    print(done.stdout)
    assert done.returncode == 0 and done.stdout.strip().endswith("0 failed"), done.stdout + done.stderr[-3000:]


def test_occupancy_follows_the_h100_tables():
    assert blocks_per_sm(255, 4, 0) == (2, "registers")      # 8192 registers a warp, 64K per SM
    assert blocks_per_sm(128, 4, 0) == (4, "registers")
    assert blocks_per_sm(24, 4, 0) == (16, "threads")        # 2048 threads per SM
    assert blocks_per_sm(32, 1, 0) == (32, "blocks")
    assert blocks_per_sm(64, 4, 113 * 1024) == (2, "shared memory")  # 1 KB reserved per block
    assert blocks_per_sm(64, 4, 114 * 1024)[0] == 1


def test_training_step_floor_is_2_26_mflop_per_sample():
    per_sample = lenet_forward_flops(1, 10) + lenet_backward_flops(1, 10)
    assert per_sample == 2_263_920
    record = {"kernel": "lenet_train_kernel", "grid": [256, 1, 1],
              "args": {"batch": 4096, "x_ptr": {"shape": [4096, 1, 32, 32], "itemsize": 4},
                       "parameters": [{"shape": [61706], "itemsize": 4}],
                       "partial_ptr": {"shape": [256, 61706], "itemsize": 4},
                       "loss_partial_ptr": {"shape": [256], "itemsize": 4}},
              "constexprs": {"C_IN": 1, "NC": 10}}
    flops, moved = launch_cost(record)
    assert flops == 4096 * per_sample
    assert moved == 4 * (4096 * 1024 + 61706 + 256 * 61706 + 256) + 4096 * 8
    assert flops / H100.fp32_flops > moved / H100.hbm_bytes   # compute-bound at batch 4096
