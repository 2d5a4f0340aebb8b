"""lenet: the whole network in one forward kernel and a two-launch backward; the checks of LeNet's
images and parameters that TrainStep shares."""

from collections.abc import Sequence

import torch
from torch import Tensor

from ..kernels import lenet as fused
from .common import check_ndim, check_tensors, kernel_op


# LeNet's parameters in the order the fused kernels take them (the tutorial's names).
LENET_PARAMETERS = ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias",
                    "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias")
LENET_IMAGE_SIZE = 32


def lenet_parameter_shapes(in_channels: int, num_classes: int) -> list[tuple[int, ...]]:
    return [(6, in_channels, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 400), (120,), (84, 120), (84,),
            (num_classes, 84), (num_classes,)]


def check_lenet(op: str, input: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """Checks images and LeNet's parameters for the fused kernels; returns a 4-D contiguous input and
    contiguous parameters (no copy when they already are)."""
    if isinstance(params, Tensor) or not isinstance(params, Sequence) or len(params) != len(LENET_PARAMETERS):
        raise TypeError(f"{op}: params must be a sequence of {len(LENET_PARAMETERS)} tensors "
                        f"({', '.join(LENET_PARAMETERS)}), got {type(params).__name__}"
                        + (f" of length {len(params)}" if isinstance(params, Sequence) else ""))
    check_tensors(op, input=input, **dict(zip(LENET_PARAMETERS, params)))
    check_ndim(op, "input", input, (3, 4), f"3-D (C, {LENET_IMAGE_SIZE}, {LENET_IMAGE_SIZE}) or 4-D (N, C, "
                f"{LENET_IMAGE_SIZE}, {LENET_IMAGE_SIZE})")
    if tuple(input.shape[-2:]) != (LENET_IMAGE_SIZE, LENET_IMAGE_SIZE):
        raise ValueError(f"{op}: input must hold {LENET_IMAGE_SIZE}x{LENET_IMAGE_SIZE} images, got shape "
                         f"{tuple(input.shape)}")
    conv1_weight, fc3_weight = params[0], params[8]
    if conv1_weight.dim() != 4 or fc3_weight.dim() != 2:
        raise ValueError(f"{op}: conv1.weight must be 4-D and fc3.weight 2-D, got shapes "
                         f"{tuple(conv1_weight.shape)} and {tuple(fc3_weight.shape)}")
    in_channels, num_classes = conv1_weight.shape[1], fc3_weight.shape[0]
    for name, param, shape in zip(LENET_PARAMETERS, params, lenet_parameter_shapes(in_channels, num_classes)):
        if tuple(param.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {shape} for LeNet(in_channels={in_channels}, "
                             f"num_classes={num_classes}), got {tuple(param.shape)}")
    if input.shape[-3] != in_channels:
        raise ValueError(f"{op}: input has {input.shape[-3]} channels, but conv1.weight of shape "
                         f"{tuple(conv1_weight.shape)} expects {in_channels}")
    x = input if input.dim() == 4 else input.unsqueeze(0)
    return x.contiguous(), [p.contiguous() for p in params]


@kernel_op("lenet_triton::lenet_forward")
def _lenet_forward(x: Tensor, params: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(logits, activations, window winners) of LeNet on contiguous 4-D x; the last two feed the backward."""
    logits = x.new_empty((x.shape[0], params[8].shape[0]))
    act, win = fused.activation_buffers(x.shape[0], x)
    if x.shape[0] > 0:
        fused.forward(x, params, logits, act, win)
    return logits, act, win


@_lenet_forward.register_fake
def _(x, params):
    act, win = fused.activation_buffers(x.shape[0], x)
    return x.new_empty((x.shape[0], params[8].shape[0])), act, win


@kernel_op("lenet_triton::lenet_backward")
def _lenet_backward(grad_logits: Tensor, x: Tensor, act: Tensor, win: Tensor, params: list[Tensor]) -> list[Tensor]:
    """Every parameter's gradient (none for the images), summed over the batch in a fixed order."""
    grads = [torch.empty_like(p) for p in params]
    if x.shape[0] == 0:
        return [g.zero_() for g in grads]
    fused.backward(grad_logits.contiguous(), x, params, act, win, grads)
    return grads


@_lenet_backward.register_fake
def _(grad_logits, x, act, win, params):
    return [torch.empty_like(p) for p in params]


def _lenet_setup_context(ctx, inputs, output):
    x, params = inputs
    _, act, win = output
    ctx.mark_non_differentiable(act, win)
    ctx.save_for_backward(x, act, win, *params)


def _lenet_backward_formula(ctx, grad_logits, _grad_act, _grad_win):
    if ctx.needs_input_grad[0]:
        raise NotImplementedError("lenet: the fused backward computes no gradient for the images; use the per-op "
                                  "ops (LeNet(backend='triton')) when the input needs one")
    x, act, win, *params = ctx.saved_tensors
    return None, _lenet_backward(grad_logits, x, act, win, params)


_lenet_forward.register_autograd(_lenet_backward_formula, setup_context=_lenet_setup_context)


class _LeNetFunction(torch.autograd.Function):
    """lenet_forward's plain eager path (see KernelOp), taking the parameters as separate inputs:
    autograd tracks the tensors an autograd.Function gets, not those inside a list."""

    @staticmethod
    def forward(ctx, x, *params):
        output = _lenet_forward.impl(x, list(params))
        _lenet_setup_context(ctx, (x, params), output)
        return output

    @staticmethod
    def backward(ctx, *grads):
        _, param_grads = _lenet_backward_formula(ctx, *grads)
        return None, *param_grads


_lenet_forward.eager = lambda x, params: _LeNetFunction.apply(x, *params)


def lenet(input: Tensor, params: Sequence[Tensor]) -> Tensor:
    """LeNet's logits from whole-network Triton kernels: one launch forward, two backward.

    input (N, C, 32, 32) or unbatched (C, 32, 32); params the 10 tensors of LENET_PARAMETERS, in
    that order (a LeNet's conv1.weight, conv1.bias, ..., fc3.bias). Gradients flow to every
    parameter; the images get none (asking for one raises NotImplementedError).
    """
    op = "lenet"
    x, params = check_lenet(op, input, params)
    logits, _, _ = _lenet_forward(x, params)
    return logits if input.dim() == 4 else logits.squeeze(0)
