"""The former home of the CIFAR-10 loader, kept so that existing imports keep working: it lives in
lenet_triton.datasets.cifar10 now."""

from .datasets.cifar10 import (BINARY_VERSION, CIFAR10_MEAN, CIFAR10_STD, IMAGE_BYTES, IMAGE_SHAPE,  # noqa: F401
                               PYTHON_VERSION, TEST_BATCH, TRAIN_BATCHES, find_source, load_cifar10)

__all__ = ["BINARY_VERSION", "CIFAR10_MEAN", "CIFAR10_STD", "IMAGE_BYTES", "IMAGE_SHAPE", "PYTHON_VERSION",
           "TEST_BATCH", "TRAIN_BATCHES", "find_source", "load_cifar10"]
