"""Shared benchmark machinery: precision pin, device peak, and one timing helper used by every suite."""

import platform
import time

import pytest
import torch

import lenet_triton
from bench import variants

variants.pin_precision()


def sync() -> None:
    if variants.GPU:
        torch.cuda.synchronize()


# The parameters that name what a benchmark row runs: a variant, an op's implementation, a host call.
_ROW_PARAMETERS = ("variant", "impl", "row")


def pytest_collection_modifyitems(items):
    """Marks the rows that run no Triton kernel (eager, torch.compile, onnxruntime, torch's ops)
    torch_only: `make test` runs those apart, and only on its triton 3.9 stage."""
    for item in items:
        spec = getattr(item, "callspec", None)
        names = [value for key, value in spec.params.items() if key in _ROW_PARAMETERS] if spec else []
        if names and not any(variants.runs_triton(name) for name in names):
            item.add_marker(pytest.mark.torch_only)


def pytest_report_header(config):
    return [f"lenet_triton bench on {variants.device_name()}; precision {variants.PRECISION}",
            "Triton rows on CPU run Triton's interpreter: a correctness path, not a speed figure."
            if not variants.GPU else "Triton rows run compiled kernels on the GPU."]


@pytest.fixture(scope="session")
def peak_gflops() -> float:
    """The device's measured float32 matmul rate (GFLOP/s): the ceiling the floor is computed from."""
    n = 8192 if variants.GPU else 1024
    a = torch.randn(n, n, device=variants.DEVICE)
    b = torch.randn(n, n, device=variants.DEVICE)
    for _ in range(2):
        a @ b
    sync()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / sorted(times)[len(times) // 2] / 1e9


@pytest.fixture(scope="session")
def versions() -> dict:
    import onnxruntime
    import triton
    return {"torch": torch.__version__, "triton": triton.__version__, "onnxruntime": onnxruntime.__version__,
            "lenet_triton": lenet_triton.__version__, "python": platform.python_version()}


def timed(benchmark, fn, *, group: str, variant: str, batch: int, flops: float, peak_gflops: float, versions: dict,
          first_call_seconds: float, max_rounds: int = variants.MAX_ROUNDS, **extra) -> None:
    """Times fn (already warmed up and checked) with a device sync inside the timer; median and IQR
    come from pytest-benchmark. The round count aims at variants.TARGET_SECONDS of timed calls.
    `extra` goes into the row as is (the host suite's launches and host_only)."""
    def call():
        fn()
        sync()

    start = time.perf_counter()
    call()
    once = time.perf_counter() - start
    rounds = int(min(max_rounds, max(variants.MIN_ROUNDS, variants.TARGET_SECONDS / max(once, 1e-9))))
    benchmark.group = group
    benchmark.extra_info.update({
        "group": group, "variant": variant, "batch": batch, "flops_per_call": flops, "peak_gflops": peak_gflops,
        "device": variants.device_name(), "precision": variants.PRECISION, "first_call_seconds": first_call_seconds,
        "interpreter": not variants.GPU and variants.runs_triton(variant) and not extra.get("host_only"),
        **versions, **extra})
    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1)


def first_call(fn):
    """Runs fn once (compilation and autotuning happen here) and returns (result, seconds)."""
    start = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - start
