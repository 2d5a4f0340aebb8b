"""max_pool2d: argument checks, the custom ops (forward with torch's indices, backward), their fakes
and autograd."""

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from ..kernels.pool import max_pool2d_backward, max_pool2d_forward
from .common import IntOrPair, check_ndim, check_tensors, empty_like_layout, kernel_op, pair


def pool_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """torch's pooling_output_shape: with ceil_mode the last window must start inside the input."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _padding_only_window(size: int, out: int, kernel: int, stride: int, pad: int, dilation: int) -> Optional[int]:
    """The first output position along one axis whose window covers only padding, or None. Only a
    dilation larger than the input can skip over it: otherwise the first tap at or past 0 is inside."""
    if dilation <= size:
        return None
    for position in range(out):
        start = position * stride - pad
        if not any(0 <= start + tap * dilation < size for tap in range(kernel)):
            return position
    return None


def _pool_output_shape(x: Tensor, kernel_size, stride, padding, dilation, ceil_mode) -> list[int]:
    return [*x.shape[:2]] + [pool_output_size(x.shape[2 + a], kernel_size[a], stride[a], padding[a], dilation[a],
                                               ceil_mode) for a in range(2)]


@kernel_op("lenet_triton::max_pool2d")
def _max_pool2d(x: Tensor, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], ceil_mode: bool) -> tuple[Tensor, Tensor]:
    """max_pool2d on a 4-D input: (values, int64 indices into each H*W plane)."""
    shape = _pool_output_shape(x, kernel_size, stride, padding, dilation, ceil_mode)
    y = empty_like_layout(x, shape)
    indices = empty_like_layout(x, shape, torch.int64)
    if y.numel() > 0:
        max_pool2d_forward(x, y, indices, kernel_size, stride, padding, dilation)
    return y, indices


@_max_pool2d.register_fake
def _(x, kernel_size, stride, padding, dilation, ceil_mode):
    shape = _pool_output_shape(x, kernel_size, stride, padding, dilation, ceil_mode)
    return empty_like_layout(x, shape), empty_like_layout(x, shape, torch.int64)


@kernel_op("lenet_triton::max_pool2d_backward")
def _max_pool2d_backward(grad_y: Tensor, indices: Tensor, x: Tensor, kernel_size: Sequence[int],
                         stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]) -> Tensor:
    """Routes grad_y to the positions in indices; x gives the gradient's shape and layout only."""
    dx = empty_like_layout(x, x.shape)
    if dx.numel() > 0:
        max_pool2d_backward(grad_y, indices, dx, kernel_size, stride, padding, dilation)
    return dx


@_max_pool2d_backward.register_fake
def _(grad_y, indices, x, kernel_size, stride, padding, dilation):
    return empty_like_layout(x, x.shape)


def _max_pool2d_setup_context(ctx, inputs, output):
    x, kernel_size, stride, padding, dilation, _ = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, output[1])
    ctx.geometry = (kernel_size, stride, padding, dilation)


def _max_pool2d_backward_formula(ctx, grad_y, _grad_indices):
    x, indices = ctx.saved_tensors
    return _max_pool2d_backward(grad_y, indices, x, *ctx.geometry), None, None, None, None, None


_max_pool2d.register_autograd(_max_pool2d_backward_formula, setup_context=_max_pool2d_setup_context)


def max_pool2d(input: Tensor, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None, padding: IntOrPair = 0,
               dilation: IntOrPair = 1, ceil_mode: bool = False, return_indices: bool = False):
    """torch.nn.functional.max_pool2d on Triton kernels, indices identical to torch's.

    input (N, C, H, W) or unbatched (C, H, W). stride None (or empty) means stride = kernel_size.
    """
    op = "max_pool2d"
    check_tensors(op, input=input)
    check_ndim(op, "input", input, (3, 4), "3-D (C, H, W) or 4-D (N, C, H, W)")
    kernel_size = pair(op, "kernel_size", kernel_size, minimum=1)
    stride = kernel_size if stride is None or (not isinstance(stride, int) and len(stride) == 0) \
        else pair(op, "stride", stride, minimum=1)
    padding = pair(op, "padding", padding, minimum=0)
    dilation = pair(op, "dilation", dilation, minimum=1)
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"{op}: ceil_mode must be a bool, got {ceil_mode!r}")
    if padding[0] > kernel_size[0] // 2 or padding[1] > kernel_size[1] // 2:
        raise ValueError(f"{op}: padding {padding} must be at most half the kernel size {kernel_size} (as in torch)")
    for axis, a in (("height", 0), ("width", 1)):
        size = input.shape[-2 + a]
        out = pool_output_size(size, kernel_size[a], stride[a], padding[a], dilation[a], ceil_mode)
        if out < 1:
            raise ValueError(f"{op}: the (dilated) kernel {axis} {dilation[a] * (kernel_size[a] - 1) + 1} is larger "
                             f"than the padded input {axis} {size + 2 * padding[a]}")
        empty = _padding_only_window(size, out, kernel_size[a], stride[a], padding[a], dilation[a])
        if empty is not None:
            raise ValueError(
                f"{op}: with input {axis} {size}, padding {padding[a]} and dilation {dilation[a]}, the window of "
                f"output {axis} position {empty} covers only padding (torch answers such a window with -inf and an "
                "index outside the input, which its backward then writes to); use a dilation at most the input size")
    batched = input.dim() == 4
    y, indices = _max_pool2d(input if batched else input.unsqueeze(0), kernel_size, stride, padding, dilation,
                             ceil_mode)
    if not batched:
        y, indices = y.squeeze(0), indices.squeeze(0)
    return (y, indices) if return_indices else y
