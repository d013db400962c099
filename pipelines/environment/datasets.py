"""Datasets for the environment, as normalised in-memory tensors with a fixed train/validation split.

- `digits_hard`: the environment's default. The digits below, each image with fixed Gaussian pixel
  noise (std 0.2 of the [0, 1] range, drawn once from a fixed generator: the same images in every
  episode), split three ways, stratified: held-out test 30% (539), decision validation 20% (359),
  train 899. Healthy hosts reach ~90% instead of the clean digits' ~98%, so remedies have headroom.
  The test split is read only by the episode's final score (`primary_score`); features, the
  heuristic's seed-path gain and counterfactual labels use the decision-validation split.
- `digits`: the handwritten digits that ship with scikit-learn (1,797 8x8 grayscale images, 10
  classes); real data, no download.
- `cifar10`: the standard CIFAR-10 python batches (`data_batch_1..5`, `test_batch`) a user already
  has, read from `data_dir` (or its `cifar-10-batches-py` folder). Train = the five data batches,
  validation = the test batch. The pickles are read with an unpickler that only accepts the few
  numpy constructors those files use, so a hostile file cannot run code.
- `synthetic`: class prototypes plus noise, generated from a seed; for fast tests.

Normalisation uses per-channel mean and std of the training split only. Everything is held as
tensors: the environment shuffles indices itself, from its own generator, so no DataLoader worker
or global RNG takes part in an episode.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from telemetry import EsperError

DATASETS = ("digits_hard", "digits", "cifar10", "synthetic")
HARD_NOISE = 0.2  # std of digits_hard's pixel noise, in units of the [0, 1] pixel range
HARD_VAL_FRACTION, HARD_TEST_FRACTION = 0.2, 0.3
HARD_NOISE_SEED = 0x0D16175
WITH_TEST_SPLIT = ("digits_hard",)  # the data sets a primary score can be computed on
NUM_CLASSES = 10  # all three have ten classes; fixed, so a small subset cannot shrink the head
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"
CIFAR_PIXELS = 3 * 32 * 32
CIFAR_EXPECTED = "a pickled dict with b'data' (uint8, N x 3072) and b'labels' (N ints in 0-9)"


class DatasetError(EsperError):
    """A dataset is unknown, missing or malformed."""


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: torch.Tensor  # float32 [N, C, H, W], normalised
    y_train: torch.Tensor  # int64 [N]
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    x_test: torch.Tensor | None = None  # held-out host test split: read only by the final score
    y_test: torch.Tensor | None = None

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def size(self) -> int:
        return int(self.x_train.shape[-1])


def load_dataset(name: str, data_dir: str | Path | None = None, *, val_fraction: float = 0.2,
                 split_seed: int = 0, max_train: int | None = None, num_samples: int = 1000) -> Dataset:
    """Load `name` as normalised tensors.

    `val_fraction` and `split_seed` set the fixed split of datasets without one (digits, synthetic);
    `max_train` keeps the first N training examples after the split (for quick runs on CIFAR-10);
    `num_samples` is the size of the synthetic set.
    """
    if name == "digits_hard":
        return load_digits_hard(split_seed=split_seed)
    if name == "digits":
        x, y = _digits()
        parts = _split(x, y, val_fraction, split_seed)
    elif name == "synthetic":
        x, y = _synthetic(num_samples, seed=split_seed)
        parts = _split(x, y, val_fraction, split_seed)
    elif name == "cifar10":
        parts = _cifar10(data_dir)
    else:
        raise DatasetError(f"unknown dataset {name!r}; expected one of: {', '.join(DATASETS)}")
    return _finish(name, *parts, max_train=max_train)


def _finish(name: str, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
            *, max_train: int | None) -> Dataset:
    if max_train is not None:
        x_train, y_train = x_train[:max_train], y_train[:max_train]
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    num_classes = NUM_CLASSES

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((a - mean) / std).astype(np.float32))

    return Dataset(name, tensor(x_train), torch.from_numpy(y_train.astype(np.int64)), tensor(x_val),
                   torch.from_numpy(y_val.astype(np.int64)), num_classes)


def load_digits_hard(*, noise: float = HARD_NOISE, val_fraction: float = HARD_VAL_FRACTION,
                     test_fraction: float = HARD_TEST_FRACTION, split_seed: int = 0) -> Dataset:
    """Digits with fixed pixel noise, split into train / decision validation / held-out test.

    The noise is drawn once per image from a fixed generator, so the task is harder at no extra
    cost per epoch; the test split is normalised with the training split's statistics, like the rest."""
    x, y = _digits()
    x = x + np.random.default_rng(HARD_NOISE_SEED).normal(scale=noise, size=x.shape).astype(np.float32)
    rest_x, rest_y, x_test, y_test = _split(x, y, test_fraction, split_seed + 1)
    x_train, y_train, x_val, y_val = _split(rest_x, rest_y, val_fraction / (1 - test_fraction), split_seed)
    ds = _finish("digits_hard", x_train, y_train, x_val, y_val, max_train=None)
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    test = torch.from_numpy(((x_test - mean) / std).astype(np.float32))
    return Dataset(ds.name, ds.x_train, ds.y_train, ds.x_val, ds.y_val, ds.num_classes,
                   test, torch.from_numpy(y_test.astype(np.int64)))


def _split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """A fixed, stratified split: the same examples are validation in every episode."""
    rng = np.random.default_rng(seed)
    val = np.zeros(len(y), dtype=bool)
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        val[rng.permutation(idx)[: int(round(len(idx) * val_fraction))]] = True
    train_idx = rng.permutation(np.flatnonzero(~val))
    val_idx = np.flatnonzero(val)
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images / 16.0).astype(np.float32)[:, None], bunch.target.astype(np.int64)


def _synthetic(n: int, seed: int, size: int = 8,
               num_classes: int = NUM_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random class prototypes plus pixel noise: learnable, not trivial, generated in ms."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(num_classes, 1, size // 2, size // 2))
    prototypes = coarse.repeat(2, axis=2).repeat(2, axis=3)
    y = rng.integers(0, num_classes, size=n)
    x = prototypes[y] + rng.normal(scale=1.5, size=(n, 1, size, size))
    return x.astype(np.float32), y.astype(np.int64)


# ---- CIFAR-10 --------------------------------------------------------------------------------------
class _CifarUnpickler(pickle.Unpickler):
    """Accepts only what the CIFAR-10 batches contain: dicts, lists, bytes and numpy arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _cifar_dir(data_dir: str | Path | None) -> Path:
    if data_dir is None:
        raise DatasetError("cifar10: no --data-dir given; expected a folder holding the CIFAR-10 python "
                           f"batches ({', '.join(CIFAR_TRAIN_FILES[:1])}..5, {CIFAR_TEST_FILE})")
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"cifar10: data dir {root} does not exist or is not a folder")
    nested = root / "cifar-10-batches-py"
    return nested if not (root / CIFAR_TEST_FILE).exists() and nested.is_dir() else root


def _cifar10(data_dir: str | Path | None) -> tuple[np.ndarray, ...]:
    root = _cifar_dir(data_dir)
    train = [read_cifar_batch(root / f) for f in CIFAR_TRAIN_FILES]
    x_val, y_val = read_cifar_batch(root / CIFAR_TEST_FILE)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_val, y_val


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (float32 [N, 3, 32, 32] in [0, 1], int64 [N]); errors name the file."""
    if not path.is_file():
        raise DatasetError(f"cifar10: {path} not found; expected the CIFAR-10 python batch file "
                           f"{path.name} ({CIFAR_EXPECTED})")
    try:
        with path.open("rb") as fh:
            batch = _CifarUnpickler(fh, encoding="bytes").load()
    except Exception as exc:  # any unpickling failure is a malformed file, reported in one line
        detail = str(exc).splitlines()[0] if str(exc) else "no detail"
        raise DatasetError(f"cifar10: {path} is not a readable CIFAR-10 python batch "
                           f"({type(exc).__name__}: {detail}); expected {CIFAR_EXPECTED}") from None
    return _check_cifar_batch(path, batch)


def _check_cifar_batch(path: Path, batch: object) -> tuple[np.ndarray, np.ndarray]:
    def bad(what: str) -> DatasetError:
        return DatasetError(f"cifar10: {path}: {what}; expected {CIFAR_EXPECTED}")

    if not isinstance(batch, dict):
        raise bad(f"holds a {type(batch).__name__}, not a dict")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise bad(f"keys are {sorted(map(str, batch))}, missing data or labels")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_PIXELS:
        raise bad(f"data is {data.dtype} with shape {data.shape}")
    labels = np.asarray(labels)
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise bad(f"labels have shape {labels.shape} and dtype {labels.dtype} for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise bad(f"labels range over {labels.min()}..{labels.max()}")
    images = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return images, labels.astype(np.int64)
