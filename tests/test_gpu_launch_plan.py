"""The GPU launch plan run through the interpreter, so the code paths that only a GPU would take are
compared with float64 torch on every CI run: several row and column tiles with a ragged last one,
several reduction steps, split-K partial sums, several elementwise programs, and 32-bit offsets.
Small tiles (conftest.SMALL_GPU_PLAN) let shapes of a few dozen elements cross each of those
boundaries; each test checks the grids it launched, so a shape change cannot quietly stop crossing
one. On a GPU the same tests run compiled, on cuda tensors. (The whole-network kernels' GPU plan:
tests/test_fused.py.)"""

import pytest
import torch
import torch.nn.functional as F

from lenet_triton import ops
from lenet_triton.kernels import config, reduce
from lenet_triton.testing import assert_close, recorded_launches
from conftest import DEVICE, SMALL_GPU_PLAN, check_against_torch, make


def _grids(launches) -> dict:
    """{kernel name: [grid of each launch]}."""
    grids = {}
    for launch in launches:
        grids.setdefault(launch.kernel, []).append(launch.grid)
    return grids


def _conv(stride=1, padding=0, dilation=1, groups=1):
    return (lambda x, w, b: ops.conv2d(x, w, b, stride, padding, dilation, groups, activation="relu"),
            lambda x, w, b: F.relu(F.conv2d(x, w, b, stride, padding, dilation, groups)))


def test_conv2d_crosses_row_column_group_and_reduction_boundaries(gpu_plan):
    # Per group: 17 input and 18 output channels (two column tiles of 16, the second ragged); rows
    # 2*6*6 = 72 outputs and 2*6*5 = 60 inputs (ragged tiles of 16); reductions 17*2 = 34 and
    # 18*2 = 36 (3 steps of 16), and 72 for the weight gradient (5 steps).
    x = make((2, 34, 6, 5), requires_grad=True)
    w = make((36, 17, 1, 2), requires_grad=True, scale=0.2)
    b = make((36,), requires_grad=True)
    with recorded_launches() as launches:
        check_against_torch(*_conv(padding=(0, 1), groups=2), [x, w, b], name="conv2d, GPU plan, 2 groups")
    # The ReLU's gate on the output gradient: one program per plane of 6*6 positions.
    assert _grids(launches) == {"conv2d_forward_kernel": [(5, 2, 2)], "relu_grad_kernel": [(72, 1)],
                                "conv2d_grad_input_kernel": [(4, 2, 2)], "conv2d_grad_weight_kernel": [(6, 1, 2)]}


def test_conv2d_strided_with_split_k_weight_gradient(gpu_plan):
    # Stride 2 takes grad-input's general (non-unit-stride) path. Output 11 x 6: the weight gradient
    # has 2 tiles of output and a reduction of 2*11*6 = 132 rows (9 steps), cut into 2 split-K slices
    # of 5 and 4 steps, summed by sum_partials for the weight and the bias.
    x = make((2, 2, 23, 16), requires_grad=True)
    w = make((5, 2, 3, 3), requires_grad=True, scale=0.3)
    b = make((5,), requires_grad=True)
    assert config.split_plan(2, 132, 16) == (2, 5)
    with recorded_launches() as launches:
        check_against_torch(*_conv(stride=2, dilation=(1, 2)), [x, w, b], name="conv2d, GPU plan, stride 2")
    # The ReLU's gate: 11*6 = 66 positions a plane, two programs of 64 each.
    assert _grids(launches) == {"conv2d_forward_kernel": [(9, 1, 1)], "relu_grad_kernel": [(10, 2)],
                                "conv2d_grad_input_kernel": [(46, 1, 1)], "conv2d_grad_weight_kernel": [(2, 2, 1)],
                                "sum_partials_kernel": [(2,), (1,)]}


def test_linear_crosses_row_column_and_reduction_boundaries(gpu_plan):
    # 38 rows, 35 outputs, 21 inputs: ragged tiles of 16 in every GEMM, and 2 to 3 reduction steps.
    x = make((2, 19, 21), requires_grad=True)
    w = make((35, 21), requires_grad=True, scale=0.2)
    b = make((35,), requires_grad=True)
    with recorded_launches() as launches:
        check_against_torch(lambda x, w, b: ops.linear(x, w, b, activation="relu"),
                            lambda x, w, b: F.relu(F.linear(x, w, b)), [x, w, b], name="linear, GPU plan")
    # Forward (38 x 35), dX (38 x 21) and dW (35 x 21, with the bias gradient as row sums).
    assert _grids(launches) == {"linear_kernel": [(3, 3, 1), (3, 2, 1), (3, 2, 1)]}


def test_linear_weight_gradient_with_split_k(gpu_plan):
    # dW is 18 x 20 (4 tiles) over 150 rows (10 steps): 2 split-K slices of 5 steps.
    x = make((150, 20), requires_grad=True)
    w = make((18, 20), requires_grad=True, scale=0.2)
    b = make((18,), requires_grad=True)
    with recorded_launches() as launches:
        check_against_torch(lambda x, w, b: ops.linear(x, w, b, activation="relu"),
                            lambda x, w, b: F.relu(F.linear(x, w, b)), [x, w, b], name="linear, GPU plan, split-K")
    assert _grids(launches) == {"linear_kernel": [(10, 2, 1), (10, 2, 1), (2, 2, 2)],
                                "sum_partials_kernel": [(6,), (1,)]}


def test_max_pool2d_forward_and_backward_take_several_programs(gpu_plan):
    # Overlapping 3x3 windows at stride 2 over 2*3 planes: 11*10 = 110 outputs and 21*19 = 399 inputs
    # a plane, in programs of 64 positions of one plane (the last one of each plane short).
    x = make((2, 3, 21, 19), requires_grad=True)
    kwargs = dict(kernel_size=3, stride=2, padding=1)
    with recorded_launches() as launches:
        check_against_torch(lambda x: ops.max_pool2d(x, **kwargs), lambda x: F.max_pool2d(x, **kwargs), [x],
                            name="max_pool2d, GPU plan")
        _, indices = ops.max_pool2d(x, **kwargs, return_indices=True)
    assert torch.equal(indices, F.max_pool2d(x.detach(), **kwargs, return_indices=True)[1])
    assert _grids(launches) == {"max_pool2d_forward_kernel": [(6, 2), (6, 2)], "max_pool2d_backward_kernel": [(6, 7)]}


def test_sum_partials_takes_several_programs(gpu_plan):
    partials, out = make((5, 3000), torch.float64), torch.empty(3000, device=DEVICE, dtype=torch.float64)
    with recorded_launches() as launches:
        reduce.sum_partials(partials, out)
    assert [launch.grid for launch in launches] == [(47,)]
    assert_close(out, partials.sum(0), "sum_partials")


# ------------------------------------------------------------------------------------------------
# Offsets: 32-bit where they fit, 64-bit where they do not (tests/test_large_index.py runs the
# kernels on such views)
# ------------------------------------------------------------------------------------------------

def test_index_dtype_is_int32_where_offsets_fit_and_int64_where_they_do_not():
    import triton.language as tl

    storage = torch.empty(0, device="meta")
    small = torch.empty(4, 6, device="meta")
    # Each stride fits in 32 bits, but the last row starts 3 * 2**30 elements in.
    far_apart = storage.new_empty(0).as_strided((4, 6), (2**30, 1))
    just_fits = storage.new_empty(0).as_strided((2, 1), (config.INT32_LIMIT, 1))
    just_past = storage.new_empty(0).as_strided((2, 1), (config.INT32_LIMIT + 1, 1))
    for plan in (config.GPU_PLAN, config.INTERPRETER_PLAN):
        with config.using_plan(plan):
            assert config.index_dtype(small) == tl.int32
            assert config.index_dtype(small, far_apart) == tl.int64
            assert config.index_dtype(just_fits) == tl.int32 and config.index_dtype(just_past) == tl.int64
            assert config.index_dtype(small, extra=2**31) == tl.int64, "a row count past 2**31 - 1"
            assert config.index_dtype(small, None, extra=2**31 - 1) == tl.int32


# ------------------------------------------------------------------------------------------------
# The plans themselves
# ------------------------------------------------------------------------------------------------

def test_small_gpu_plan_differs_from_the_gpu_plan_only_in_sizes():
    """The tests' plan is the GPU plan's logic with smaller tiles: same class, same launch options."""
    assert type(SMALL_GPU_PLAN) is type(config.GPU_PLAN)
    assert SMALL_GPU_PLAN.lenet_tile == config.GPU_PLAN.lenet_tile
    assert config.GPU_PLAN.gemm_tile(6, 25, 6272) == (16, 32, 32) and config.GPU_PLAN.split(1, 6272, 32, True) == (49, 4)


def test_using_plan_restores_the_plan_and_refuses_anything_else():
    before = config.active_plan()
    with pytest.raises(RuntimeError), config.using_plan(config.GPU_PLAN):
        assert config.active_plan() is config.GPU_PLAN
        raise RuntimeError
    assert config.active_plan() is before
    with pytest.raises(TypeError, match="plan must be an InterpreterPlan or a GpuPlan, got str"):
        with config.using_plan("gpu"):
            pass


def test_host_integer_helpers_match_triton():
    """config's plain-int cdiv and next_power_of_2 (cheaper on the host) agree with triton's."""
    import triton
    for n in range(1, 5000):
        assert config.next_power_of_2(n) == triton.next_power_of_2(n), n
    assert config.next_power_of_2(2**40 + 1) == triton.next_power_of_2(2**40 + 1) == 2**41
    for a in range(0, 200):
        for b in range(1, 40):
            assert config.cdiv(a, b) == triton.cdiv(a, b), (a, b)
