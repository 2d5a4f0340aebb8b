"""The embedded digits data and the MNIST IDX loader, including corrupt and missing files."""

import gzip
import struct

import numpy as np
import pytest
import torch

from lenet_triton import datasets as data

# Loaders only: the same on every triton version.
pytestmark = pytest.mark.torch_only


def test_digits_split_is_fixed_and_normalized():
    train, test = data.load("digits")
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.shape == (1437, 1, 32, 32) and train.images.dtype == torch.float32
    assert abs(train.images.mean().item()) < 1e-4 and abs(train.images.std().item() - 1) < 1e-4
    assert sorted(torch.bincount(test.labels).tolist())[0] >= 35      # stratified: every class is there
    again, _ = data.load("digits")
    assert torch.equal(train.labels, again.labels) and torch.equal(train.images, again.images)


def _write_idx(path, magic, array, gz=False, cut=0, extra=b""):
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes() + extra
    payload = payload[:len(payload) - cut] if cut else payload
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(payload)


def _fake_mnist(tmp_path, gz, train_count=7, test_count=3, label_count=None):
    """Writes random IDX files; returns what was written: [(images, labels) of train, of test]."""
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    written = []
    for (images_name, labels_name), count in zip(data.MNIST_FILES.values(), (train_count, test_count)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, (label_count or count,), dtype=np.uint8)
        _write_idx(tmp_path / f"{images_name}{suffix}", 2051, images, gz)
        _write_idx(tmp_path / f"{labels_name}{suffix}", 2049, labels, gz)
        written.append((images, labels))
    return written


def _bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """Rows of weights that resample size_in samples to size_out, pixel centres aligned (torch's
    align_corners=False): output i reads input (i + 0.5) * size_in / size_out - 0.5, clamped."""
    matrix = np.zeros((size_out, size_in))
    for i in range(size_out):
        source = min(max((i + 0.5) * size_in / size_out - 0.5, 0.0), size_in - 1)
        low = int(np.floor(source))
        high = min(low + 1, size_in - 1)
        matrix[i, low] += 1 - (source - low)
        matrix[i, high] += source - low
    return matrix


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("resize", ["pad", "bilinear"])
def test_mnist_idx_files_load_as_32x32(tmp_path, gz, resize):
    written = _fake_mnist(tmp_path, gz)
    loaded = data.load_mnist(tmp_path, resize=resize)
    for split, (images, labels), count in zip(loaded, written, (7, 3)):
        assert split.images.shape == (count, 1, 32, 32) and split.images.dtype == torch.float32
        assert split.labels.dtype == torch.int64 and torch.equal(split.labels, torch.from_numpy(labels).long())
        scaled = images.astype(np.float64) / 255
        if resize == "pad":
            framed = np.zeros((count, 32, 32))
            framed[:, 2:30, 2:30] = scaled
        else:
            resample = _bilinear_matrix(28, 32)
            framed = resample @ scaled @ resample.T
        expected = torch.from_numpy((framed - data.MNIST_MEAN) / data.MNIST_STD).float()
        torch.testing.assert_close(split.images[:, 0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("problem, message", [
    ("magic", "wrong magic number 2049"),
    ("truncated", "truncated"),
    ("too long", "too long"),
    ("counts", "7 images but 5 labels"),
    ("missing", "not found"),
    ("not gzip", "cannot be read"),
])
def test_mnist_problems_give_clear_errors(tmp_path, problem, message):
    _fake_mnist(tmp_path, gz=False, label_count=5 if problem == "counts" else None)
    images = tmp_path / "train-images-idx3-ubyte"
    if problem == "magic":
        _write_idx(images, 2049, np.zeros((7, 28, 28), np.uint8) + 1)
    elif problem == "truncated":
        _write_idx(images, 2051, np.ones((7, 28, 28), np.uint8), cut=100)
    elif problem == "too long":
        _write_idx(images, 2051, np.ones((7, 28, 28), np.uint8), extra=b"\x00" * 9)
    elif problem == "missing":
        images.unlink()
    elif problem == "not gzip":
        images.rename(tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(data.DataError, match=message):
        data.load_mnist(tmp_path)


def test_mnist_needs_an_existing_directory(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_mnist(tmp_path / "nowhere")
    with pytest.raises(data.DataError, match="--data-dir"):
        data.load("mnist")
    with pytest.raises(data.DataError, match="unknown data set"):
        data.load("cifar")
