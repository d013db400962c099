"""Datasets: the CIFAR-10 reader on files written in the real batch format, errors, digits, synthetic."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.environment.datasets import (
    CIFAR_TEST_FILE,
    CIFAR_TRAIN_FILES,
    DatasetError,
    load_dataset,
    read_cifar_batch,
)
from telemetry.errors import EsperError


def write_batch(path: Path, n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """A batch as the CIFAR-10 python files hold it: bytes keys, uint8 N x 3072 rows (R, G, B planes)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    batch = {b"batch_label": b"training batch", b"labels": labels, b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return data, labels


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i, name in enumerate(CIFAR_TRAIN_FILES):
        write_batch(root / name, 6, seed=i)
    write_batch(root / CIFAR_TEST_FILE, 5, seed=99)
    return root


def test_reads_a_batch_exactly(tmp_path):
    data, labels = write_batch(tmp_path / "data_batch_1", 4, seed=3)
    images, y = read_cifar_batch(tmp_path / "data_batch_1")
    assert images.shape == (4, 3, 32, 32) and images.dtype == np.float32
    assert y.tolist() == labels
    # channel-major layout: the first 1024 values are the red plane, row by row
    assert images[1, 0, 0, 5] == pytest.approx(data[1, 5] / 255)
    assert images[2, 2, 31, 31] == pytest.approx(data[2, 3071] / 255)


def test_loads_the_folder_or_its_parent(cifar_dir):
    for where in (cifar_dir, cifar_dir.parent):
        ds = load_dataset("cifar10", where)
        assert ds.x_train.shape == (30, 3, 32, 32) and ds.x_val.shape == (5, 3, 32, 32)
        assert ds.num_classes == 10 and ds.channels == 3 and ds.size == 32
        means = ds.x_train.mean(dim=(0, 2, 3))
        torch.testing.assert_close(means, torch.zeros(3), atol=1e-5, rtol=0)
    assert load_dataset("cifar10", cifar_dir, max_train=7).x_train.shape[0] == 7


def _message(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and isinstance(exc.value, EsperError)
    return text


def test_missing_file_names_it(cifar_dir):
    (cifar_dir / "data_batch_3").unlink()
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", cifar_dir)
    assert f"{cifar_dir / 'data_batch_3'} not found" in _message(exc)


def test_missing_dir_and_no_dir(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="no --data-dir given"):
        load_dataset("cifar10")


@pytest.mark.parametrize(("content", "expect"), [
    (b"not a pickle at all", "is not a readable CIFAR-10 python batch"),
    (pickle.dumps([1, 2, 3], protocol=2), "holds a list, not a dict"),
    (pickle.dumps({b"labels": [1]}, protocol=2), "missing data or labels"),
    (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]}, protocol=2), "shape (2, 100)"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [1, 2]}, protocol=2), "float32"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, protocol=2), "labels have shape"),
    (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [12]}, protocol=2), "over 12..12"),
])
def test_malformed_batches_get_one_clear_line(tmp_path, content, expect):
    path = tmp_path / "data_batch_1"
    path.write_bytes(content)
    with pytest.raises(DatasetError) as exc:
        read_cifar_batch(path)
    message = _message(exc)
    assert str(path) in message and expect in message and "expected" in message


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DatasetError, match="refusing to load"):
        read_cifar_batch(path)


def test_digits_is_real_embedded_data():
    ds = load_dataset("digits")
    assert ds.x_train.shape[1:] == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.y_train) + len(ds.y_val) == 1797
    assert abs(float(ds.x_train.mean())) < 1e-4 and abs(float(ds.x_train.std()) - 1) < 1e-2
    again = load_dataset("digits")
    assert torch.equal(again.x_val, ds.x_val)  # the split is fixed
    counts = torch.bincount(ds.y_val, minlength=10)
    assert counts.min() >= 30  # stratified


def test_synthetic_and_unknown():
    ds = load_dataset("synthetic", num_samples=100)
    assert ds.x_train.shape[1:] == (1, 8, 8) and len(ds.y_train) + len(ds.y_val) == 100
    assert 15 <= len(ds.y_val) <= 25  # stratified: 20% of each class, rounded per class
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'; expected one of: digits_hard, digits, cifar10, s"):
        load_dataset("mnist")
