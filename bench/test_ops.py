"""Per-op timings at LeNet's shapes: each Triton op against torch, forward and backward.

Backward times torch.autograd.grad on a graph built once (retain_graph), so it holds only the
backward kernels: grad-input and grad-weight/bias for conv and linear, the scatter for pooling.
"""

import pytest
import torch
import torch.nn.functional as F

from bench import variants
from bench.conftest import first_call, timed
from lenet_triton import ops
from lenet_triton.testing import assert_close

B = variants.OP_BATCH

# name -> (input shapes, triton op, torch op, forward MACs per sample)
OPS = {
    "conv2d+relu (conv2)": ([(B, 6, 14, 14), (16, 6, 5, 5), (16,)],
                            lambda x, w, b: ops.conv2d(x, w, b, activation="relu"),
                            lambda x, w, b: F.relu(F.conv2d(x, w, b)), 10 * 10 * 16 * 150),
    "max_pool2d (pool1)": ([(B, 6, 28, 28)], lambda x: ops.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2), 0),
    "linear+relu (fc1)": ([(B, 400), (120, 400), (120,)], lambda x, w, b: ops.linear(x, w, b, activation="relu"),
                          lambda x, w, b: F.relu(F.linear(x, w, b)), 400 * 120),
}


def _inputs(shapes):
    torch.manual_seed(0)
    return [torch.randn(s, device=variants.DEVICE, requires_grad=True) for s in shapes]


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("impl", variants.OP_IMPLEMENTATIONS)
@pytest.mark.parametrize("name", list(OPS))
def test_op(benchmark, name, impl, direction, peak_gflops, versions):
    shapes, triton_op, torch_op, macs = OPS[name]
    fn = triton_op if impl == "triton" else torch_op
    inputs = _inputs(shapes)
    reference_inputs = _inputs(shapes)
    out, ref = fn(*inputs), torch_op(*reference_inputs)
    assert_close(out, ref, f"{name} {impl} output vs torch")
    upstream = torch.randn_like(ref)
    grads = torch.autograd.grad(out, inputs, upstream, retain_graph=True)
    for got, expected in zip(grads, torch.autograd.grad(ref, reference_inputs, upstream)):
        assert_close(got, expected, f"{name} {impl} gradient vs torch")
    if direction == "forward":
        def run():
            with torch.no_grad():
                return fn(*inputs)
        flops = 2 * macs * B
    else:
        def run():
            return torch.autograd.grad(out, inputs, upstream, retain_graph=True)
        flops = 4 * macs * B
    _, seconds = first_call(run)
    timed(benchmark, run, group=f"op: {name} {direction}, batch {B}", variant=impl, batch=B, flops=flops,
          peak_gflops=peak_gflops, versions=versions, first_call_seconds=seconds)
