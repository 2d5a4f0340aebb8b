"""lenet_triton.testing.recorded_launches: counts every launch, and with run=False really launches
nothing (the host-time benchmark relies on that), then puts the kernels back."""

import pytest
import torch
import triton
import triton.language as tl

from lenet_triton import LeNet
from lenet_triton.kernels import linear
from lenet_triton.testing import recorded_launches
from conftest import DEVICE


def _linear_into_nan_output():
    x, w = torch.randn(5, 7, device=DEVICE), torch.randn(3, 7, device=DEVICE)
    y = torch.full((5, 3), float("nan"), device=DEVICE)
    linear.linear_forward(x, w, None, y, apply_relu=False)
    return y, x @ w.t()


def test_stubbed_launches_write_nothing_and_are_recorded():
    with recorded_launches(run=False) as launches:
        y, _ = _linear_into_nan_output()
    assert [launch.kernel for launch in launches] == ["linear_kernel"]
    assert torch.isnan(y).all(), "a stubbed launch wrote its output"


def test_recorded_launches_still_run_and_kernels_are_restored():
    with recorded_launches() as launches:
        y, expected = _linear_into_nan_output()
    assert len(launches) == 1 and torch.allclose(y, expected, atol=1e-5)
    y, expected = _linear_into_nan_output()
    assert torch.allclose(y, expected, atol=1e-5), "the kernel stayed stubbed after the block"


def test_a_lenet_step_launches_every_kernel_family():
    model = LeNet().to(DEVICE)
    with recorded_launches(run=False) as launches:
        model(torch.randn(2, 1, 32, 32, device=DEVICE)).sum().backward()
    assert {launch.kernel for launch in launches} >= {
        "conv2d_forward_kernel", "conv2d_grad_weight_kernel", "conv2d_grad_input_kernel", "relu_grad_kernel",
        "max_pool2d_forward_kernel", "max_pool2d_backward_kernel", "linear_kernel"}
    # 7 forward and 12 backward (conv2's input gradient gates its ReLU in a launch of its own), plus a
    # split-K reduction where the GPU plan splits a long sum.
    main = [launch.kernel for launch in launches if launch.kernel != "sum_partials_kernel"]
    assert len(main) == 19, main


@triton.jit
def _outside_kernel(x_ptr):
    tl.store(x_ptr, 1.0)


def test_a_kernel_that_is_not_stubbed_is_refused_not_run():
    x = torch.zeros(1, device=DEVICE)
    with pytest.raises(RuntimeError, match="_outside_kernel.*would run for real"):
        with recorded_launches(run=False):
            _outside_kernel[(1,)](x)
    assert x.item() == 0
    _outside_kernel[(1,)](x)  # launches again once the block is left
    assert x.item() == 1
