"""What every op family shares: the argument checks, and the custom-op plumbing that lets plain
eager calls skip the custom op's dispatch layers (KernelOp)."""

from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import Tensor

from ..kernels import config

ACTIVATIONS = (None, "relu")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SUPPORTED_DTYPES = frozenset(SUPPORTED_DTYPES)

IntOrPair = Union[int, Sequence[int]]


def pair(op: str, name: str, value, *, minimum: int) -> tuple[int, int]:
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


def check_tensors(op: str, **tensors: Optional[Tensor]) -> None:
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
    check_device(op, first_name, first)


def check_device(op: str, name: str, t: Tensor) -> None:
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


def check_ndim(op: str, name: str, t: Tensor, allowed: tuple[int, ...], meaning: str) -> None:
    if t.dim() not in allowed:
        raise ValueError(f"{op}: {name} must be {meaning}, got a {t.dim()}-D tensor of shape {tuple(t.shape)}")


def check_activation(op: str, activation) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: activation must be None or 'relu', got {activation!r}")


def output_format(x: Tensor) -> torch.memory_format:
    """The layout torch gives a conv/pool output: channels_last in, channels_last out."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def empty_like_layout(x: Tensor, shape, dtype: Optional[torch.dtype] = None) -> Tensor:
    """An uninitialized 4-D tensor of `shape` on x's device, laid out as torch lays out x's conv/pool outputs."""
    return torch.empty(shape, dtype=dtype or x.dtype, device=x.device, memory_format=output_format(x))



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


class KernelOp:
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


def kernel_op(name: str):
    """Decorator: the function becomes the implementation of custom op `name` (see KernelOp)."""
    return lambda impl: KernelOp(name, impl)
