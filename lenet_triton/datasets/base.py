"""What every data set shares: the Split that a loader returns, DataError, and the names of the
data sets (lenet_triton.datasets.load dispatches on them)."""

from dataclasses import dataclass

import torch

DATASETS = ("digits", "mnist", "cifar10")
# The data sets read from the user's files (--data-dir); digits ships with scikit-learn.
FILE_DATASETS = ("mnist", "cifar10")
DIGIT_CLASSES = tuple("0123456789")


class DataError(ValueError):
    """A data set is missing, corrupt or inconsistent; the message names the file and the problem."""


@dataclass
class Split:
    images: torch.Tensor   # (N, C, 32, 32) float32, normalized
    labels: torch.Tensor   # (N,) int64
    classes: tuple = DIGIT_CLASSES   # each label's class name

    def __len__(self):
        return len(self.labels)
