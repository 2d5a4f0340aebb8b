"""The public functional API: conv2d, max_pool2d and linear, drop-in for torch.nn.functional, and
lenet, the whole LeNet forward in one kernel (its backward in two).

Each public function checks its arguments (a clear ValueError/TypeError/NotImplementedError
naming the argument), normalizes them, and calls a torch.library custom op in the `lenet_triton`
namespace. Every custom op has a fake (meta) implementation, and the forward ops have autograd
formulas that call the backward custom ops, so the ops compose with autograd, torch.compile
(fullgraph) and torch.export. All arithmetic runs in the Triton kernels of lenet_triton.kernels.
"""

import math
from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import Tensor

from .kernels import config
from .kernels.conv import conv2d_forward, conv2d_grad_input, conv2d_grad_weight
from .kernels import lenet as fused
from .kernels.linear import linear_forward, linear_grad_input, linear_grad_weight
from .kernels.pool import max_pool2d_backward, max_pool2d_forward

__all__ = ["conv2d", "max_pool2d", "linear", "lenet", "LENET_PARAMETERS", "ACTIVATIONS", "SUPPORTED_DTYPES"]

ACTIVATIONS = (None, "relu")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SUPPORTED_DTYPES = frozenset(SUPPORTED_DTYPES)

IntOrPair = Union[int, Sequence[int]]


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------

def _pair(op: str, name: str, value, *, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints -> (h, w), each at least `minimum`."""
    # The common cases, kept cheap: an int, or a pair of ints as nn.Conv2d and nn.MaxPool2d store them.
    if type(value) is int and value >= minimum:
        return value, value
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int \
            and value[0] >= minimum and value[1] >= minimum:
        return value
    items = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        items = tuple(items)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}") from None
    if len(items) == 1:
        items = items * 2
    if len(items) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if min(items) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return items


def _check_tensors(op: str, **tensors: Optional[Tensor]) -> None:
    """Every given tensor is a floating tensor of one supported dtype, on one device the kernels run on."""
    first_name = first = None
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"{op}: {name} has dtype {t.dtype}; expected one of "
                            f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}")
        if first is None:
            first_name, first = name, t
        elif t.dtype != first.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but {first_name} has {first.dtype}; "
                            "cast them to one dtype")
        elif t.device != first.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {first_name} is on {first.device}; "
                             "move them to one device")
    _check_device(op, first_name, first)


def _check_device(op: str, name: str, t: Tensor) -> None:
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu":
        if t.dtype == torch.bfloat16:
            raise NotImplementedError(
                f"{op}: {name} is a bfloat16 CPU tensor; Triton's interpreter computes bfloat16 wrongly, so "
                "bfloat16 runs on cuda only. Use float32 (or float16/float64) on the CPU.")
        if not config.interpreting():
            raise NotImplementedError(
                f"{op}: {name} is a CPU tensor, but Triton's interpreter is off in this process (it is "
                "on by default only when no CUDA device is found, and TRITON_INTERPRET=0 turns it off). "
                "Move the tensors to cuda, or start Python with TRITON_INTERPRET=1 to run the kernels on "
                "the CPU.")
        return
    if t.device.type != "meta":
        raise NotImplementedError(f"{op}: {name} is on {t.device}; the Triton kernels run on cuda, or on cpu "
                                  "through Triton's interpreter")


def _check_ndim(op: str, name: str, t: Tensor, allowed: tuple[int, ...], meaning: str) -> None:
    if t.dim() not in allowed:
        raise ValueError(f"{op}: {name} must be {meaning}, got a {t.dim()}-D tensor of shape {tuple(t.shape)}")


def _check_activation(op: str, activation) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: activation must be None or 'relu', got {activation!r}")


def _output_format(x: Tensor) -> torch.memory_format:
    """The layout torch gives a conv/pool output: channels_last in, channels_last out."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _empty_like_layout(x: Tensor, shape, dtype: Optional[torch.dtype] = None) -> Tensor:
    """An uninitialized 4-D tensor of `shape` on x's device, laid out as torch lays out x's conv/pool outputs."""
    return torch.empty(shape, dtype=dtype or x.dtype, device=x.device, memory_format=_output_format(x))


# --------------------------------------------------------------------------------------------
# Custom ops, and a direct path for plain eager calls
# --------------------------------------------------------------------------------------------

_PLAIN_TENSORS = frozenset((Tensor, torch.nn.Parameter))
_dispatch_modes = torch._C._len_torch_dispatch_stack
_functorch_transforms = torch._C._are_functorch_transforms_active


def _wants_grad(args) -> bool:
    return torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args)


def _plain_eager(args) -> bool:
    """True when a call gets real tensors and nothing traces or transforms it (no torch.compile or
    torch.export, no dispatch mode such as FakeTensorMode, no functorch transform, no tensor
    subclass, no meta tensor). Only then may an op skip its custom op and call its kernels directly."""
    if torch.compiler.is_compiling():  # first: under dynamo this folds to a constant, nothing else is traced
        return False
    if _dispatch_modes() or _functorch_transforms():
        return False
    for arg in args:
        if type(arg) in _PLAIN_TENSORS:
            if arg.is_meta:
                return False
        elif isinstance(arg, Tensor):
            return False
        elif type(arg) is list and not all(type(t) in _PLAIN_TENSORS and not t.is_meta for t in arg
                                           if isinstance(t, Tensor)):
            return False
    return True


class _KernelOp:
    """A `lenet_triton` torch.library custom op that plain eager calls bypass.

    Graphs (torch.compile, torch.export, ONNX export) and fake or transformed tensors always see the
    custom op, whole. A plain eager call (see _plain_eager) runs the same implementation directly,
    and, for an op with autograd, through a torch.autograd.Function built from the op's own
    formulas: same kernels, same results, without the custom op's dispatch layers, which cost more
    host time than the rest of a small op call.
    """

    def __init__(self, name: str, impl):
        self.impl = impl
        self.op = torch.library.custom_op(name, impl, mutates_args=())
        self.eager = impl  # what a plain eager call runs
        self.differentiable = False

    def register_fake(self, fake):
        return self.op.register_fake(fake)

    def register_autograd(self, backward, *, setup_context):
        self.op.register_autograd(backward, setup_context=setup_context)
        impl = self.impl

        # forward(ctx, ...) rather than a separate setup_context: apply() then skips binding the
        # arguments to a signature, which costs more than the rest of the call.
        def forward(ctx, *args):
            output = impl(*args)
            setup_context(ctx, args, output)
            return output

        function = type(f"{impl.__name__}_function", (torch.autograd.Function,), {
            "forward": staticmethod(forward), "backward": staticmethod(backward)})
        self.eager = function.apply
        self.differentiable = True

    def __call__(self, *args):
        # An op without autograd (a backward op) that autograd would need, as in a double backward,
        # goes to the custom op, which refuses it clearly, instead of silently giving no gradient.
        if _plain_eager(args) and (self.differentiable or not _wants_grad(args)):
            return self.eager(*args)
        return self.op(*args)


def _kernel_op(name: str):
    """Decorator: the function becomes the implementation of custom op `name` (see _KernelOp)."""
    return lambda impl: _KernelOp(name, impl)


# --------------------------------------------------------------------------------------------
# conv2d
# --------------------------------------------------------------------------------------------

def _conv_output_size(size: int, pad_begin: int, pad_end: int, kernel: int, stride: int, dilation: int) -> int:
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def _conv_output_shape(x: Tensor, weight: Tensor, stride, pads, dilation) -> list[int]:
    return [x.shape[0], weight.shape[0],
            _conv_output_size(x.shape[2], pads[0], pads[2], weight.shape[2], stride[0], dilation[0]),
            _conv_output_size(x.shape[3], pads[1], pads[3], weight.shape[3], stride[1], dilation[1])]


@_kernel_op("lenet_triton::conv2d")
def _conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int], pads: Sequence[int],
            dilation: Sequence[int], groups: int, relu: bool) -> Tensor:
    """conv2d on a 4-D input; pads = (top, left, bottom, right), as ONNX orders them."""
    y = _empty_like_layout(x, _conv_output_shape(x, weight, stride, pads, dilation))
    if y.numel() > 0:
        conv2d_forward(x, weight, bias, y, stride, pads, dilation, groups, relu)
    return y


@_conv2d.register_fake
def _(x, weight, bias, stride, pads, dilation, groups, relu):
    return _empty_like_layout(x, _conv_output_shape(x, weight, stride, pads, dilation))


@_kernel_op("lenet_triton::conv2d_grad_input")
def _conv2d_grad_input(grad_y: Tensor, y: Optional[Tensor], x: Tensor, weight: Tensor, stride: Sequence[int],
                       pads: Sequence[int], dilation: Sequence[int], groups: int) -> Tensor:
    """Gradient of conv2d with respect to x (used for its shape and layout only); y given = fused ReLU."""
    dx = _empty_like_layout(x, x.shape)
    if dx.numel() > 0:
        conv2d_grad_input(grad_y, y, weight, dx, stride, pads, dilation, groups, gate_relu=y is not None)
    return dx


@_conv2d_grad_input.register_fake
def _(grad_y, y, x, weight, stride, pads, dilation, groups):
    return _empty_like_layout(x, x.shape)


@_kernel_op("lenet_triton::conv2d_grad_weight")
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
    ph, pw = _pair(op, "padding", padding, minimum=0)
    return ph, pw, ph, pw


def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntOrPair = 1,
           padding: Union[IntOrPair, str] = 0, dilation: IntOrPair = 1, groups: int = 1,
           activation: Optional[str] = None) -> Tensor:
    """torch.nn.functional.conv2d on Triton kernels; activation='relu' fuses a ReLU into the epilogue.

    input (N, C_in, H, W) or unbatched (C_in, H, W); weight (C_out, C_in / groups, kH, kW);
    bias (C_out,) or None.
    """
    op = "conv2d"
    _check_tensors(op, input=input, weight=weight, bias=bias)
    _check_ndim(op, "input", input, (3, 4), "3-D (C, H, W) or 4-D (N, C, H, W)")
    _check_ndim(op, "weight", weight, (4,), "4-D (C_out, C_in / groups, kH, kW)")
    _check_activation(op, activation)
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    stride = _pair(op, "stride", stride, minimum=1)
    dilation = _pair(op, "dilation", dilation, minimum=1)
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


# --------------------------------------------------------------------------------------------
# max_pool2d
# --------------------------------------------------------------------------------------------

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


@_kernel_op("lenet_triton::max_pool2d")
def _max_pool2d(x: Tensor, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], ceil_mode: bool) -> tuple[Tensor, Tensor]:
    """max_pool2d on a 4-D input: (values, int64 indices into each H*W plane)."""
    shape = _pool_output_shape(x, kernel_size, stride, padding, dilation, ceil_mode)
    y = _empty_like_layout(x, shape)
    indices = _empty_like_layout(x, shape, torch.int64)
    if y.numel() > 0:
        max_pool2d_forward(x, y, indices, kernel_size, stride, padding, dilation)
    return y, indices


@_max_pool2d.register_fake
def _(x, kernel_size, stride, padding, dilation, ceil_mode):
    shape = _pool_output_shape(x, kernel_size, stride, padding, dilation, ceil_mode)
    return _empty_like_layout(x, shape), _empty_like_layout(x, shape, torch.int64)


@_kernel_op("lenet_triton::max_pool2d_backward")
def _max_pool2d_backward(grad_y: Tensor, indices: Tensor, x: Tensor, kernel_size: Sequence[int],
                         stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]) -> Tensor:
    """Routes grad_y to the positions in indices; x gives the gradient's shape and layout only."""
    dx = _empty_like_layout(x, x.shape)
    if dx.numel() > 0:
        max_pool2d_backward(grad_y, indices, dx, kernel_size, stride, padding, dilation)
    return dx


@_max_pool2d_backward.register_fake
def _(grad_y, indices, x, kernel_size, stride, padding, dilation):
    return _empty_like_layout(x, x.shape)


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
    _check_tensors(op, input=input)
    _check_ndim(op, "input", input, (3, 4), "3-D (C, H, W) or 4-D (N, C, H, W)")
    kernel_size = _pair(op, "kernel_size", kernel_size, minimum=1)
    stride = kernel_size if stride is None or (not isinstance(stride, int) and len(stride) == 0) \
        else _pair(op, "stride", stride, minimum=1)
    padding = _pair(op, "padding", padding, minimum=0)
    dilation = _pair(op, "dilation", dilation, minimum=1)
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


# --------------------------------------------------------------------------------------------
# linear
# --------------------------------------------------------------------------------------------

def _rows(t: Tensor) -> Tensor:
    """Any leading dims flattened into one: (..., K) -> (M, K); a view when the strides allow."""
    if t.dim() == 2:
        return t
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


@_kernel_op("lenet_triton::linear")
def _linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool) -> Tensor:
    """linear over the last dim of x (any leading dims), ReLU fused when relu."""
    y = x.new_empty((*x.shape[:-1], weight.shape[0]))
    if y.numel() > 0:
        linear_forward(_rows(x), weight, bias, y.view(-1, weight.shape[0]), relu)
    return y


@_linear.register_fake
def _(x, weight, bias, relu):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@_kernel_op("lenet_triton::linear_grad_input")
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


@_kernel_op("lenet_triton::linear_grad_weight")
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
    _check_tensors(op, input=input, weight=weight, bias=bias)
    _check_ndim(op, "weight", weight, (2,), "2-D (out_features, in_features)")
    _check_activation(op, activation)
    if input.dim() < 1:
        raise ValueError(f"{op}: input must have at least 1 dimension (..., in_features), got a 0-D tensor")
    if input.shape[-1] != weight.shape[1]:
        raise ValueError(f"{op}: input has {input.shape[-1]} features in its last dim, but weight of shape "
                         f"{tuple(weight.shape)} expects {weight.shape[1]}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return _linear(input, weight, bias, activation == "relu")


# --------------------------------------------------------------------------------------------
# lenet: the whole network in one forward kernel and a two-launch backward
# --------------------------------------------------------------------------------------------

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
    _check_tensors(op, input=input, **dict(zip(LENET_PARAMETERS, params)))
    _check_ndim(op, "input", input, (3, 4), f"3-D (C, {LENET_IMAGE_SIZE}, {LENET_IMAGE_SIZE}) or 4-D (N, C, "
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


@_kernel_op("lenet_triton::lenet_forward")
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


@_kernel_op("lenet_triton::lenet_backward")
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
    """lenet_forward's plain eager path (see _KernelOp), taking the parameters as separate inputs:
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
