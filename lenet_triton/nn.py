"""Thin nn.Module layers over lenet_triton.ops.

Each subclasses its torch.nn layer, so initialization, parameters and state_dict are torch's.
`activation="relu"` fuses a ReLU into the layer; `backend="torch"` runs the same layer on
torch.nn.functional, the reference the Triton backend is compared with.
"""

import torch.nn.functional as F
from torch import nn

from . import ops

BACKENDS = ("triton", "torch")


def check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _activate(y, activation):
    return F.relu(y) if activation == "relu" else y


class Conv2d(nn.Conv2d):
    def __init__(self, *args, activation=None, backend="triton", **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise NotImplementedError(f"Conv2d: padding_mode={self.padding_mode!r}; only 'zeros' is supported")
        ops.common.check_activation("Conv2d", activation)
        self.activation, self.backend = activation, check_backend(backend)

    def forward(self, input):
        if self.backend == "torch":
            return _activate(super().forward(input), self.activation)
        return ops.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                          activation=self.activation)

    def extra_repr(self):
        return f"{super().extra_repr()}, activation={self.activation}, backend={self.backend}"


class MaxPool2d(nn.MaxPool2d):
    def __init__(self, *args, backend="triton", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = check_backend(backend)

    def forward(self, input):
        if self.backend == "torch":
            return super().forward(input)
        return ops.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                              self.return_indices)

    def extra_repr(self):
        return f"{super().extra_repr()}, backend={self.backend}"


class Linear(nn.Linear):
    def __init__(self, *args, activation=None, backend="triton", **kwargs):
        super().__init__(*args, **kwargs)
        ops.common.check_activation("Linear", activation)
        self.activation, self.backend = activation, check_backend(backend)

    def forward(self, input):
        if self.backend == "torch":
            return _activate(super().forward(input), self.activation)
        return ops.linear(input, self.weight, self.bias, activation=self.activation)

    def extra_repr(self):
        return f"{super().extra_repr()}, activation={self.activation}, backend={self.backend}"
