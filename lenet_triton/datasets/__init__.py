"""Data sets for LeNet's 32x32 input: the embedded digits default, real MNIST IDX files and
CIFAR-10, one module each, and load(), which picks one by name.

Nothing is downloaded: digits ships inside scikit-learn, and MNIST and CIFAR-10 are read from
files the user already has.
"""

from .base import DATASETS, DIGIT_CLASSES, FILE_DATASETS, DataError, Split
from .cifar10 import load_cifar10
from .digits import DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION, load_digits
from .mnist import MNIST_FILES, MNIST_MEAN, MNIST_STD, load_mnist, read_idx_images, read_idx_labels

__all__ = ["DATASETS", "FILE_DATASETS", "DIGIT_CLASSES", "DataError", "Split", "load", "load_digits", "load_mnist",
           "load_cifar10", "read_idx_images", "read_idx_labels", "DIGITS_SPLIT_SEED", "DIGITS_TEST_FRACTION",
           "MNIST_FILES", "MNIST_MEAN", "MNIST_STD"]

# The loaders of the data sets read from files, by name.
_FILE_LOADERS = {"mnist": load_mnist, "cifar10": load_cifar10}


def load(name: str, data_dir=None) -> tuple[Split, Split]:
    """(train, test) for a data set name in DATASETS."""
    if name == "digits":
        return load_digits()
    if name in FILE_DATASETS:
        if data_dir is None:
            raise DataError(f"{name}: give the directory that holds its files (--data-dir)")
        return _FILE_LOADERS[name](data_dir)
    raise DataError(f"unknown data set {name!r}; expected one of {DATASETS}")
