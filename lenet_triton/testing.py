"""Tolerances per dtype and a comparison that reports the worst mismatch.

One table serves the tests, the benchmark's correctness gate and the training convergence check.
`recorded_launches` counts (or stubs out) the kernels' launches for tests and the host-time benchmark.
The bounds are for a Triton result against torch on the same inputs: the two sum in different
orders, so float32 differs by a few ulps of the largest partial sum, and half types by far more.
"""

import sys
from contextlib import contextmanager, nullcontext
from typing import NamedTuple

import torch

# dtype -> (atol, rtol)
TOLERANCES = {
    torch.float64: (1e-10, 1e-7),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}

# With TF32 matmuls (torch.backends.cuda.matmul.allow_tf32) float32 keeps only a 10-bit mantissa.
TF32_TOLERANCE = (5e-3, 5e-3)


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return TF32_TOLERANCE
    return TOLERANCES[dtype]


def worst_mismatch(actual: torch.Tensor, expected: torch.Tensor) -> str:
    """Where |actual - expected| is largest, with both values, as one line."""
    if actual.numel() == 0:
        return "empty tensors"
    diff = (actual.double() - expected.double()).abs()
    diff = torch.where(torch.isnan(actual.double()) == torch.isnan(expected.double()),
                       diff.nan_to_num(nan=0.0), torch.full_like(diff, float("inf")))
    flat = int(diff.argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape)) if diff.dim() else ()
    return (f"worst mismatch {diff.flatten()[flat].item():.3e} at {index}: "
            f"got {actual.flatten()[flat].item():.8g}, expected {expected.flatten()[flat].item():.8g}")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str = "tensor", dtype=None) -> None:
    """torch.testing.assert_close with this project's per-dtype tolerance and the worst mismatch in the message."""
    atol, rtol = tolerance(dtype or expected.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=True,
                               msg=lambda default: f"{name}: {worst_mismatch(actual, expected)}\n{default}")


class Launch(NamedTuple):  # a NamedTuple: the host-time benchmark pays for building one per launch
    kernel: str
    grid: tuple
    function: object = None   # the @triton.jit function
    args: tuple = ()          # what the launcher passed: function[grid](*args, **kwargs) launches it again
    kwargs: dict = None
    compiled: object = None   # triton's CompiledKernel (None through the interpreter or when stubbed)


@contextmanager
def recorded_launches(run: bool = True):
    """Records every launch of a lenet_triton kernel inside the block, as a list of Launch.

    With run=False each launch is replaced by a no-op, so that only host work remains (argument
    checks, dispatch, autograd, launch planning): what the host-time benchmark times. The kernels
    then write nothing, and their outputs hold whatever the allocator gave. Any other Triton
    kernel launched inside such a block raises RuntimeError, so a no-launch timing can never
    silently include real kernels.
    """
    launches = []
    kernels = _lenet_kernels()
    for kernel in kernels:
        launch = kernel.run

        def recording(*args, grid, warmup, kernel=kernel, launch=launch, **kwargs):
            compiled = launch(*args, grid=grid, warmup=warmup, **kwargs) if run else None
            launches.append(Launch(kernel.__name__, tuple(grid), kernel, args, kwargs, compiled))
            return compiled

        # Instance attribute: `kernel[grid](...)` calls self.run(grid=..., warmup=False, ...).
        kernel.run = recording
    try:
        with nullcontext() if run else refused_launches(
                "recorded_launches(run=False), which stubs only lenet_triton's kernels: it would run for real"):
            yield launches
    finally:
        for kernel in kernels:
            del kernel.run


@contextmanager
def refused_launches(why: str = "a block that must run no Triton kernel"):
    """Inside the block, launching any Triton kernel (compiled or interpreted) raises RuntimeError."""
    def refuse(self, *args, **kwargs):
        raise RuntimeError(f"Triton kernel {getattr(self, '__name__', self)!r} was launched inside {why}")

    classes = _kernel_classes()
    unguarded = [cls.run for cls in classes]
    for cls in classes:
        cls.run = refuse
    try:
        yield
    finally:
        for cls, run in zip(classes, unguarded):
            cls.run = run


def _kernel_classes() -> list:
    """Triton's classes whose run() launches a kernel, compiled and interpreted."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    return [JITFunction, InterpretedFunction]


def _lenet_kernels() -> list:
    """Every @triton.jit function in the loaded lenet_triton.kernels modules."""
    from triton.runtime.jit import KernelInterface

    found = {}
    for name, module in list(sys.modules.items()):
        if module is not None and name.startswith("lenet_triton.kernels."):
            for value in vars(module).values():
                if isinstance(value, KernelInterface):
                    found[id(value)] = value
    return list(found.values())
