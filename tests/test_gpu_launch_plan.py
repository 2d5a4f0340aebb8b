"""The GPU launch plan (GPU tile sizes, split-K with partial buffers, 32-bit offsets) run through the
interpreter, so the code paths that only a GPU would take are compared with torch on every CI run.
On a GPU the same tests run compiled, on cuda tensors."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from lenet_triton.kernels import config, conv, linear, pool, reduce
from lenet_triton.testing import assert_close
from conftest import DEVICE

randn = partial(torch.randn, device=DEVICE)
empty = partial(torch.empty, device=DEVICE)


@pytest.fixture
def gpu_plan(monkeypatch):
    # The launchers ask config for tiles, splits and index width; the kernels stay interpreted.
    monkeypatch.setattr(config, "_INTERPRETER_PLAN", False)


def test_conv_grad_weight_with_split_k(gpu_plan):
    x, w = randn(8, 1, 32, 32), randn(6, 1, 5, 5)
    g = randn(8, 6, 28, 28)
    splits, _ = config.split_plan(1, 8 * 28 * 28, config.gemm_tile(6, 25, 8 * 28 * 28)[2])
    assert splits > 1, "this test needs the split-K path"
    dw, db = torch.empty_like(w), empty(6)
    conv.conv2d_grad_weight(g, None, x, dw, db, (1, 1), (0, 0, 0, 0), (1, 1), 1, gate_relu=False)
    ref_w = torch.nn.grad.conv2d_weight(x, w.shape, g)
    assert_close(dw, ref_w, "split-K conv dw")
    assert_close(db, g.sum((0, 2, 3)), "split-K conv db")


def test_conv_forward_and_grad_input_with_gpu_tiles(gpu_plan):
    x, w, b = randn(3, 6, 14, 14), randn(16, 6, 5, 5), randn(16)
    y = empty(3, 16, 10, 10)
    conv.conv2d_forward(x, w, b, y, (1, 1), (0, 0, 0, 0), (1, 1), 1, apply_relu=True)
    assert_close(y, F.relu(F.conv2d(x, w, b)), "conv forward")
    g, dx = torch.randn_like(y), torch.empty_like(x)
    conv.conv2d_grad_input(g, y, w, dx, (1, 1), (0, 0, 0, 0), (1, 1), 1, gate_relu=True)
    assert_close(dx, torch.nn.grad.conv2d_input(x.shape, w, g * (y > 0)), "conv dx")


def test_linear_grad_weight_with_split_k(gpu_plan):
    x, g = randn(512, 40), randn(512, 24)
    y = randn(512, 24)
    dw, db = empty(24, 40), empty(24)
    splits, _ = config.split_plan(1, 512, config.gemm_tile(24, 40, 512)[2])
    assert splits > 1, "this test needs the split-K path"
    linear.linear_grad_weight(g, y, x, dw, db, gate_relu=True)
    gated = g * (y > 0)
    assert_close(dw, gated.t() @ x, "split-K linear dw")
    assert_close(db, gated.sum(0), "split-K linear db")


def test_pool_and_partial_sums_with_gpu_blocks(gpu_plan):
    x = randn(2, 3, 9, 8)
    y, idx = empty(2, 3, 4, 4), empty(2, 3, 4, 4, dtype=torch.int64)
    pool.max_pool2d_forward(x, y, idx, (2, 2), (2, 2), (0, 0), (1, 1))
    ref, ref_idx = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(y, ref) and torch.equal(idx, ref_idx)
    partials, out = randn(5, 3000), empty(3000)
    reduce.sum_partials(partials, out)
    assert_close(out, partials.sum(0), "sum_partials")


def test_host_integer_helpers_match_triton():
    """config's plain-int cdiv and next_power_of_2 (cheaper on the host) agree with triton's."""
    import triton
    for n in range(1, 5000):
        assert config.next_power_of_2(n) == triton.next_power_of_2(n), n
    assert config.next_power_of_2(2**40 + 1) == triton.next_power_of_2(2**40 + 1) == 2**41
    for a in range(0, 200):
        for b in range(1, 40):
            assert config.cdiv(a, b) == triton.cdiv(a, b), (a, b)
