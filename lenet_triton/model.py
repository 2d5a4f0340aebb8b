"""LeNet-5 as in PyTorch's "Neural Networks" tutorial, on the Triton ops.

Same layers and parameter names as the tutorial's Net (conv1, conv2, fc1, fc2, fc3), so
state_dicts load both ways. The ReLUs are fused into the layers that precede them.
"""

import torch
from torch import nn

from . import ops
from .nn import Conv2d, Linear, MaxPool2d

BACKENDS = ("triton", "fused", "torch")


class LeNet(nn.Module):
    """conv1 5x5 -> ReLU -> pool 2 -> conv2 5x5 -> ReLU -> pool 2 -> fc1 -> ReLU -> fc2 -> ReLU -> fc3.

    Takes (N, in_channels, 32, 32) images; in_channels=3 is the tutorial's CIFAR-10 variant.
    backend="triton" runs every conv, pool and linear (forward and backward) on per-op Triton
    kernels; backend="fused" runs the whole forward in one Triton launch and the backward in two
    (ops.lenet; no gradient for the images); backend="torch" runs the same module on
    torch.nn.functional. The parameters, their names and the state_dict are the same for all three.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, backend: str = "triton"):
        super().__init__()
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"LeNet: in_channels must be a positive int, got {in_channels!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"LeNet: num_classes must be a positive int, got {num_classes!r}")
        if backend not in BACKENDS:
            raise ValueError(f"LeNet: backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        # The fused model keeps per-op layers: they hold the parameters and give activations().
        layers = "torch" if backend == "torch" else "triton"
        self.conv1 = Conv2d(in_channels, 6, 5, activation="relu", backend=layers)
        self.conv2 = Conv2d(6, 16, 5, activation="relu", backend=layers)
        self.pool = MaxPool2d(2, backend=layers)
        self.fc1 = Linear(16 * 5 * 5, 120, activation="relu", backend=layers)
        self.fc2 = Linear(120, 84, activation="relu", backend=layers)
        self.fc3 = Linear(84, num_classes, backend=layers)

    def with_backend(self, backend: str) -> "LeNet":
        """This model on another backend: itself when it already is, else a new LeNet on the same
        device holding a copy of the same state_dict (all backends compute the same function)."""
        if backend == self.backend:
            return self
        twin = LeNet(self.conv1.in_channels, self.fc3.out_features, backend=backend)
        twin.load_state_dict(self.state_dict())
        return twin.to(self.conv1.weight.device, self.conv1.weight.dtype).train(self.training)

    def fused_parameters(self) -> list:
        """The parameters in ops.LENET_PARAMETERS order, as the fused kernels take them."""
        return [self.get_parameter(name) for name in ops.LENET_PARAMETERS]

    def forward(self, input):
        if self.backend == "fused":
            return ops.lenet(input, self.fused_parameters())
        x = self.pool(self.conv1(input))
        x = self.pool(self.conv2(x))
        x = torch.flatten(x, 1)
        return self.fc3(self.fc2(self.fc1(x)))

    def activations(self, input):
        """Every layer's output in order, by name: what export's parity check compares layer by layer.
        (The fused backend keeps no per-layer outputs; its model computes them with the per-op kernels.)"""
        names = ["conv1", "pool1", "conv2", "pool2", "flatten", "fc1", "fc2", "fc3"]
        steps = [self.conv1, self.pool, self.conv2, self.pool, lambda x: torch.flatten(x, 1), self.fc1, self.fc2,
                 self.fc3]
        outputs, x = {}, input
        for name, step in zip(names, steps):
            x = outputs[name] = step(x)
        return outputs
