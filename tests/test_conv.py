"""conv2d against torch.nn.functional.conv2d: outputs, grad-input, grad-weight and grad-bias."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from lenet_triton import ops
from conftest import DTYPES, LAYOUTS, check_against_torch, make


def _ours(stride=1, padding=0, dilation=1, groups=1, activation=None):
    return lambda x, w, b: ops.conv2d(x, w, b, stride, padding, dilation, groups, activation=activation)


def _torch(stride=1, padding=0, dilation=1, groups=1, activation=None):
    def run(x, w, b):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Using padding='same'")  # torch's note about its own copy
            y = F.conv2d(x, w, b, stride, padding, dilation, groups)
        return F.relu(y) if activation == "relu" else y
    return run


def _check(x_shape, w_shape, bias=True, dtype=torch.float32, layout="contiguous", **kwargs):
    x = make(x_shape, dtype, layout, requires_grad=True)
    w = make(w_shape, dtype, requires_grad=True, scale=0.3)
    b = make((w_shape[0],), dtype, requires_grad=True) if bias else None
    return check_against_torch(_ours(**kwargs), _torch(**kwargs), [x, w, b], name=f"conv2d{kwargs}")


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("x_shape, w_shape", [((8, 1, 32, 32), (6, 1, 5, 5)), ((8, 6, 14, 14), (16, 6, 5, 5))],
                         ids=["conv1", "conv2"])
def test_lenet_shapes(x_shape, w_shape, activation):
    _check(x_shape, w_shape, activation=activation)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes(dtype):
    _check((3, 5, 11, 9), (7, 5, 3, 3), dtype=dtype, padding=1, activation="relu")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts(layout):
    y = _check((2, 4, 9, 10), (6, 4, 3, 2), layout=layout, padding=(1, 0), activation="relu")
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last), "channels_last in should give channels_last out"


@pytest.mark.parametrize("case", [
    dict(x_shape=(3, 7, 13, 11), w_shape=(5, 7, 3, 7)),                       # primes, kernel wider than tall
    dict(x_shape=(2, 3, 5, 5), w_shape=(4, 3, 1, 1)),                         # 1x1 kernel
    dict(x_shape=(1, 2, 1, 1), w_shape=(3, 2, 1, 1)),                         # 1x1 image
    dict(x_shape=(2, 3, 17, 13), w_shape=(5, 3, 3, 5), stride=(2, 3), padding=(1, 2)),
    dict(x_shape=(2, 3, 15, 16), w_shape=(4, 3, 3, 3), dilation=(2, 3), padding=2),
    dict(x_shape=(2, 6, 9, 8), w_shape=(9, 2, 3, 3), groups=3, padding=1),
    dict(x_shape=(2, 4, 7, 7), w_shape=(4, 1, 3, 3), groups=4, stride=2),    # depthwise
    dict(x_shape=(2, 3, 10, 9), w_shape=(4, 3, 4, 2), padding="same"),        # even kernel: asymmetric pads
    dict(x_shape=(2, 3, 10, 9), w_shape=(4, 3, 3, 3), padding="same", dilation=2),
    dict(x_shape=(2, 3, 10, 9), w_shape=(4, 3, 3, 3), padding="valid", stride=3),
    dict(x_shape=(2, 3, 8, 8), w_shape=(5, 3, 3, 3), bias=False, activation="relu"),
    dict(x_shape=(3, 8, 8), w_shape=(5, 3, 3, 3), padding=1),                 # unbatched
    dict(x_shape=(0, 3, 8, 8), w_shape=(5, 3, 3, 3)),                         # empty batch
], ids=lambda case: ",".join(f"{k}={v}" for k, v in case.items()))
def test_odd_cases(case, plan):
    _check(**case)


def test_empty_batch_gradients_are_zero():
    x = make((0, 3, 6, 6), requires_grad=True)
    w = make((4, 3, 3, 3), requires_grad=True)
    b = make((4,), requires_grad=True)
    ops.conv2d(x, w, b).sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


@given(
    n=st.integers(1, 3), groups=st.integers(1, 3), c_in_g=st.integers(1, 3), c_out_g=st.integers(1, 3),
    h=st.integers(1, 12), w=st.integers(1, 12), kh=st.integers(1, 4), kw=st.integers(1, 4),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)), dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.one_of(st.tuples(st.integers(0, 2), st.integers(0, 2)), st.just("same"), st.just("valid")),
    bias=st.booleans(), activation=st.sampled_from([None, "relu"]), layout=st.sampled_from(LAYOUTS),
)
def test_property_matches_torch(n, groups, c_in_g, c_out_g, h, w, kh, kw, stride, dilation, padding, bias,
                                activation, layout):
    if padding == "same":
        stride = (1, 1)
    pads = padding if isinstance(padding, tuple) else (0, 0)
    same = padding == "same"
    if not same and (dilation[0] * (kh - 1) + 1 > h + 2 * pads[0] or dilation[1] * (kw - 1) + 1 > w + 2 * pads[1]):
        with pytest.raises(ValueError, match="larger than the padded input"):
            ops.conv2d(make((n, groups * c_in_g, h, w)), make((groups * c_out_g, c_in_g, kh, kw)), padding=padding,
                       stride=stride, dilation=dilation, groups=groups)
        return
    _check((n, groups * c_in_g, h, w), (groups * c_out_g, c_in_g, kh, kw), bias=bias, layout=layout, stride=stride,
           padding=padding, dilation=dilation, groups=groups, activation=activation)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nan_and_inf_propagate_like_torch():
    x = make((2, 3, 8, 8))
    x[0, 1, 2, 3] = float("nan")
    x[1, 0, 5, 5] = float("inf")
    w = make((4, 3, 3, 3))
    b = make((4,))
    for activation in (None, "relu"):
        ours = ops.conv2d(x, w, b, padding=1, activation=activation)
        ref = _torch(padding=1, activation=activation)(x.double(), w.double(), b.double())
        assert torch.equal(torch.isnan(ours), torch.isnan(ref)), "NaN positions differ from torch"
        assert torch.equal(torch.isinf(ours), torch.isinf(ref)), "Inf positions differ from torch"


@pytest.mark.parametrize("activation", [None, "relu"])
def test_gradcheck_float64(activation):
    x = make((2, 4, 5, 4), torch.float64, requires_grad=True)
    w = make((4, 2, 3, 2), torch.float64, requires_grad=True)
    b = make((4,), torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: ops.conv2d(x, w, b, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2,
                                   activation=activation), (x, w, b), fast_mode=True)
