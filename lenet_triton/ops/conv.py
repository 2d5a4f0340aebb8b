"""conv2d: argument checks, the custom ops (forward and both gradients), their fakes and autograd."""

from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import Tensor

from ..kernels.conv import conv2d_forward, conv2d_grad_input, conv2d_grad_weight
from .common import IntOrPair, check_activation, check_ndim, check_tensors, empty_like_layout, kernel_op, pair


def _conv_output_size(size: int, pad_begin: int, pad_end: int, kernel: int, stride: int, dilation: int) -> int:
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def _conv_output_shape(x: Tensor, weight: Tensor, stride, pads, dilation) -> list[int]:
    return [x.shape[0], weight.shape[0],
            _conv_output_size(x.shape[2], pads[0], pads[2], weight.shape[2], stride[0], dilation[0]),
            _conv_output_size(x.shape[3], pads[1], pads[3], weight.shape[3], stride[1], dilation[1])]


@kernel_op("lenet_triton::conv2d")
def _conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int], pads: Sequence[int],
            dilation: Sequence[int], groups: int, relu: bool) -> Tensor:
    """conv2d on a 4-D input; pads = (top, left, bottom, right), as ONNX orders them."""
    y = empty_like_layout(x, _conv_output_shape(x, weight, stride, pads, dilation))
    if y.numel() > 0:
        conv2d_forward(x, weight, bias, y, stride, pads, dilation, groups, relu)
    return y


@_conv2d.register_fake
def _(x, weight, bias, stride, pads, dilation, groups, relu):
    return empty_like_layout(x, _conv_output_shape(x, weight, stride, pads, dilation))


@kernel_op("lenet_triton::conv2d_grad_input")
def _conv2d_grad_input(grad_y: Tensor, y: Optional[Tensor], x: Tensor, weight: Tensor, stride: Sequence[int],
                       pads: Sequence[int], dilation: Sequence[int], groups: int) -> Tensor:
    """Gradient of conv2d with respect to x (used for its shape and layout only); y given = fused ReLU."""
    dx = empty_like_layout(x, x.shape)
    if dx.numel() > 0:
        conv2d_grad_input(grad_y, y, weight, dx, stride, pads, dilation, groups, gate_relu=y is not None)
    return dx


@_conv2d_grad_input.register_fake
def _(grad_y, y, x, weight, stride, pads, dilation, groups):
    return empty_like_layout(x, x.shape)


@kernel_op("lenet_triton::conv2d_grad_weight")
def _conv2d_grad_weight(grad_y: Tensor, y: Optional[Tensor], x: Tensor, weight: Tensor, stride: Sequence[int],
                        pads: Sequence[int], dilation: Sequence[int], groups: int) -> tuple[Tensor, Tensor]:
    """Gradients of conv2d with respect to the weight and the bias; y given = fused ReLU."""
    dw = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
    db = weight.new_empty(weight.shape[0])
    if grad_y.numel() == 0:
        return dw.zero_(), db.zero_()
    conv2d_grad_weight(grad_y, y, x, dw, db, stride, pads, dilation, groups, gate_relu=y is not None)
    return dw, db


@_conv2d_grad_weight.register_fake
def _(grad_y, y, x, weight, stride, pads, dilation, groups):
    return torch.empty(weight.shape, dtype=weight.dtype, device=weight.device), weight.new_empty(weight.shape[0])


def _conv2d_setup_context(ctx, inputs, output):
    x, weight, bias, stride, pads, dilation, groups, relu = inputs
    ctx.save_for_backward(x, weight, output if relu else None)
    ctx.geometry = (stride, pads, dilation, groups)
    ctx.has_bias = bias is not None


def _conv2d_backward(ctx, grad_y):
    x, weight, y = ctx.saved_tensors
    dx = dw = db = None
    if ctx.needs_input_grad[0]:
        dx = _conv2d_grad_input(grad_y, y, x, weight, *ctx.geometry)
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        dw, db = _conv2d_grad_weight(grad_y, y, x, weight, *ctx.geometry)
    return dx, dw, db if ctx.has_bias else None, None, None, None, None, None


_conv2d.register_autograd(_conv2d_backward, setup_context=_conv2d_setup_context)


def _conv_padding(op: str, padding, kernel, stride, dilation) -> tuple[int, int, int, int]:
    """padding (int, pair, 'same' or 'valid') -> (top, left, bottom, right)."""
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding != "same":
            raise ValueError(f"{op}: padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
        if stride != (1, 1):
            raise ValueError(f"{op}: padding='same' needs stride 1 (as in torch), got stride {stride}")
        # torch puts the extra cell of an odd total padding at the bottom/right.
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        return total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2
    ph, pw = pair(op, "padding", padding, minimum=0)
    return ph, pw, ph, pw


def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntOrPair = 1,
           padding: Union[IntOrPair, str] = 0, dilation: IntOrPair = 1, groups: int = 1,
           activation: Optional[str] = None) -> Tensor:
    """torch.nn.functional.conv2d on Triton kernels; activation='relu' fuses a ReLU into the epilogue.

    input (N, C_in, H, W) or unbatched (C_in, H, W); weight (C_out, C_in / groups, kH, kW);
    bias (C_out,) or None.
    """
    op = "conv2d"
    check_tensors(op, input=input, weight=weight, bias=bias)
    check_ndim(op, "input", input, (3, 4), "3-D (C, H, W) or 4-D (N, C, H, W)")
    check_ndim(op, "weight", weight, (4,), "4-D (C_out, C_in / groups, kH, kW)")
    check_activation(op, activation)
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    stride = pair(op, "stride", stride, minimum=1)
    dilation = pair(op, "dilation", dilation, minimum=1)
    c_out, c_in_per_group, kh, kw = weight.shape
    if kh < 1 or kw < 1 or c_out < 1 or c_in_per_group < 1:
        raise ValueError(f"{op}: weight must have every dimension >= 1, got shape {tuple(weight.shape)}")
    pads = _conv_padding(op, padding, (kh, kw), stride, dilation)
    c_in = input.shape[-3]
    if c_in % groups != 0 or c_out % groups != 0:
        raise ValueError(f"{op}: groups={groups} must divide both the input channels ({c_in}) and the "
                         f"output channels ({c_out})")
    if c_in_per_group * groups != c_in:
        raise ValueError(f"{op}: input has {c_in} channels, but weight of shape {tuple(weight.shape)} with "
                         f"groups={groups} expects {c_in_per_group * groups}")
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"{op}: bias must have shape ({c_out},), got {tuple(bias.shape)}")
    for axis, size, k, d, before, after in (("height", input.shape[-2], kh, dilation[0], pads[0], pads[2]),
                                           ("width", input.shape[-1], kw, dilation[1], pads[1], pads[3])):
        if d * (k - 1) + 1 > size + before + after:
            raise ValueError(f"{op}: the (dilated) kernel {axis} {d * (k - 1) + 1} is larger than the padded "
                             f"input {axis} {size + before + after}")
    batched = input.dim() == 4
    y = _conv2d(input if batched else input.unsqueeze(0), weight, bias, stride, pads, dilation, groups,
                activation == "relu")
    return y if batched else y.squeeze(0)
