"""max_pool2d against torch.nn.functional.max_pool2d: values, indices and the input gradient."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from lenet_triton import ops
from conftest import DTYPES, LAYOUTS, check_against_torch, make


def _check(x_shape, dtype=torch.float32, layout="contiguous", ties=False, **kwargs):
    x = make(x_shape, dtype, layout, requires_grad=True, ties=ties)
    out = check_against_torch(lambda x: ops.max_pool2d(x, **kwargs), lambda x: F.max_pool2d(x, **kwargs), [x],
                              name=f"max_pool2d{kwargs}")
    _, indices = ops.max_pool2d(x, **kwargs, return_indices=True)
    _, ref_indices = F.max_pool2d(x.detach(), **kwargs, return_indices=True)
    assert indices.dtype == torch.int64
    assert torch.equal(indices, ref_indices), f"indices differ from torch at {(indices != ref_indices).nonzero()[:5]}"
    return out


def test_lenet_shapes():
    _check((8, 6, 28, 28), kernel_size=2)
    _check((8, 16, 10, 10), kernel_size=2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes(dtype):
    _check((2, 3, 9, 8), dtype, kernel_size=3, stride=2, padding=1)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts(layout):
    y = _check((2, 5, 9, 11), layout=layout, kernel_size=(3, 2), stride=(2, 1))
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3),                                               # stride defaults to kernel_size
    dict(kernel_size=(2, 3), stride=(1, 2)),                           # overlapping windows, wider than tall
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=3, stride=2, ceil_mode=True),
    dict(kernel_size=(3, 2), stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=3, stride=2, dilation=2),
    dict(kernel_size=2, stride=2, dilation=(2, 1), padding=1, ceil_mode=True),
    dict(kernel_size=1),
    dict(kernel_size=[2, 2], stride=[]),                               # empty stride means kernel_size, as in torch
], ids=str)
def test_arguments(kwargs, plan):
    _check((2, 3, 13, 11), **kwargs)


def test_unbatched_and_empty_batch():
    _check((3, 7, 7), kernel_size=2)
    y = _check((0, 3, 7, 7), kernel_size=2)
    assert y.shape == (0, 3, 3, 3)


@given(
    n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 11), w=st.integers(1, 11),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)), stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)), dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    ceil_mode=st.booleans(), layout=st.sampled_from(LAYOUTS), ties=st.booleans(),
)
def test_property_matches_torch(n, c, h, w, kernel, stride, padding, dilation, ceil_mode, layout, ties):
    padding = tuple(min(p, k // 2) for p, k in zip(padding, kernel))
    kwargs = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    try:
        expected = F.max_pool2d(torch.zeros(n, c, h, w), **kwargs)
    except RuntimeError:
        with pytest.raises(ValueError, match="larger than the padded input"):
            ops.max_pool2d(make((n, c, h, w)), **kwargs)
        return
    if torch.isinf(expected).any():
        # A window of padding only (a dilation past the input): torch gives -inf and an index outside
        # the input, and its backward writes there; ours refuses.
        with pytest.raises(ValueError, match="covers only padding"):
            ops.max_pool2d(make((n, c, h, w)), **kwargs)
        return
    # With ties, few distinct values: windows hold equal maxima, so the tie-break (indices, and where
    # the gradient goes) must match torch's.
    assert _check((n, c, h, w), layout=layout, ties=ties, **kwargs).shape == expected.shape


def test_nan_wins_the_window_and_inf_is_a_value():
    x = make((1, 2, 6, 6))
    x[0, 0, 1, 1] = float("nan")
    x[0, 0, 0, 0] = float("nan")        # two NaNs in one window: torch keeps the last one scanned
    x[0, 1, 2, 2] = float("inf")
    x[0, 1, 4, :] = float("-inf")
    x[0, 1, 5, :] = float("-inf")
    y, idx = ops.max_pool2d(x, 2, return_indices=True)
    ref, ref_idx = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(y.nan_to_num(), ref.nan_to_num())
    assert torch.equal(idx, ref_idx)


def test_gradcheck_float64():
    # Distinct values keep the max unique under gradcheck's perturbation.
    x = (torch.randperm(2 * 3 * 7 * 6, dtype=torch.float64) / 10).reshape(2, 3, 7, 6).to(make((1,)).device)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ops.max_pool2d(x, (3, 2), stride=(2, 1), padding=1, ceil_mode=True),
                                    (x,), fast_mode=True)
