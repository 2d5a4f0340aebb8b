"""The ops as torch.library custom ops: opcheck, torch.compile(fullgraph=True) and torch.export."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from lenet_triton import ops
from lenet_triton.testing import assert_close
from conftest import make


def _lenet_like(x, w1, b1, w2, b2):
    h = ops.max_pool2d(ops.conv2d(x, w1, b1, padding=1, activation="relu"), 2)
    return ops.linear(h.flatten(1), w2, b2, activation="relu")


def _torch_lenet_like(x, w1, b1, w2, b2):
    h = F.max_pool2d(F.relu(F.conv2d(x, w1, b1, padding=1)), 2)
    return F.relu(F.linear(h.flatten(1), w2, b2))


def _check_against_functional(output, grads, params, upstream, what):
    """output and the gradients of params (float32) against torch.nn.functional's in float64."""
    exact = [p.detach().double().requires_grad_() for p in params]
    expected = _torch_lenet_like(*exact)
    assert_close(output.double(), expected, f"{what} output", dtype=torch.float32)
    for i, (got, want) in enumerate(zip(grads, torch.autograd.grad(expected, exact, upstream.double()))):
        assert_close(got.double(), want, f"{what} grad {i}", dtype=torch.float32)


def _params():
    x = make((3, 2, 8, 8), requires_grad=True)
    w1 = make((4, 2, 3, 3), requires_grad=True, scale=0.3)
    b1 = make((4,), requires_grad=True)
    w2 = make((5, 64), requires_grad=True, scale=0.2)
    b2 = make((5,), requires_grad=True)
    return [x, w1, b1, w2, b2]


@pytest.mark.parametrize("op, args", [
    ("conv2d", lambda: (make((2, 3, 6, 5)), make((4, 3, 3, 2)), make((4,)), [1, 2], [1, 0, 1, 0], [1, 1], 1, True)),
    ("max_pool2d", lambda: (make((2, 3, 7, 6)), [3, 2], [2, 1], [1, 1], [1, 1], True)),
    ("linear", lambda: (make((2, 3, 7)), make((5, 7)), make((5,)), True)),
])
def test_opcheck(op, args):
    """torch.library.opcheck: schema, fake tensor, autograd registration and dispatch are consistent."""
    inputs = [t.requires_grad_() if isinstance(t, torch.Tensor) and t.dtype.is_floating_point else t for t in args()]
    torch.library.opcheck(getattr(torch.ops.lenet_triton, op).default, inputs,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.slow
def test_compile_fullgraph_matches_torch_with_gradients():
    torch._dynamo.reset()
    params = _params()
    upstream = torch.randn(3, 5, device=params[0].device)
    compiled = torch.compile(_lenet_like, fullgraph=True)(*params)  # fullgraph: any graph break raises
    _check_against_functional(compiled, torch.autograd.grad(compiled, params, upstream), params, upstream, "compiled")


def test_compile_keeps_ops_opaque_without_graph_breaks():
    torch._dynamo.reset()
    params = [p.detach() for p in _params()]
    explanation = torch._dynamo.explain(_lenet_like)(*params)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    targets = {str(node.target) for graph in explanation.graphs for node in graph.graph.nodes}
    assert {"lenet_triton.conv2d.default", "lenet_triton.max_pool2d.default", "lenet_triton.linear.default"} <= targets


def test_torch_export_runs_and_matches():
    x, w1, b1, w2, b2 = [p.detach() for p in _params()]

    class Small(torch.nn.Module):
        def forward(self, x):
            return _lenet_like(x, w1, b1, w2, b2)

    program = torch.export.export(Small(), (x,))
    called = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "lenet_triton.conv2d.default" in called and "lenet_triton.linear.default" in called
    reference = _torch_lenet_like(*[t.double() for t in (x, w1, b1, w2, b2)])
    assert_close(program.module()(x).double(), reference, "exported program vs torch", dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# The plain eager path: the same kernels as the custom ops, without their dispatch layers
# ---------------------------------------------------------------------------------------------

def _refusing_custom_ops(monkeypatch):
    """Makes every lenet_triton custom op raise when called from Python, as the eager path must not."""
    def refuse(*args, **kwargs):
        raise AssertionError("a plain eager call went through the custom op")
    for family in ("conv", "pool", "linear", "lenet"):
        for value in vars(importlib.import_module(f"lenet_triton.ops.{family}")).values():
            if isinstance(value, ops.common.KernelOp):
                monkeypatch.setattr(value, "op", refuse)


def test_plain_eager_calls_skip_the_custom_ops_and_give_the_same_results(monkeypatch):
    inputs = _params()
    via_ops = [t.detach().clone().requires_grad_() for t in inputs]
    x, w1, b1, w2, b2 = via_ops
    h = torch.ops.lenet_triton.conv2d(x, w1, b1, [1, 1], [1, 1, 1, 1], [1, 1], 1, True)
    h = torch.ops.lenet_triton.max_pool2d(h, [2, 2], [2, 2], [0, 0], [1, 1], False)[0]
    expected = torch.ops.lenet_triton.linear(h.flatten(1), w2, b2, True)
    expected.square().sum().backward()
    _refusing_custom_ops(monkeypatch)
    out = _lenet_like(*inputs)
    out.square().sum().backward()
    assert torch.equal(out, expected)
    for ours, theirs in zip(inputs, via_ops):
        assert torch.equal(ours.grad, theirs.grad)
    _check_against_functional(out, [t.grad for t in inputs], inputs, 2 * out.detach(), "plain eager")


def test_traced_and_fake_calls_still_use_the_custom_ops(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    _refusing_custom_ops(monkeypatch)
    with FakeTensorMode(), pytest.raises(AssertionError, match="went through the custom op"):
        ops.linear(torch.randn(2, 3), torch.randn(4, 3))
    with pytest.raises(AssertionError, match="went through the custom op"):
        ops.linear(torch.randn(2, 3, device="meta"), torch.randn(4, 3, device="meta"))


@pytest.mark.parametrize("call", [
    lambda x, w1, b1, w2, b2: ops.linear(x.flatten(1)[:, :64], w2, b2, activation="relu"),
    lambda x, w1, b1, w2, b2: ops.conv2d(x, w1, b1),
    lambda x, w1, b1, w2, b2: ops.max_pool2d(x, 2),
], ids=["linear", "conv2d", "max_pool2d"])
def test_a_second_derivative_is_refused_not_silently_zero(call):
    """The backward ops have no derivative: under create_graph=True they run as custom ops, whose
    missing formula torch reports at the second backward, as it always did."""
    inputs = _params()
    out = call(*inputs).square().sum()
    (grad_x,) = torch.autograd.grad(out, [inputs[0]], create_graph=True)
    with pytest.raises(RuntimeError, match=r"lenet_triton\.\w+_backward|lenet_triton\.\w+_grad_input.*no autograd formula"):
        grad_x.sum().backward()
