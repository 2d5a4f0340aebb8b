"""What Triton's interpreter costs on this machine: the two figures lenet_triton.kernels.config's
InterpreterPlan sizes its tiles by, and what a LeNet step asks of the interpreter.

    python -m bench.interpreter_costs [--repeats N] [--count]

- per tl op: the time of one elementwise tl op on a small tile, beyond the launch;
- per gathered element: the time of a masked tl.load of a gathered tile, with its pointer and mask
  arithmetic, per element.

Each figure is the difference between a kernel that does the work many times and one that does it
once, so the launch and the rest of the kernel cancel out; the median of --repeats runs of each.
--count also counts, for one TrainStep at batch 4 and one per-op training step at batch 64, the
interpreter's builder calls (what tl ops turn into), loads, stores and dots, the calls of nested
@triton.jit functions and the scans that patch triton.language for the interpreter.
"""

import argparse
import collections
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


def count(step) -> dict:
    """What one call of `step` asks of the interpreter (see the module docstring)."""
    from triton.runtime import interpreter

    counted = collections.Counter()
    builder = interpreter.interpreter_builder
    methods = [name for name in dir(type(builder)) if name.startswith("create_") or name.endswith("ary_op")]

    def counting(name, method):
        def call(*args, **kwargs):
            counted[name] += 1
            return method(*args, **kwargs)
        return call

    # The stock patch, under triton_mode's "patch-once" adjustment; else the one the interpreter calls.
    patch_name = "_stock_patch_lang" if hasattr(interpreter, "_stock_patch_lang") else "_patch_lang"
    saved_patch, saved_call = getattr(interpreter, patch_name), interpreter.InterpretedFunction.__call__
    for name in methods:
        setattr(builder, name, counting(name, getattr(builder, name)))
    setattr(interpreter, patch_name, counting("language patches", saved_patch))
    interpreter.InterpretedFunction.__call__ = counting("nested calls", saved_call)
    try:
        step()
    finally:
        for name in methods:
            delattr(builder, name)
        setattr(interpreter, patch_name, saved_patch)
        interpreter.InterpretedFunction.__call__ = saved_call
    return {"builder calls": sum(counted[name] for name in methods),
            "loads": counted["create_masked_load"] + counted["create_load"],
            "stores": counted["create_masked_store"] + counted["create_store"], "dots": counted["create_dot"],
            "nested calls": counted["nested calls"], "language patches": counted["language patches"]}


def _lenet_steps() -> dict:
    """{name: a training step to count}: TrainStep at batch 4, the per-op backend at batch 64."""
    import torch.nn.functional as F

    from lenet_triton import LeNet, TrainStep

    torch.manual_seed(0)
    fused = LeNet(backend="fused")
    train_step = TrainStep(fused, torch.optim.SGD(fused.parameters(), lr=0.01, momentum=0.9))
    small = torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,))
    per_op = LeNet(backend="triton")
    optimizer = torch.optim.SGD(per_op.parameters(), lr=0.01, momentum=0.9)
    images, labels = torch.randn(64, 1, 32, 32), torch.randint(0, 10, (64,))

    def per_op_step():
        optimizer.zero_grad()
        F.cross_entropy(per_op(images), labels).backward()
        optimizer.step()

    return {"TrainStep, batch 4": lambda: train_step(*small), "per-op step, batch 64": per_op_step}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.interpreter_costs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each kernel (median)")
    parser.add_argument("--count", action="store_true", help="also count what a LeNet training step asks of "
                                                             "the interpreter")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    costs = measure(args.repeats)
    plan = config.INTERPRETER_PLAN
    print(f"per tl op:           {costs['op_seconds'] * 1e6:6.1f} us   (InterpreterPlan.op_seconds: "
          f"{plan.op_seconds * 1e6:.0f} us)")
    print(f"per gathered element: {costs['element_seconds'] * 1e9:5.1f} ns   (InterpreterPlan.element_seconds: "
          f"{plan.element_seconds * 1e9:.0f} ns)")
    if args.count:
        for name, step in _lenet_steps().items():
            step()  # the first call plans and allocates
            print(f"{name}: " + ", ".join(f"{value:,} {key}" for key, value in count(step).items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
