"""linear with an optional fused ReLU: argument checks, the custom ops (forward and both gradients),
their fakes and autograd."""

import math
from typing import Optional

from torch import Tensor

from ..kernels.linear import linear_forward, linear_grad_input, linear_grad_weight
from .common import check_activation, check_ndim, check_tensors, kernel_op


def _rows(t: Tensor) -> Tensor:
    """Any leading dims flattened into one: (..., K) -> (M, K); a view when the strides allow."""
    if t.dim() == 2:
        return t
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


@kernel_op("lenet_triton::linear")
def _linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool) -> Tensor:
    """linear over the last dim of x (any leading dims), ReLU fused when relu."""
    y = x.new_empty((*x.shape[:-1], weight.shape[0]))
    if y.numel() > 0:
        linear_forward(_rows(x), weight, bias, y.view(-1, weight.shape[0]), relu)
    return y


@_linear.register_fake
def _(x, weight, bias, relu):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@kernel_op("lenet_triton::linear_grad_input")
def _linear_grad_input(grad_y: Tensor, y: Optional[Tensor], weight: Tensor) -> Tensor:
    """Gradient of linear with respect to its input; y given = fused ReLU."""
    dx = grad_y.new_empty((*grad_y.shape[:-1], weight.shape[1]))
    if dx.numel() > 0:
        linear_grad_input(_rows(grad_y), None if y is None else _rows(y), weight, dx.view(-1, weight.shape[1]),
                          gate_relu=y is not None)
    return dx


@_linear_grad_input.register_fake
def _(grad_y, y, weight):
    return grad_y.new_empty((*grad_y.shape[:-1], weight.shape[1]))


@kernel_op("lenet_triton::linear_grad_weight")
def _linear_grad_weight(grad_y: Tensor, y: Optional[Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of linear with respect to the weight and the bias; y given = fused ReLU."""
    dw = x.new_empty((grad_y.shape[-1], x.shape[-1]))
    db = x.new_empty(grad_y.shape[-1])
    if grad_y.numel() == 0:
        return dw.zero_(), db.zero_()
    linear_grad_weight(_rows(grad_y), None if y is None else _rows(y), _rows(x), dw, db, gate_relu=y is not None)
    return dw, db


@_linear_grad_weight.register_fake
def _(grad_y, y, x):
    return x.new_empty((grad_y.shape[-1], x.shape[-1])), x.new_empty(grad_y.shape[-1])


def _linear_setup_context(ctx, inputs, output):
    x, weight, bias, relu = inputs
    ctx.save_for_backward(x, weight, output if relu else None)
    ctx.has_bias = bias is not None


def _linear_backward(ctx, grad_y):
    x, weight, y = ctx.saved_tensors
    dx = dw = db = None
    if ctx.needs_input_grad[0]:
        dx = _linear_grad_input(grad_y, y, weight)
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        dw, db = _linear_grad_weight(grad_y, y, x)
    return dx, dw, db if ctx.has_bias else None, None


_linear.register_autograd(_linear_backward, setup_context=_linear_setup_context)


def linear(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, activation: Optional[str] = None) -> Tensor:
    """torch.nn.functional.linear on Triton kernels; activation='relu' fuses a ReLU into the epilogue.

    input (..., in_features) with any leading dims; weight (out_features, in_features); bias (out_features,).
    """
    op = "linear"
    check_tensors(op, input=input, weight=weight, bias=bias)
    check_ndim(op, "weight", weight, (2,), "2-D (out_features, in_features)")
    check_activation(op, activation)
    if input.dim() < 1:
        raise ValueError(f"{op}: input must have at least 1 dimension (..., in_features), got a 0-D tensor")
    if input.shape[-1] != weight.shape[1]:
        raise ValueError(f"{op}: input has {input.shape[-1]} features in its last dim, but weight of shape "
                         f"{tuple(weight.shape)} expects {weight.shape[1]}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return _linear(input, weight, bias, activation == "relu")
