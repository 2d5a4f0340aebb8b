"""lenet_triton: Triton kernels (conv2d, max_pool2d, linear+ReLU, forward and backward) behind
torch.library custom ops, and the LeNet-5 model that runs on them."""

import os

import torch

# Without a CUDA device the kernels run on CPU tensors through Triton's interpreter. triton.jit
# reads this switch when each kernel is defined, so it must be set before the kernels import.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from . import ops  # noqa: E402
from .model import LeNet  # noqa: E402

__version__ = "0.1.0"

__all__ = ["LeNet", "ops", "__version__"]
