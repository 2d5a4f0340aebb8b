"""Offsets past 2**31 elements: every kernel addresses such tensors with 64-bit index arithmetic.

One storage of 2**31 + 4096 float32 elements (8 GiB of address space; on the CPU only the pages
written are ever backed) holds views of three batch entries 2**30 elements apart. Each stride fits
in 32 bits, but the third entry's offset (2 * 2**30) does not, so 32-bit index arithmetic would
wrap and read or write the wrong place.

Under both launch plans, each of which picks 32-bit offsets wherever they fit. Each op is first run
with its launches stubbed out, to check that every launch that reaches the far storage chose int64
(and the others int32) before any of them runs with a wrong width.
"""

import pytest
import torch
import torch.nn.functional as F
import triton.language as tl

from lenet_triton import ops
from lenet_triton.testing import assert_close, recorded_launches
from conftest import DEVICE

pytestmark = pytest.mark.usefixtures("plan")

STEP = 2**30


@pytest.fixture(scope="module")
def storage():
    return torch.empty(2 * STEP + 4096, dtype=torch.float32, device=DEVICE)


def _far_apart(storage, shape, offset=0):
    """A (3, ...) view of random data whose batch entries are STEP elements apart."""
    inner = torch.Size(shape[1:]).numel()
    view = storage.as_strided(shape, (STEP, *torch.empty(shape[1:]).stride()), offset)
    view.copy_(torch.randn(shape, device=DEVICE))
    assert view.stride(0) * (shape[0] - 1) + inner > 2**31 - 1
    return view


def _grads(fn, inputs, upstream):
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = fn(*inputs)
    return (out, *torch.autograd.grad(out, inputs, upstream))


def _every_launch_takes_int64(fn, inputs, upstream):
    """Each launch that addresses the far-apart storage takes int64 offsets, and every other launch
    (on small tensors of its own) int32."""
    far = inputs[0].untyped_storage().data_ptr()
    with recorded_launches(run=False) as launches:
        _grads(fn, inputs, upstream)
    widths = [(launch.kernel, any(isinstance(arg, torch.Tensor) and arg.untyped_storage().data_ptr() == far
                                  for arg in launch.args), launch.kwargs["IDX"]) for launch in launches]
    assert any(reaches for _, reaches, _ in widths), widths
    assert all(width == (tl.int64 if reaches else tl.int32) for _, reaches, width in widths), widths


def test_conv2d(storage):
    x = _far_apart(storage, (3, 3, 6, 5))
    upstream = _far_apart(storage, (3, 4, 6, 5), offset=512)
    w, b = torch.randn(4, 3, 3, 3, device=DEVICE), torch.randn(4, device=DEVICE)
    _every_launch_takes_int64(lambda x, w, b: ops.conv2d(x, w, b, padding=1, activation="relu"), [x, w, b], upstream)
    ours = _grads(lambda x, w, b: ops.conv2d(x, w, b, padding=1, activation="relu"), [x, w, b], upstream)
    ref = _grads(lambda x, w, b: F.relu(F.conv2d(x, w, b, padding=1)), [x, w, b], upstream)
    for name, got, expected in zip(["output", "dx", "dw", "db"], ours, ref):
        assert_close(got, expected, f"conv2d {name}")


def test_max_pool2d(storage):
    x = _far_apart(storage, (3, 3, 6, 6))
    upstream = _far_apart(storage, (3, 3, 3, 3), offset=512)
    _every_launch_takes_int64(lambda x: ops.max_pool2d(x, 2), [x], upstream)
    (y, idx), (ref, ref_idx) = ops.max_pool2d(x, 2, return_indices=True), F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(idx, ref_idx)
    ours = _grads(lambda x: ops.max_pool2d(x, 2), [x], upstream)
    expected = _grads(lambda x: F.max_pool2d(x, 2), [x], upstream)
    for name, got, want in zip(["output", "dx"], ours, expected):
        assert_close(got, want, f"max_pool2d {name}")


def test_linear(storage):
    x = _far_apart(storage, (3, 7))
    upstream = _far_apart(storage, (3, 5), offset=512)
    w, b = torch.randn(5, 7, device=DEVICE), torch.randn(5, device=DEVICE)
    _every_launch_takes_int64(lambda x, w, b: ops.linear(x, w, b, activation="relu"), [x, w, b], upstream)
    ours = _grads(lambda x, w, b: ops.linear(x, w, b, activation="relu"), [x, w, b], upstream)
    ref = _grads(lambda x, w, b: F.relu(F.linear(x, w, b)), [x, w, b], upstream)
    for name, got, expected in zip(["output", "dx", "dw", "db"], ours, ref):
        assert_close(got, expected, f"linear {name}")
