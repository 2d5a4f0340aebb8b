"""Host time: what the CPU spends per training step and per op call when every Triton launch is a
no-op (lenet_triton.testing.recorded_launches(run=False)), at batch 1. On a GPU this host work is the
step time until the batch is large, so it decides whether a backend can beat eager there.

Rows: a whole training step for each of variants.HOST_STEP_VARIANTS ("eager" is a real step on the
torch backend, the yardstick), then each op call, forward and backward, of the per-op and fused
backends. Each row records its Triton launches per call.
"""

import pytest
import torch
import torch.nn.functional as F

from bench import variants
from bench.conftest import first_call, timed
from lenet_triton import LeNet, TrainStep, ops
from lenet_triton.testing import recorded_launches

B = variants.HOST_BATCH


def make_step(variant: str):
    """step() runs one training step of LeNet at batch B with SGD and momentum."""
    torch.manual_seed(0)
    model = LeNet(backend=variants.backend_of(variant)).to(variants.DEVICE)
    images = torch.randn(B, 1, 32, 32, device=variants.DEVICE)
    labels = torch.randint(0, 10, (B,), device=variants.DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if variant == "fused-step":
        train_step = TrainStep(model, optimizer)
        return lambda: train_step(images, labels)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss
    return step


def _inputs(*shapes):
    return [torch.randn(s, device=variants.DEVICE, requires_grad=True) for s in shapes]


def make_op_call(backend: str, op: str, direction: str):
    """call() makes one op call at LeNet's shapes, batch B: the forward, or the backward of a graph
    built once (torch.autograd.grad with retain_graph), as a training step calls them."""
    torch.manual_seed(0)
    if backend == "fused":
        images = torch.randn(B, 1, 32, 32, device=variants.DEVICE)
        params = [p.detach().requires_grad_() for p in LeNet(backend="fused").to(variants.DEVICE).fused_parameters()]
        inputs, forward = params, lambda *ps: ops.lenet(images, ps)
    elif op == "conv2d+relu":
        inputs, forward = _inputs((B, 6, 14, 14), (16, 6, 5, 5), (16,)), \
            lambda x, w, b: ops.conv2d(x, w, b, activation="relu")
    elif op == "max_pool2d":
        inputs, forward = _inputs((B, 6, 28, 28)), lambda x: ops.max_pool2d(x, 2)
    else:
        inputs, forward = _inputs((B, 400), (120, 400), (120,)), \
            lambda x, w, b: ops.linear(x, w, b, activation="relu")
    if direction == "forward":
        return lambda: forward(*inputs)
    out = forward(*inputs)
    upstream = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, inputs, upstream, retain_graph=True)


def _time_without_launches(benchmark, fn, *, group, variant, versions, peak_gflops, stub=True):
    """Times fn with launches stubbed (or for real when stub=False) and records launches per call."""
    with recorded_launches(run=not stub) as launches:
        _, seconds = first_call(fn)
        per_call = len(launches)
        timed(benchmark, fn, group=group, variant=variant, batch=B, flops=0, peak_gflops=peak_gflops,
              versions=versions, first_call_seconds=seconds, max_rounds=variants.HOST_MAX_ROUNDS,
              launches=per_call, host_only=stub)
    return per_call


@pytest.mark.parametrize("variant", variants.HOST_STEP_VARIANTS)
def test_host_training_step(benchmark, variant, peak_gflops, versions):
    step = make_step(variant)
    step()  # compiles (on a GPU) and creates the optimizer state with real launches
    launches = _time_without_launches(benchmark, step, group=f"host: training step, batch {B}", variant=variant,
                                      versions=versions, peak_gflops=peak_gflops, stub=variant != "eager")
    assert (launches == 0) == (variant == "eager"), f"{variant}: {launches} Triton launches per step"


@pytest.mark.parametrize("row", variants.host_op_rows())
def test_host_op_call(benchmark, row, peak_gflops, versions):
    call = make_op_call(*row.split(" "))
    call()
    launches = _time_without_launches(benchmark, call, group=f"host: op calls, batch {B}", variant=row,
                                      versions=versions, peak_gflops=peak_gflops)
    assert launches >= 1, f"{row} launched no Triton kernel"
