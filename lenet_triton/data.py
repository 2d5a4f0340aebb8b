"""Data sets for LeNet's 32x32 input: the embedded digits default, real MNIST IDX files and
CIFAR-10 (lenet_triton.cifar10).

Nothing is downloaded: digits ships inside scikit-learn, and MNIST and CIFAR-10 are read from
files the user already has.
"""

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

DATASETS = ("digits", "mnist", "cifar10")
# The data sets read from the user's files (--data-dir); digits ships with scikit-learn.
FILE_DATASETS = ("mnist", "cifar10")
DIGIT_CLASSES = tuple("0123456789")

# Fixed split of the embedded digits: 20% held out, stratified by class, seed 0.
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0

# The classic MNIST normalization (mean and std of the training pixels scaled to [0, 1]).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049


class DataError(ValueError):
    """A data set is missing, corrupt or inconsistent; the message names the file and the problem."""


@dataclass
class Split:
    images: torch.Tensor   # (N, C, 32, 32) float32, normalized
    labels: torch.Tensor   # (N,) int64
    classes: tuple = DIGIT_CLASSES   # each label's class name

    def __len__(self):
        return len(self.labels)


def load(name: str, data_dir=None) -> tuple[Split, Split]:
    """(train, test) for a data set name in DATASETS."""
    if name == "digits":
        return load_digits()
    if name in FILE_DATASETS:
        if data_dir is None:
            raise DataError(f"{name}: give the directory that holds its files (--data-dir)")
        if name == "mnist":
            return load_mnist(data_dir)
        from .cifar10 import load_cifar10
        return load_cifar10(data_dir)
    raise DataError(f"unknown data set {name!r}; expected one of {DATASETS}")


def load_digits() -> tuple[Split, Split]:
    """scikit-learn's bundled 8x8 digits (1,797 images), upscaled to 32x32 and normalized by the train split."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(torch.arange(len(labels)).numpy(), test_size=DIGITS_TEST_FRACTION,
                                           random_state=DIGITS_SPLIT_SEED, stratify=labels.numpy())
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    mean, std = images[train_idx].mean(), images[train_idx].std()
    images = (images - mean) / std
    return Split(images[train_idx], labels[train_idx]), Split(images[test_idx], labels[test_idx])


def load_mnist(data_dir, resize: str = "pad") -> tuple[Split, Split]:
    """MNIST from the standard IDX files in data_dir (each raw or .gz), as 32x32 normalized images.

    resize="pad" adds 2 background pixels on each side (LeNet-5's original 32x32 framing);
    resize="bilinear" scales 28x28 up to 32x32.
    """
    if resize not in ("pad", "bilinear"):
        raise DataError(f"mnist: resize must be 'pad' or 'bilinear', got {resize!r}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"mnist: data directory {str(data_dir)!r} does not exist")
    splits = []
    for split, (image_name, label_name) in MNIST_FILES.items():
        images = read_idx_images(_find(data_dir, image_name))
        labels = read_idx_labels(_find(data_dir, label_name))
        if len(images) != len(labels):
            raise DataError(f"mnist {split}: {len(images)} images but {len(labels)} labels "
                            f"({image_name} and {label_name} disagree)")
        x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 255.0
        x = F.pad(x, (2, 2, 2, 2)) if resize == "pad" else F.interpolate(x, size=(32, 32), mode="bilinear",
                                                                          align_corners=False)
        splits.append(Split((x - MNIST_MEAN) / MNIST_STD, torch.tensor(labels, dtype=torch.int64)))
    return splits[0], splits[1]


def _find(data_dir: Path, name: str) -> Path:
    for candidate in (data_dir / name, data_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"mnist: {name} (or {name}.gz) not found in {str(data_dir)!r}")


def _read(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot be read ({error})") from error


def _parse_idx(path: Path, magic: int, dims: int):
    import numpy as np

    data = _read(path)
    header = 4 + 4 * dims
    if len(data) < header:
        raise DataError(f"{path}: truncated: {len(data)} bytes, shorter than the {header}-byte IDX header")
    found = struct.unpack(">I", data[:4])[0]
    if found != magic:
        raise DataError(f"{path}: wrong magic number {found} (expected {magic}); not an IDX file of this kind")
    shape = struct.unpack(f">{dims}I", data[4:header])
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "too long"
        raise DataError(f"{path}: {state}: {len(data)} bytes, but its header {shape} needs {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_images(path) -> "np.ndarray":
    """(count, rows, cols) uint8 from an IDX3 image file."""
    return _parse_idx(Path(path), IDX_IMAGES_MAGIC, 3)


def read_idx_labels(path) -> "np.ndarray":
    """(count,) uint8 from an IDX1 label file."""
    labels = _parse_idx(Path(path), IDX_LABELS_MAGIC, 1)
    if labels.size and labels.max() > 9:
        raise DataError(f"{path}: label {int(labels.max())} is outside 0..9")
    return labels
