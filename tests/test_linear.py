"""linear (+ fused ReLU) against torch.nn.functional.linear: output, dX, dW and db."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from lenet_triton import ops
from conftest import DTYPES, check_against_torch, make


def _check(x_shape, out_features, bias=True, dtype=torch.float32, layout="contiguous", activation=None):
    x = make(x_shape, dtype, layout, requires_grad=True)
    w = make((out_features, x_shape[-1]), dtype, requires_grad=True, scale=0.2)
    b = make((out_features,), dtype, requires_grad=True) if bias else None

    def reference(x, w, b):
        y = F.linear(x, w, b)
        return F.relu(y) if activation == "relu" else y

    return check_against_torch(lambda x, w, b: ops.linear(x, w, b, activation=activation), reference, [x, w, b],
                               name=f"linear(activation={activation})")


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("x_shape, out_features", [((64, 400), 120), ((64, 120), 84), ((64, 84), 10)],
                         ids=["fc1", "fc2", "fc3"])
def test_lenet_shapes(x_shape, out_features, activation):
    _check(x_shape, out_features, activation=activation)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes(dtype):
    _check((13, 37), 19, dtype=dtype, activation="relu")


@pytest.mark.parametrize("case", [
    dict(x_shape=(5,), out_features=3),                    # no batch dim
    dict(x_shape=(2, 3, 7, 11), out_features=5),           # several leading dims
    dict(x_shape=(0, 9), out_features=4),                  # empty batch
    dict(x_shape=(7, 1), out_features=1),
    dict(x_shape=(3, 0), out_features=4),                  # no input features: output is the bias
    dict(x_shape=(2, 3, 0), out_features=4, activation="relu"),
    dict(x_shape=(31, 17), out_features=23, bias=False, activation="relu"),
    dict(x_shape=(6, 10), out_features=8, layout="strided", activation="relu"),
    dict(x_shape=(3, 5, 10), out_features=8, layout="strided"),
], ids=lambda case: ",".join(f"{k}={v}" for k, v in case.items()))
def test_odd_cases(case, plan):
    _check(**case)


def test_transposed_input_and_weight():
    x = make((9, 6), requires_grad=True)
    w = make((9, 4), requires_grad=True)
    check_against_torch(lambda x, w: ops.linear(x.t(), w.t()), lambda x, w: F.linear(x.t(), w.t()), [x, w],
                        name="linear on transposed views")


@given(m=st.integers(1, 40), k=st.integers(1, 70), n=st.integers(1, 40), bias=st.booleans(),
       activation=st.sampled_from([None, "relu"]), lead=st.integers(1, 3))
def test_property_matches_torch(m, k, n, bias, activation, lead):
    _check((lead, m, k), n, bias=bias, activation=activation)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nan_and_inf_propagate_like_torch():
    x = make((4, 6))
    x[1, 2] = float("nan")
    x[3, 0] = float("inf")
    w = make((5, 6))
    for activation in (None, "relu"):
        ours = ops.linear(x, w, activation=activation)
        ref = F.linear(x, w)
        ref = F.relu(ref) if activation else ref
        assert torch.equal(torch.isnan(ours), torch.isnan(ref))
        assert torch.equal(torch.isinf(ours), torch.isinf(ref))


@pytest.mark.parametrize("activation", [None, "relu"])
def test_gradcheck_float64(activation):
    x = make((3, 4, 7), torch.float64, requires_grad=True)
    w = make((5, 7), torch.float64, requires_grad=True)
    b = make((5,), torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: ops.linear(x, w, b, activation=activation), (x, w, b),
                                    fast_mode=True)
