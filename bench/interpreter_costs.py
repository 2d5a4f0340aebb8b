"""What Triton's interpreter costs on this machine: the two figures lenet_triton.kernels.config's
InterpreterPlan sizes its tiles by.

    python -m bench.interpreter_costs [--repeats N]

- per tl op: the time of one elementwise tl op on a small tile, beyond the launch;
- per gathered element: the time of a masked tl.load of a gathered tile, with its pointer and mask
  arithmetic, per element.

Each figure is the difference between a kernel that does the work many times and one that does it
once, so the launch and the rest of the kernel cancel out; the median of --repeats runs of each.
"""

import argparse
import statistics
import time

import torch

import lenet_triton  # noqa: F401  (selects Triton's interpreter when there is no CUDA device)
import triton
import triton.language as tl

from lenet_triton.kernels import config


@triton.jit
def _ops_kernel(x_ptr, out_ptr, N: tl.constexpr, REPEATS: tl.constexpr):
    offs = tl.arange(0, N)
    x = tl.load(x_ptr + offs)
    for _ in range(REPEATS):
        x = x * 1.0001
    tl.store(out_ptr + offs, x)


@triton.jit
def _gather_kernel(x_ptr, out_ptr, ROWS: tl.constexpr, COLS: tl.constexpr, REPEATS: tl.constexpr):
    # Rows read columns 7 elements apart, as an implicit-GEMM tile gathers an image's taps.
    rows = tl.arange(0, ROWS)
    cols = tl.arange(0, COLS)
    acc = tl.zeros((ROWS, COLS), tl.float32)
    for r in range(REPEATS):
        mask = (rows < ROWS - r)[:, None] & (cols < COLS)[None, :]
        acc += tl.load(x_ptr + rows[:, None] + (cols * 7)[None, :], mask=mask, other=0.0)
    tl.store(out_ptr + rows[:, None] * COLS + cols[None, :], acc)


def _seconds(launch, repeats: int) -> float:
    launch()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        launch()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(repeats: int = 5) -> dict:
    """{"op_seconds": ..., "element_seconds": ...} on this machine."""
    if not config.interpreting():
        raise RuntimeError("bench.interpreter_costs measures Triton's interpreter: run it without a CUDA device "
                           "(or with TRITON_INTERPRET=1 set before Python starts)")
    x, out = torch.randn(64), torch.empty(64)
    many, once = 201, 1
    ops = (_seconds(lambda: _ops_kernel[(1,)](x, out, N=64, REPEATS=many), repeats)
           - _seconds(lambda: _ops_kernel[(1,)](x, out, N=64, REPEATS=once), repeats)) / (many - once)
    rows, cols, many = 8192, 32, 9
    source, gathered = torch.randn(rows + 7 * cols), torch.empty(rows * cols)
    loads = (_seconds(lambda: _gather_kernel[(1,)](source, gathered, ROWS=rows, COLS=cols, REPEATS=many), repeats)
             - _seconds(lambda: _gather_kernel[(1,)](source, gathered, ROWS=rows, COLS=cols, REPEATS=once), repeats))
    return {"op_seconds": ops, "element_seconds": loads / (many - once) / (rows * cols)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.interpreter_costs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each kernel (median)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    costs = measure(args.repeats)
    plan = config.INTERPRETER_PLAN
    print(f"per tl op:           {costs['op_seconds'] * 1e6:6.1f} us   (InterpreterPlan.op_seconds: "
          f"{plan.op_seconds * 1e6:.0f} us)")
    print(f"per gathered element: {costs['element_seconds'] * 1e9:5.1f} ns   (InterpreterPlan.element_seconds: "
          f"{plan.element_seconds * 1e9:.0f} ns)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
