"""lenet_triton: Triton kernels (conv2d, max_pool2d, linear+ReLU, forward and backward) behind
torch.library custom ops, whole-network LeNet-5 kernels, the LeNet-5 model that runs on either, and
TrainStep, a whole training step in two launches."""

from . import triton_mode

# Before any kernel is defined: without a CUDA device the kernels run through Triton's interpreter,
# whatever imported triton first (see triton_mode).
triton_mode.select()

from . import ops  # noqa: E402
from .model import LeNet  # noqa: E402
from .step import TrainStep  # noqa: E402

__version__ = "0.1.0"

__all__ = ["LeNet", "TrainStep", "ops", "__version__"]
