"""Bad input is refused before any kernel runs, with the argument named and what was expected."""

import pytest
import torch

from lenet_triton import ops
from conftest import make

X = lambda *shape: make(shape or (2, 3, 8, 8))  # noqa: E731
W = lambda *shape: make(shape or (4, 3, 3, 3))  # noqa: E731

CASES = [
    # wrong ndim
    ("conv input 2-D", lambda: ops.conv2d(X(8, 8), W()), ValueError, r"input must be 3-D \(C, H, W\) or 4-D"),
    ("conv input 5-D", lambda: ops.conv2d(X(1, 2, 3, 8, 8), W()), ValueError, r"input must be 3-D"),
    ("conv weight 3-D", lambda: ops.conv2d(X(), W(4, 3, 3)), ValueError, r"weight must be 4-D"),
    ("pool input 2-D", lambda: ops.max_pool2d(X(8, 8), 2), ValueError, r"input must be 3-D"),
    ("linear weight 1-D", lambda: ops.linear(X(2, 5), W(5)), ValueError, r"weight must be 2-D"),
    ("linear input 0-D", lambda: ops.linear(X(1).squeeze(), W(3, 1)), ValueError, r"input must have at least 1"),
    # channel mismatch
    ("conv channels", lambda: ops.conv2d(X(2, 5, 8, 8), W()), ValueError, r"input has 5 channels.*expects 3"),
    ("linear features", lambda: ops.linear(X(2, 7), W(3, 6)), ValueError, r"input has 7 features.*expects 6"),
    # wrong weight or bias shape
    ("conv bias shape", lambda: ops.conv2d(X(), W(), make((5,))), ValueError, r"bias must have shape \(4,\)"),
    ("conv bias 2-D", lambda: ops.conv2d(X(), W(), make((4, 1))), ValueError, r"bias must have shape \(4,\)"),
    ("conv empty kernel", lambda: ops.conv2d(X(), W(4, 3, 0, 3)), ValueError, r"weight must have every dimension"),
    ("linear bias shape", lambda: ops.linear(X(2, 6), W(3, 6), make((6,))), ValueError, r"bias must have shape \(3,\)"),
    # different devices
    ("conv devices", lambda: ops.conv2d(X(), W().to("meta")), ValueError, r"weight is on meta but input is on"),
    ("linear devices", lambda: ops.linear(X(2, 6), W(3, 6), make((3,)).to("meta")), ValueError, r"bias is on meta"),
    # mixed or integer dtypes
    ("conv mixed dtypes", lambda: ops.conv2d(X(), W().double()), TypeError, r"weight has dtype torch.float64 but input"),
    ("linear mixed dtypes", lambda: ops.linear(X(2, 6).half(), W(3, 6)), TypeError, r"weight has dtype torch.float32"),
    ("conv integer input", lambda: ops.conv2d(X().long(), W().long()), TypeError, r"input has dtype torch.int64"),
    ("pool integer input", lambda: ops.max_pool2d(X().int(), 2), TypeError, r"input has dtype torch.int32"),
    ("linear bool input", lambda: ops.linear(X(2, 6) > 0, W(3, 6)), TypeError, r"input has dtype torch.bool"),
    ("conv not a tensor", lambda: ops.conv2d([[1.0]], W()), TypeError, r"input must be a torch.Tensor"),
    # kernel larger than the padded input
    ("conv kernel too big", lambda: ops.conv2d(X(1, 3, 4, 4), W(2, 3, 5, 5)), ValueError,
     r"kernel height 5 is larger than the padded input height 4"),
    ("conv dilated kernel too big", lambda: ops.conv2d(X(1, 3, 8, 4), W(2, 3, 1, 3), dilation=2, padding=(0, 0)),
     ValueError, r"kernel width 5 is larger than the padded input width 4"),
    ("pool kernel too big", lambda: ops.max_pool2d(X(1, 3, 3, 3), 4), ValueError, r"larger than the padded input"),
    # stride, dilation or kernel size <= 0
    ("conv stride 0", lambda: ops.conv2d(X(), W(), stride=0), ValueError, r"stride must be >= 1"),
    ("conv stride negative", lambda: ops.conv2d(X(), W(), stride=(1, -2)), ValueError, r"stride must be >= 1"),
    ("conv dilation 0", lambda: ops.conv2d(X(), W(), dilation=0), ValueError, r"dilation must be >= 1"),
    ("conv padding negative", lambda: ops.conv2d(X(), W(), padding=-1), ValueError, r"padding must be >= 0"),
    ("conv padding word", lambda: ops.conv2d(X(), W(), padding="full"), ValueError, r"padding must be .* 'same' or"),
    ("conv same strided", lambda: ops.conv2d(X(), W(), padding="same", stride=2), ValueError, r"'same' needs stride 1"),
    ("conv stride triple", lambda: ops.conv2d(X(), W(), stride=(1, 1, 1)), TypeError, r"stride must be an int or a pair"),
    ("conv stride float", lambda: ops.conv2d(X(), W(), stride=1.5), TypeError, r"stride must be an int or a pair"),
    ("conv stride pair with a bool", lambda: ops.conv2d(X(), W(), stride=(1, True)), TypeError,
     r"stride must be an int or a pair"),
    ("pool kernel 0", lambda: ops.max_pool2d(X(), 0), ValueError, r"kernel_size must be >= 1"),
    ("pool stride 0", lambda: ops.max_pool2d(X(), 2, stride=0), ValueError, r"stride must be >= 1"),
    ("pool dilation negative", lambda: ops.max_pool2d(X(), 2, dilation=-1), ValueError, r"dilation must be >= 1"),
    ("pool padding over half", lambda: ops.max_pool2d(X(), 2, padding=2), ValueError, r"at most half the kernel"),
    ("pool ceil_mode not bool", lambda: ops.max_pool2d(X(), 2, ceil_mode="yes"), TypeError, r"ceil_mode must be a bool"),
    ("pool window of padding only", lambda: ops.max_pool2d(X(1, 2, 1, 8), (2, 4), (2, 3), 1, 2), ValueError,
     r"input height 1, padding 1 and dilation 2, the window of output height position 0 covers only padding"),
    # groups that don't divide the channels
    ("conv groups divide", lambda: ops.conv2d(X(2, 4, 8, 8), W(6, 2, 3, 3), groups=3), ValueError,
     r"groups=3 must divide both the input channels \(4\) and the output channels \(6\)"),
    ("conv groups 0", lambda: ops.conv2d(X(), W(), groups=0), ValueError, r"groups must be a positive int"),
    # unknown activation
    ("conv activation", lambda: ops.conv2d(X(), W(), activation="gelu"), ValueError, r"activation must be None or 'relu'"),
    ("linear activation", lambda: ops.linear(X(2, 6), W(3, 6), activation="tanh"), ValueError, r"activation must be"),
]


@pytest.mark.parametrize("call, error, message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_refused_with_a_clear_message(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_bfloat16_on_cpu_is_refused_not_miscomputed():
    # Triton's interpreter gets bfloat16 arithmetic wrong, so CPU bfloat16 is refused on every machine.
    x, w = torch.randn(2, 3, 8, 8, dtype=torch.bfloat16), torch.randn(4, 3, 3, 3, dtype=torch.bfloat16)
    with pytest.raises(NotImplementedError, match="bfloat16 runs on cuda only"):
        ops.conv2d(x, w)
