"""CIFAR-10 from small files written here in the official layouts (python and binary versions, as
folders and as archives): what was written is what loads, and every bad file is refused by name.
Nothing is downloaded."""

import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

from lenet_triton import datasets as data
from lenet_triton.datasets import cifar10

# Loaders only: the same on every triton version.
pytestmark = pytest.mark.torch_only

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
RECORDS = 7   # per batch file; the real files hold 10,000
BATCHES = [*cifar10.TRAIN_BATCHES, cifar10.TEST_BATCH]


def _batches(seed=0, records=RECORDS):
    """{batch name: (images (records, 3072) uint8, labels list)}, random and never all zeros."""
    rng = np.random.default_rng(seed)
    return {name: (rng.integers(0, 256, (records, cifar10.IMAGE_BYTES), dtype=np.uint8),
                   rng.integers(0, 10, records).tolist()) for name in BATCHES}


def _python_files(batches) -> dict:
    files = {"batches.meta": pickle.dumps({b"label_names": [c.encode() for c in CLASSES],
                                           b"num_cases_per_batch": RECORDS, b"num_vis": cifar10.IMAGE_BYTES},
                                          protocol=2)}
    for name, (images, labels) in batches.items():
        files[name] = pickle.dumps({b"batch_label": f"{name} of 6".encode(), b"labels": labels, b"data": images,
                                    b"filenames": [f"{i}.png".encode() for i in range(len(labels))]}, protocol=2)
    return files


def _binary_files(batches) -> dict:
    files = {"batches.meta.txt": ("\n".join(CLASSES) + "\n\n").encode()}
    for name, (images, labels) in batches.items():
        files[f"{name}.bin"] = np.concatenate([np.asarray(labels, np.uint8)[:, None], images], axis=1).tobytes()
    return files


def _write(tmp_path, version, files, archive=False):
    """The files as the distribution lays them out: a folder, or the .tar.gz holding that folder."""
    if not archive:
        folder = tmp_path / version["folder"]
        folder.mkdir()
        for name, content in files.items():
            (folder / name).write_bytes(content)
        return
    with tarfile.open(tmp_path / version["archive"], "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(f"{version['folder']}/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


def _expected(batches, names):
    images = np.concatenate([batches[n][0] for n in names]).reshape(-1, 3, 32, 32)
    labels = sum((batches[n][1] for n in names), [])
    return (torch.from_numpy(images).double() / 255 - 0.5) / 0.5, torch.tensor(labels)


LAYOUTS = {"python folder": (cifar10.PYTHON_VERSION, _python_files, False),
           "python archive": (cifar10.PYTHON_VERSION, _python_files, True),
           "binary folder": (cifar10.BINARY_VERSION, _binary_files, False),
           "binary archive": (cifar10.BINARY_VERSION, _binary_files, True)}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_what_was_written_is_what_loads(tmp_path, layout):
    version, make_files, archive = LAYOUTS[layout]
    batches = _batches()
    _write(tmp_path, version, make_files(batches), archive)
    train, test = data.load("cifar10", tmp_path)
    for split, names in ((train, cifar10.TRAIN_BATCHES), (test, [cifar10.TEST_BATCH])):
        images, labels = _expected(batches, names)
        assert split.images.shape == (len(names) * RECORDS, 3, 32, 32) and split.images.dtype == torch.float32
        torch.testing.assert_close(split.images.double(), images, atol=1e-6, rtol=0)
        assert torch.equal(split.labels, labels) and split.classes == CLASSES


def test_the_batches_folder_itself_can_be_the_data_dir(tmp_path):
    batches = _batches(1)
    _write(tmp_path, cifar10.PYTHON_VERSION, _python_files(batches))
    train, _ = data.load("cifar10", tmp_path / cifar10.PYTHON_VERSION["folder"])
    assert torch.equal(train.labels, _expected(batches, cifar10.TRAIN_BATCHES)[1])


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_a_command_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "it-ran"
    files = _python_files(_batches())
    files["data_batch_2"] = pickle.dumps({b"labels": [0], b"data": _RunsACommand(marker)}, protocol=2)
    _write(tmp_path, cifar10.PYTHON_VERSION, files)
    with pytest.raises(data.DataError) as refused:
        data.load("cifar10", tmp_path)
    message = str(refused.value)
    assert "data_batch_2" in message and "system" in message and "nothing was run" in message, message
    assert not marker.exists()


def _python_case(change):
    def make(batches):
        files = _python_files(batches)
        change(files, batches)
        return files
    return make


def _repickle(files, name, **replace):
    batch = pickle.loads(files[name], encoding="bytes")
    batch.update({key.encode(): value for key, value in replace.items()})
    files[name] = pickle.dumps(batch, protocol=2)


BAD_FILES = {
    "truncated pickle": (cifar10.PYTHON_VERSION, _python_case(
        lambda f, b: f.update(data_batch_3=f["data_batch_3"][:-40])), "data_batch_3", "not a readable CIFAR-10 pickle"),
    "too few records": (cifar10.PYTHON_VERSION, _python_case(
        lambda f, b: _repickle(f, "test_batch", data=b["test_batch"][0][:5])), "test_batch", "expected (7, 3072)"),
    "labels and data disagree": (cifar10.PYTHON_VERSION, _python_case(
        lambda f, b: _repickle(f, "data_batch_1", labels=[1, 2])), "data_batch_1", "2 labels for 7 records"),
    "a float inside": (cifar10.PYTHON_VERSION, _python_case(
        lambda f, b: _repickle(f, "data_batch_4", batch_label=0.5)), "data_batch_4", "holds a float"),
    "not uint8": (cifar10.PYTHON_VERSION, _python_case(
        lambda f, b: _repickle(f, "data_batch_5", data=b["data_batch_5"][0].astype(np.float32))), "data_batch_5",
        "expected uint8"),
    "nine classes": (cifar10.PYTHON_VERSION, _python_case(
        lambda f, b: f.update({"batches.meta": pickle.dumps({b"label_names": [b"x"] * 9,
                                                             b"num_cases_per_batch": RECORDS})})),
        "batches.meta", "must list 10 classes"),
    "missing batch": (cifar10.PYTHON_VERSION, _python_case(lambda f, b: f.pop("data_batch_2")), "data_batch_2",
                      "not found"),
    "truncated binary": (cifar10.BINARY_VERSION, lambda b: {**_binary_files(b), "data_batch_2.bin":
                         _binary_files(b)["data_batch_2.bin"][:-100]}, "data_batch_2.bin", "whole number of 3073"),
    "binary record count": (cifar10.BINARY_VERSION, lambda b: {**_binary_files(b), "test_batch.bin":
                            _binary_files(b)["test_batch.bin"] * 2}, "test_batch.bin", "14 records, but the other"),
    "binary label out of range": (cifar10.BINARY_VERSION, lambda b: {**_binary_files(b), "data_batch_1.bin":
                                  b"\x0a" + _binary_files(b)["data_batch_1.bin"][1:]}, "data_batch_1.bin",
                                  "label 10 is outside 0..9"),
    "binary meta": (cifar10.BINARY_VERSION, lambda b: {**_binary_files(b), "batches.meta.txt": b"cat\ndog\n"},
                    "batches.meta.txt", "lists 2 class names"),
}


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "archive"])
@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_are_refused_by_name(tmp_path, case, archive):
    version, make_files, name, message = BAD_FILES[case]
    _write(tmp_path, version, make_files(_batches()), archive)
    with pytest.raises(data.DataError) as refused:
        data.load("cifar10", tmp_path)
    where = f"{version['archive']}:{version['folder']}/{name}" if archive else f"{version['folder']}/{name}"
    assert where in str(refused.value) and message in str(refused.value), str(refused.value)


def test_a_corrupt_archive_and_an_empty_folder_are_refused(tmp_path):
    with pytest.raises(data.DataError, match="no CIFAR-10 in"):
        data.load("cifar10", tmp_path)
    with pytest.raises(data.DataError, match="does not exist"):
        data.load("cifar10", tmp_path / "nowhere")
    with pytest.raises(data.DataError, match="needs|give the directory"):
        data.load("cifar10")
    (tmp_path / cifar10.BINARY_VERSION["archive"]).write_bytes(b"not a gzip file")
    with pytest.raises(data.DataError, match="cifar-10-binary.tar.gz: cannot be read as a .tar.gz archive"):
        data.load("cifar10", tmp_path)
