"""The public functional API: conv2d, max_pool2d and linear, drop-in for torch.nn.functional, and
lenet, the whole LeNet forward in one kernel (its backward in two).

Each public function checks its arguments (a clear ValueError/TypeError/NotImplementedError
naming the argument), normalizes them, and calls a torch.library custom op in the `lenet_triton`
namespace. Every custom op has a fake (meta) implementation, and the forward ops have autograd
formulas that call the backward custom ops, so the ops compose with autograd, torch.compile
(fullgraph) and torch.export. All arithmetic runs in the Triton kernels of lenet_triton.kernels.

One module per op family, beside lenet_triton/kernels/: conv, pool, linear and lenet, each with its
checks, custom ops, fakes and autograd; common holds the shared checks and the custom-op plumbing.
"""

from .common import ACTIVATIONS, SUPPORTED_DTYPES
from .conv import conv2d
from .lenet import LENET_IMAGE_SIZE, LENET_PARAMETERS, check_lenet, lenet, lenet_parameter_shapes
from .linear import linear
from .pool import max_pool2d, pool_output_size

__all__ = ["conv2d", "max_pool2d", "linear", "lenet", "LENET_PARAMETERS", "ACTIVATIONS", "SUPPORTED_DTYPES"]
