"""MNIST from the standard IDX files the user already has (each raw or .gz), as 32x32 images."""

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import DataError, Split

# The classic MNIST normalization (mean and std of the training pixels scaled to [0, 1]).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049


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
