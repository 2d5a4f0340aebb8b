"""CIFAR-10 as the user downloaded it: the python or the binary version, unpacked or as its archive.

Nothing is downloaded and nothing is unpacked: an archive is read in place. The python version is
pickled, so it is read by an unpickler that can build only what those files hold (dicts, lists,
bytes, str, ints and uint8 numpy arrays) and refuses anything else, by name, before it runs.
"""

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from .base import DataError, Split

# The tutorial's transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), per channel.
CIFAR10_MEAN, CIFAR10_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
IMAGE_SHAPE = (3, 32, 32)
IMAGE_BYTES = 3 * 32 * 32
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"

# The two versions: folder, archive, metadata file, suffix of each batch file.
PYTHON_VERSION = dict(folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz", meta="batches.meta", suffix="")
BINARY_VERSION = dict(folder="cifar-10-batches-bin", archive="cifar-10-binary.tar.gz", meta="batches.meta.txt",
                      suffix=".bin")

# The globals a pickled numpy array needs (protocol 2, as the files are, and protocol 5); nothing else.
_ALLOWED_GLOBALS = {("numpy._core.multiarray", "_reconstruct"), ("numpy._core.numeric", "_frombuffer"),
                    ("numpy", "ndarray"), ("numpy", "dtype")}


class _Source:
    """The files of one version, from its folder or from inside its archive (never extracted)."""

    def __init__(self, version: dict, folder: Path = None, archive: Path = None):
        self.version, self.folder, self.archive = version, folder, archive
        self._tar = None

    def describe(self, name: str) -> str:
        if self.folder is not None:
            return str(self.folder / name)
        return f"{self.archive}:{self.version['folder']}/{name}"

    def read(self, name: str) -> bytes:
        if self.folder is not None:
            path = self.folder / name
            if not path.is_file():
                raise DataError(f"cifar10: {path} not found")
            try:
                return path.read_bytes()
            except OSError as error:
                raise DataError(f"cifar10: {path}: cannot be read ({error})") from error
        try:
            if self._tar is None:
                self._tar = tarfile.open(self.archive, "r:gz")
            member = self._tar.getmember(f"{self.version['folder']}/{name}")
        except KeyError:
            raise DataError(f"cifar10: {self.describe(name)} not found in the archive") from None
        except (OSError, tarfile.TarError, EOFError) as error:
            raise DataError(f"cifar10: {self.archive}: cannot be read as a .tar.gz archive ({error})") from error
        if not member.isfile():
            raise DataError(f"cifar10: {self.describe(name)} is not a regular file in the archive")
        try:
            return self._tar.extractfile(member).read()
        except (OSError, tarfile.TarError, EOFError) as error:
            raise DataError(f"cifar10: {self.describe(name)}: cannot be read ({error})") from error

    def close(self):
        if self._tar is not None:
            self._tar.close()


def find_source(data_dir) -> _Source:
    """The first version found in data_dir: a folder (or data_dir itself) before an archive, the
    python version before the binary one."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"cifar10: data directory {str(data_dir)!r} does not exist")
    for version in (PYTHON_VERSION, BINARY_VERSION):
        for folder in (data_dir / version["folder"], data_dir):
            if (folder / version["meta"]).is_file():
                return _Source(version, folder=folder)
    for version in (PYTHON_VERSION, BINARY_VERSION):
        if (data_dir / version["archive"]).is_file():
            return _Source(version, archive=data_dir / version["archive"])
    raise DataError(f"cifar10: no CIFAR-10 in {str(data_dir)!r}: expected the folder "
                    f"{PYTHON_VERSION['folder']} or {BINARY_VERSION['folder']}, or the archive "
                    f"{PYTHON_VERSION['archive']} or {BINARY_VERSION['archive']}")


class _DataOnlyUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, where: str):
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.where = where

    def find_class(self, module, name):
        # The files were written by numpy 1, whose numpy.core is numpy 2's numpy._core.
        module = "numpy._core" + module[len("numpy.core"):] if module.startswith("numpy.core.") else module
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):
            return self._latin1_bytes   # how Python 3 writes bytes at protocol 2 (a re-pickled copy)
        raise DataError(f"cifar10: {self.where}: refused: the pickle asks for {module}.{name}, which a "
                        "CIFAR-10 file never holds (only dicts, lists, bytes, ints and numpy arrays); nothing was run")

    def _latin1_bytes(self, text, encoding):
        if not isinstance(text, str) or encoding != "latin1":
            raise DataError(f"cifar10: {self.where}: refused: the pickle encodes a {type(text).__name__} "
                            f"with {encoding!r}, not a str with 'latin1' (how Python 3 writes bytes)")
        return text.encode("latin1")

    def persistent_load(self, pid):
        raise DataError(f"cifar10: {self.where}: refused: the pickle holds a persistent reference")


def _check_plain(value, where: str, depth: int = 0):
    """Only the types CIFAR-10's pickles hold, all the way down."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, where, depth + 1)
            _check_plain(item, where, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_plain(item, where, depth + 1)
    elif isinstance(value, np.ndarray):
        if value.dtype != np.uint8:
            raise DataError(f"cifar10: {where}: holds a numpy array of {value.dtype}, expected uint8")
    elif not isinstance(value, (bytes, str, int)) or isinstance(value, bool):
        raise DataError(f"cifar10: {where}: holds a {type(value).__name__}, which a CIFAR-10 file never does")


def _unpickle(source: _Source, name: str) -> dict:
    where = source.describe(name)
    try:
        value = _DataOnlyUnpickler(source.read(name), where).load()
    except DataError:
        raise
    except Exception as error:  # a truncated or corrupt pickle fails in many ways
        raise DataError(f"cifar10: {where}: not a readable CIFAR-10 pickle ({type(error).__name__}: {error})") from None
    _check_plain(value, where)
    if not isinstance(value, dict):
        raise DataError(f"cifar10: {where}: holds a {type(value).__name__}, expected a dict")
    return {key.decode() if isinstance(key, bytes) else key: item for key, item in value.items()}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _python_meta(source: _Source) -> tuple:
    meta = _unpickle(source, source.version["meta"])
    names, per_batch = meta.get("label_names"), meta.get("num_cases_per_batch")
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"cifar10: {source.describe(source.version['meta'])}: label_names must list 10 classes")
    if not isinstance(per_batch, int) or per_batch < 1:
        raise DataError(f"cifar10: {source.describe(source.version['meta'])}: num_cases_per_batch must be >= 1")
    return tuple(_text(n) for n in names), per_batch


def _python_batch(source: _Source, name: str, records: int) -> tuple:
    where = source.describe(name)
    batch = _unpickle(source, name)
    images, labels = batch.get("data"), batch.get("labels")
    if not isinstance(images, np.ndarray) or not isinstance(labels, list):
        raise DataError(f"cifar10: {where}: expected 'data' (a numpy array) and 'labels' (a list)")
    if images.shape != (records, IMAGE_BYTES):
        raise DataError(f"cifar10: {where}: data has shape {images.shape}, expected ({records}, {IMAGE_BYTES}) "
                        f"({records} records a batch, as batches.meta says)")
    if len(labels) != records:
        raise DataError(f"cifar10: {where}: {len(labels)} labels for {records} records")
    return images, np.asarray(labels, dtype=np.int64)


def _binary_meta(source: _Source) -> tuple:
    where = source.describe(source.version["meta"])
    try:
        names = [line.strip() for line in source.read(source.version["meta"]).decode().splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise DataError(f"cifar10: {where}: not a text file of class names") from None
    if len(names) != 10:
        raise DataError(f"cifar10: {where}: lists {len(names)} class names, expected 10")
    return tuple(names), None


def _binary_batch(source: _Source, name: str, records) -> tuple:
    where = source.describe(name)
    data = source.read(name)
    record = 1 + IMAGE_BYTES   # one label byte, then the image
    if len(data) == 0 or len(data) % record:
        raise DataError(f"cifar10: {where}: {len(data)} bytes is not a whole number of {record}-byte records "
                        "(truncated or not a CIFAR-10 batch)")
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    if records is not None and len(rows) != records:
        raise DataError(f"cifar10: {where}: {len(rows)} records, but the other batches hold {records}")
    return rows[:, 1:], rows[:, 0].astype(np.int64)


def _split(images: list, labels: list, classes: tuple, where: str) -> Split:
    labels = np.concatenate(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(f"cifar10: {where}: label {int(labels.max())} is outside 0..{len(classes) - 1}")
    x = torch.from_numpy(np.concatenate(images)).view(-1, *IMAGE_SHAPE).float().div_(255)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return Split((x - mean) / std, torch.from_numpy(labels), classes)


def load_cifar10(data_dir) -> tuple[Split, Split]:
    """(train, test) from the CIFAR-10 distribution in data_dir: 50,000 and 10,000 3x32x32 images,
    normalized per channel as the tutorial does, with the class names of its metadata."""
    source = find_source(data_dir)
    python = source.version is PYTHON_VERSION
    try:
        classes, records = _python_meta(source) if python else _binary_meta(source)
        read_batch = _python_batch if python else _binary_batch
        splits = []
        for names in (TRAIN_BATCHES, (TEST_BATCH,)):
            images, labels = [], []
            for name in names:
                batch_images, batch_labels = read_batch(source, name + source.version["suffix"], records)
                records = len(batch_labels)   # the binary version: every batch as long as the first
                images.append(batch_images)
                labels.append(batch_labels)
            splits.append(_split(images, labels, classes, source.describe(names[0] + source.version["suffix"])))
    finally:
        source.close()
    return splits[0], splits[1]
