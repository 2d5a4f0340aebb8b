"""The embedded digits data and the MNIST IDX loader, including corrupt and missing files."""

import gzip
import struct

import numpy as np
import pytest
import torch

from lenet_triton import data

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
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for (images_name, labels_name), count in zip(data.MNIST_FILES.values(), (train_count, test_count)):
        _write_idx(tmp_path / f"{images_name}{suffix}", 2051, rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), gz)
        _write_idx(tmp_path / f"{labels_name}{suffix}", 2049,
                   rng.integers(0, 10, (label_count or count,), dtype=np.uint8), gz)
    return rng


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("resize", ["pad", "bilinear"])
def test_mnist_idx_files_load_as_32x32(tmp_path, gz, resize):
    _fake_mnist(tmp_path, gz)
    train, test = data.load_mnist(tmp_path, resize=resize)
    assert train.images.shape == (7, 1, 32, 32) and test.images.shape == (3, 1, 32, 32)
    raw = data.read_idx_images(tmp_path / f"train-images-idx3-ubyte{'.gz' if gz else ''}")
    expected = (torch.from_numpy(raw[0].astype(np.float32)) / 255 - data.MNIST_MEAN) / data.MNIST_STD
    if resize == "pad":
        assert torch.allclose(train.images[0, 0, 2:30, 2:30], expected)
        assert torch.allclose(train.images[0, 0, 0], torch.full((32,), -data.MNIST_MEAN / data.MNIST_STD))
    assert train.labels.dtype == torch.int64 and int(train.labels.max()) <= 9


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
