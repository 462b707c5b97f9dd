"""Datasets that load without a network connection: files on disk in, tensors in memory out.

Every dataset is held whole in memory as float32 tensors (N x C x H x W),
standardised per channel with statistics of its *training* split, so that
training code can draw minibatches by indexing instead of going through a
per-sample ``DataLoader``.

Sources:

* ``digits`` -- scikit-learn's bundled 8x8 digits; no files needed.
* ``fashion-mnist`` / ``mnist`` -- the four standard IDX files (raw or gzip).
  Debian's ``dataset-fashion-mnist`` installs Fashion-MNIST under
  :data:`DEFAULT_DATA_DIRS`.
* ``cifar10`` -- the standard ``cifar-10-batches-py`` pickles, read with
  :func:`motune.safe_pickle.restricted_loads`, which can only rebuild numpy
  arrays and plain containers, never run code.

Each source has one loader (``_load_digits``, ``_load_idx_dir``, ``_load_cifar10``)
returning numpy train / validation / test splits; :func:`load_dataset` picks it and
does what all share (subsetting, resizing, standardisation). Downloading is left
to the user: torchvision is an optional extra that does not import against every
CPU build of torch.

Anything wrong with a data file raises :class:`DataError` naming the file,
what was wrong and how to get intact data; low-level decoding errors are never
leaked.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from motune.imports import ImportPathError, call, is_import_path, resolve
from motune.safe_pickle import ForbiddenGlobal, restricted_loads

__all__ = [
    "DATASETS",
    "DEFAULT_DATA_DIRS",
    "DataError",
    "Dataset",
    "Loaders",
    "as_data",
    "load_data",
    "load_dataset",
    "read_cifar_batch",
    "read_idx",
]

DATASETS: tuple[str, ...] = ("digits", "fashion-mnist", "mnist", "cifar10")

# Debian package `dataset-fashion-mnist` installs the four gzipped IDX files here.
DEFAULT_DATA_DIRS: dict[str, str] = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}

_HINTS: dict[str, str] = {
    "fashion-mnist": (
        "apt-get install dataset-fashion-mnist (after apt-get update), "
        "or pass --data-dir DIR holding the four IDX files"
    ),
    "mnist": (
        "download the standard MNIST files (train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz) and pass their directory with --data-dir DIR"
    ),
    "cifar10": (
        "download the standard files (cifar-10-python.tar.gz from "
        "https://www.cs.toronto.edu/~kriz/cifar.html), extract it and pass their "
        "directory (cifar-10-batches-py or its parent) with --data-dir DIR"
    ),
}
_GENERIC_HINT = "replace it with an intact copy of the standard file"

# Default validation share of the official training set.
_DEFAULT_VAL_FRACTION = {"digits": 0.2, "fashion-mnist": 1 / 6, "mnist": 1 / 6, "cifar10": 0.1}
_DIGITS_TEST_FRACTION = 0.2
_NUM_CLASSES = 10

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# torchvision's on-disk layout, accepted below the given directory as a convenience.
_TORCHVISION_SUBDIRS = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw"}
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_FILE = "test_batch"
_CIFAR_PIXELS = 3 * 32 * 32


class DataError(ValueError):
    """A data file is missing or malformed.

    The message names the file, what was wrong, and how to get the data.
    """


def _data_error(path: str | os.PathLike[str], what: str, hint: str) -> DataError:
    """A DataError in the one message format every data error uses (the caller raises it)."""
    return DataError(f"{os.fspath(path)}: {what}. To get the data: {hint}")


# --------------------------------------------------------------------------- #
# Dataset container
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, eq=False)  # eq=False: tensor == tensor is not a bool
class Dataset:
    """A whole dataset in memory, already split and standardised.

    Images are float32 N x C x H x W, standardised per channel with the mean and
    standard deviation of ``x_train``; labels are int64 in ``0..num_classes-1``.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (C, H, W) for images, (features,) for a table."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> Dataset:
        """Return a copy with every tensor moved to ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, train={len(self.y_train)}, "
            f"val={len(self.y_val)}, test={len(self.y_test)}, "
            f"device={self.x_train.device})"
        )


# --------------------------------------------------------------------------- #
# IDX files
# --------------------------------------------------------------------------- #

# dtype code -> (big-endian numpy dtype, words for messages)
_IDX_DTYPES: dict[int, tuple[str, str]] = {
    0x08: (">u1", "unsigned bytes"),
    0x09: (">i1", "signed bytes"),
    0x0B: (">i2", "16-bit integers"),
    0x0C: (">i4", "32-bit integers"),
    0x0D: (">f4", "32-bit floats"),
    0x0E: (">f8", "64-bit floats"),
}


def _describe_magic(magic: int) -> str:
    code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    words = _IDX_DTYPES[code][1] if code in _IDX_DTYPES else f"dtype code 0x{code:02x}"
    return f"0x{magic:08x} ({words}, {ndim} dimension{'s' if ndim != 1 else ''})"


def _read_raw(path: Path, hint: str) -> bytes:
    """The file's bytes; a missing or unreadable file is a DataError with the hint."""
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise _data_error(path, "file not found", hint) from exc
    except OSError as exc:
        raise _data_error(path, f"cannot read file ({exc.strerror or exc})", hint) from exc


def _read_bytes(path: Path, hint: str) -> bytes:
    """Read a whole file, un-gzipping it when it starts with the gzip magic 1f 8b."""
    raw = _read_raw(path, hint)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except Exception as exc:  # BadGzipFile, EOFError, zlib.error, ...
            raise _data_error(path, f"corrupt gzip data ({type(exc).__name__}: {exc})", hint) from exc
    return raw


def _read_idx(path: str | os.PathLike[str], hint: str, expected_magic: int | None = None) -> np.ndarray:
    """Decode one IDX file, validating magic, header and data length."""
    path = Path(path)
    raw = _read_bytes(path, hint)
    if len(raw) < 4:
        raise _data_error(path, f"truncated header: {len(raw)} bytes, an IDX magic number needs 4", hint)
    magic = int.from_bytes(raw[:4], "big")
    code, ndim = raw[2], raw[3]
    if expected_magic is not None and magic != expected_magic:
        raise _data_error(
            path,
            f"expected magic {_describe_magic(expected_magic)}, found 0x{magic:08x}",
            hint,
        )
    if raw[0] != 0 or raw[1] != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise _data_error(
            path,
            f"bad IDX magic 0x{magic:08x}: expected two zero bytes, a dtype code "
            "(0x08, 0x09, 0x0b, 0x0c, 0x0d or 0x0e) and at least one dimension",
            hint,
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _data_error(
            path,
            f"truncated header: {ndim} dimensions need {header} header bytes, file has {len(raw)}",
            hint,
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[code][0])
    count, nonzero = 1, 1
    for d in dims:  # Python ints: no overflow for absurd headers
        count *= d
        nonzero *= max(d, 1)
    if nonzero * dtype.itemsize > np.iinfo(np.intp).max:  # numpy rejects such shapes even when empty
        raise _data_error(path, f"impossible dimensions {'x'.join(map(str, dims))} in the header", hint)
    expected = count * dtype.itemsize
    actual = len(raw) - header
    shape = "x".join(map(str, dims))
    if actual < expected:
        raise _data_error(
            path,
            f"truncated data: header says {shape} {_IDX_DTYPES[code][1]} = {expected} bytes, "
            f"file holds {actual}",
            hint,
        )
    if actual > expected:
        raise _data_error(
            path,
            f"trailing garbage: header says {shape} {_IDX_DTYPES[code][1]} = {expected} bytes, "
            f"file holds {actual} ({actual - expected} extra)",
            hint,
        )
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    # Native byte order and a writable copy, so torch.from_numpy works without warnings.
    return array.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format), raw or gzip-compressed.

    Gzip is detected by its magic bytes (1f 8b), not by the file name. Returns
    the array in native byte order with the shape the header gives.

    Raises:
        DataError: the file is missing, not IDX, or its length disagrees with its header.
    """
    return _read_idx(path, _GENERIC_HINT)


# --------------------------------------------------------------------------- #
# CIFAR-10 pickles, via motune.safe_pickle's restricted unpickler
# --------------------------------------------------------------------------- #


def _get(batch: dict[Any, Any], key: str) -> Any:
    # The real files are Python 2 pickles (bytes keys); re-saved ones may use str keys.
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    return None


def _read_cifar_batch(path: str | os.PathLike[str], hint: str) -> tuple[np.ndarray, np.ndarray]:
    path = Path(path)
    raw = _read_raw(path, hint)
    try:
        batch = restricted_loads(raw)
    except ForbiddenGlobal as exc:
        raise _data_error(
            path,
            f"refusing to unpickle: it references {exc}, which a CIFAR-10 batch "
            "(numpy arrays, lists, bytes) never needs",
            hint,
        ) from exc
    except Exception as exc:  # any decoding failure of a corrupt or foreign pickle
        raise _data_error(path, f"not a valid CIFAR-10 batch pickle ({type(exc).__name__}: {exc})", hint) from exc

    if not isinstance(batch, dict):
        raise _data_error(path, f"expected a pickled dict, found {type(batch).__name__}", hint)
    data, labels = _get(batch, "data"), _get(batch, "labels")
    if data is None or labels is None:
        missing = [k for k, v in (("b'data'", data), ("b'labels'", labels)) if v is None]
        raise _data_error(path, f"missing key {' and '.join(missing)} in the batch dict", hint)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_PIXELS:
        found = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise _data_error(path, f"b'data' must be a uint8 array of shape N x {_CIFAR_PIXELS}, found {found}", hint)
    try:
        label_array = np.asarray(labels)
    except Exception as exc:
        raise _data_error(path, f"b'labels' is not a list of integers ({type(exc).__name__})", hint) from exc
    if label_array.ndim != 1 or (label_array.size and label_array.dtype.kind not in "iu"):
        raise _data_error(path, "b'labels' must be a flat list of integers", hint)
    if len(label_array) != len(data):
        raise _data_error(path, f"{len(data)} images but {len(label_array)} labels", hint)
    if label_array.size and (label_array.min() < 0 or label_array.max() >= _NUM_CLASSES):
        bad = label_array[(label_array < 0) | (label_array >= _NUM_CLASSES)][0]
        raise _data_error(path, f"label {int(bad)} out of range 0..{_NUM_CLASSES - 1}", hint)
    images = np.ascontiguousarray(data).reshape(len(data), 3, 32, 32)
    return images, label_array.astype(np.int64)


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one file of ``cifar-10-batches-py`` (e.g. ``data_batch_1``, ``test_batch``).

    The pickle is decoded by a restricted unpickler that only rebuilds numpy
    arrays, so a foreign or malicious file cannot run code. Returns
    ``(images uint8 N x 3 x 32 x 32, labels int64 N)``.

    Raises:
        DataError: the file is missing, not a CIFAR-10 batch, or references a forbidden global.
    """
    return _read_cifar_batch(path, _GENERIC_HINT)


# --------------------------------------------------------------------------- #
# One loader per source: numpy splits (train, val, test) before standardisation
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _Splits:
    """A source's train, validation and test arrays, and the value that scales its pixels to [0, 1]."""

    parts: list[tuple[np.ndarray, np.ndarray]]  # (images N x C x H x W, int64 labels) per split
    scale: float


def _load_digits(data_dir: str | os.PathLike[str] | None, fraction: float, seed: int) -> _Splits:
    """scikit-learn's bundled 8x8 digits, split three ways, stratified by class (``data_dir`` unused)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32)[:, None]  # N x 1 x 8 x 8, values 0..16
    labels = bunch.target.astype(np.int64)
    rest, test_idx = train_test_split(
        np.arange(len(labels)), test_size=_DIGITS_TEST_FRACTION, stratify=labels, random_state=seed
    )
    train_idx, val_idx = train_test_split(
        rest, test_size=fraction / (1.0 - _DIGITS_TEST_FRACTION), stratify=labels[rest], random_state=seed
    )
    return _Splits([(images[i], labels[i]) for i in (train_idx, val_idx, test_idx)], scale=16.0)


def _hold_out(x_full: np.ndarray, y_full: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
              fraction: float, seed: int) -> _Splits:
    """Split an official training set into train and validation by a seeded permutation."""
    n = len(y_full)
    n_val = round(n * fraction)
    if not 0 < n_val < n:
        raise ValueError(
            f"val_fraction={fraction:g} leaves an empty training or validation set for {n} training images"
        )
    perm = np.random.default_rng(seed).permutation(n)
    train_idx, val_idx = perm[: n - n_val], perm[n - n_val :]
    return _Splits([(x_full[train_idx], y_full[train_idx]), (x_full[val_idx], y_full[val_idx]), (x_test, y_test)], 255.0)


def _require_dir(name: str, data_dir: str | os.PathLike[str] | None) -> Path:
    hint = _HINTS[name]
    if data_dir is None:
        data_dir = DEFAULT_DATA_DIRS.get(name)
        if data_dir is None:
            raise DataError(f"{name} has no default data directory. To get the data: {hint}")
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise _data_error(path, f"data directory for {name} does not exist", hint)
    if not path.is_dir():
        extra = " (extract the archive first)" if path.name.endswith((".tar.gz", ".tgz", ".tar")) else ""
        raise _data_error(path, f"not a directory{extra}", hint)
    return path


def _find_idx_file(directory: Path, base: str, hint: str) -> Path:
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    raise _data_error(directory / base, f"file not found (looked for {base} and {base}.gz in {directory})", hint)


def _load_idx_dir(name: str, data_dir: str | os.PathLike[str] | None, fraction: float, seed: int) -> _Splits:
    """Fashion-MNIST or MNIST: the four IDX files (raw or gzip) in ``data_dir`` or torchvision's layout below it."""
    hint = _HINTS[name]
    directory = _require_dir(name, data_dir)
    nested = directory / _TORCHVISION_SUBDIRS[name]
    if not any((directory / f"{_IDX_FILES[0]}{ext}").is_file() for ext in ("", ".gz")) and nested.is_dir():
        directory = nested
    paths = [_find_idx_file(directory, base, hint) for base in _IDX_FILES]

    splits = []
    for img_path, lab_path in (paths[0:2], paths[2:4]):
        images = _read_idx(img_path, hint, _IDX_IMAGES_MAGIC)
        labels = _read_idx(lab_path, hint, _IDX_LABELS_MAGIC)
        if len(images) == 0:
            raise _data_error(img_path, "holds no images", hint)
        if len(images) != len(labels):
            raise _data_error(
                lab_path, f"{len(labels)} labels but {img_path.name} holds {len(images)} images", hint
            )
        if labels.max() >= _NUM_CLASSES:
            raise _data_error(lab_path, f"label {int(labels.max())} out of range 0..{_NUM_CLASSES - 1}", hint)
        splits.append((images, labels))
    (x_tr, y_tr), (x_te, y_te) = splits
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise _data_error(
            paths[2],
            f"images are {x_te.shape[1]}x{x_te.shape[2]} but {paths[0].name} has "
            f"{x_tr.shape[1]}x{x_tr.shape[2]}",
            hint,
        )
    # Add the channel axis: N x 1 x H x W.
    return _hold_out(x_tr[:, None], y_tr.astype(np.int64), x_te[:, None], y_te.astype(np.int64), fraction, seed)


def _load_cifar10(data_dir: str | os.PathLike[str] | None, fraction: float, seed: int) -> _Splits:
    """CIFAR-10: the six ``cifar-10-batches-py`` pickles in ``data_dir`` or that directory below it."""
    hint = _HINTS["cifar10"]
    directory = _require_dir("cifar10", data_dir)
    if (directory / _CIFAR_DIR).is_dir():
        directory = directory / _CIFAR_DIR
    for fname in (*_CIFAR_TRAIN_FILES, _CIFAR_TEST_FILE):  # report a missing file before decoding
        if not (directory / fname).is_file():
            raise _data_error(directory / fname, f"file not found (expected {_CIFAR_DIR} files in {directory})", hint)
    train = [_read_cifar_batch(directory / f, hint) for f in _CIFAR_TRAIN_FILES]
    x_te, y_te = _read_cifar_batch(directory / _CIFAR_TEST_FILE, hint)
    x_tr = np.concatenate([x for x, _ in train])
    y_tr = np.concatenate([y for _, y in train])
    if len(x_tr) == 0:
        raise _data_error(directory, "the training batches hold no images", hint)
    return _hold_out(x_tr, y_tr, x_te, y_te, fraction, seed)


_Loader = Callable[[str | os.PathLike[str] | None, float, int], _Splits]  # (data_dir, val_fraction, seed)
_LOADERS: dict[str, _Loader] = {
    "digits": _load_digits,
    "fashion-mnist": functools.partial(_load_idx_dir, "fashion-mnist"),
    "mnist": functools.partial(_load_idx_dir, "mnist"),
    "cifar10": _load_cifar10,
}


# --------------------------------------------------------------------------- #
# Public entry point
# --------------------------------------------------------------------------- #


def _check_positive_int(field: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{field} must be a positive integer or None, got {value!r}")


def _to_float_tensor(images: np.ndarray, scale: float) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(scale)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize in chunks, to bound peak memory on large datasets."""
    if x.shape[-2:] == (size, size):
        return x
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=x.dtype)
    for start in range(0, len(x), 4096):
        out[start : start + 4096] = F.interpolate(
            x[start : start + 4096], size=(size, size), mode="bilinear", align_corners=False
        )
    return out


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    val_fraction: float | None = None,
    seed: int = 0,
    image_size: int | None = None,
    limit: int | None = None,
) -> Dataset:
    """Load, split and standardise one of :data:`DATASETS`.

    Args:
        name: dataset name, one of :data:`DATASETS`.
        data_dir: directory with the dataset files (ignored for ``digits``;
            ``fashion-mnist`` defaults to :data:`DEFAULT_DATA_DIRS`).
        val_fraction: share held out for validation. ``digits``: share of all
            1,797 images (default 0.2; test is always 0.2, split stratified);
            others: share of the official training set (default 1/6 for the
            MNISTs, 0.1 for CIFAR-10), taken from a seeded permutation.
        seed: seed of the split.
        image_size: if given, bilinear-resize every image to this square size
            (before standardisation), e.g. 28 to run LeNet-5 on digits.
        limit: if given, keep the first ``limit`` training samples after the
            split and at most ``limit`` validation and test samples (fast tests).

    Raises:
        ValueError: unknown name or a bad argument.
        DataError: missing or malformed data files (a ValueError subclass).
    """
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else name
    if key == "fashionmnist":
        key = "fashion-mnist"
    if key == "cifar-10":
        key = "cifar10"
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if val_fraction is not None:
        ok = isinstance(val_fraction, (int, float)) and not isinstance(val_fraction, bool)
        limit_hi = 1.0 - _DIGITS_TEST_FRACTION if key == "digits" else 1.0
        if not ok or not 0.0 < val_fraction < limit_hi:
            raise ValueError(f"val_fraction must lie in (0, {limit_hi:g}) for {key}, got {val_fraction!r}")
    _check_positive_int("image_size", image_size)
    _check_positive_int("limit", limit)
    fraction = float(val_fraction) if val_fraction is not None else _DEFAULT_VAL_FRACTION[key]

    splits = _LOADERS[key](data_dir, fraction, seed)
    parts = splits.parts
    if limit is not None:
        parts = [(x[:limit], y[:limit]) for x, y in parts]
    xs = [_to_float_tensor(x, splits.scale) for x, _ in parts]
    ys = [torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)) for _, y in parts]
    if image_size is not None:
        xs = [_resize(x, image_size) for x in xs]

    # Per-channel standardisation with training statistics only.
    std, mean = torch.std_mean(xs[0], dim=(0, 2, 3), keepdim=True, correction=0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant channel: only centre
    xs = [x.sub_(mean).div_(std) for x in xs]

    return Dataset(
        name=key,
        x_train=xs[0],
        y_train=ys[0],
        x_val=xs[1],
        y_val=ys[1],
        x_test=xs[2],
        y_test=ys[2],
        num_classes=_NUM_CLASSES,
    )


# --------------------------------------------------------------------------- #
# The user's data: an import path, a Dataset, or loaders
# --------------------------------------------------------------------------- #


def _check_batch(batch: Any, where: str, field: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` as ``(x, y)``: two tensors of one length, integer class labels; else an ImportPathError."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ImportPathError(field, f"the {where} loader yields {type(batch).__name__} batches; it must yield (x, y) pairs")
    x, y = batch
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ImportPathError(field, f"the {where} loader yields ({type(x).__name__}, {type(y).__name__}); "
                                     "it must yield (x, y) pairs of tensors")
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype.is_complex or len(x) != len(y):
        raise ImportPathError(field, f"the {where} loader yields y of shape {tuple(y.shape)} and dtype {y.dtype} for "
                                     f"{len(x)} inputs; y must hold one integer class label per input")
    return x, y


@dataclass(frozen=True, eq=False)
class Loaders:
    """Training, validation and (optional) test batches from the user's loaders.

    Each split is any re-iterable of ``(x, y)`` batches (a ``torch.utils.data.DataLoader``
    or a list). This is the general path; an in-memory :class:`Dataset` is the fast one.
    Build it with :meth:`from_mapping`, which checks the first batch of every split.
    """

    train: Iterable[Any]
    val: Iterable[Any]
    test: Iterable[Any] | None
    input_shape: tuple[int, ...]
    num_classes: int
    name: str = "loaders"

    @classmethod
    def from_mapping(cls, loaders: Mapping[str, Any], *, field: str = "dataset", name: str = "loaders") -> Loaders:
        """Check ``{"train": ..., "val": ..., "test": ...}`` (test optional) and read the data's shape.

        ``input_shape`` and ``num_classes`` may be given in the mapping; otherwise the
        shape comes from the first validation batch and the number of classes from one
        pass over the training labels (largest label + 1; that pass draws one epoch from
        a shuffling loader's random stream, so give ``num_classes`` to leave it alone).
        The validation and test loaders' first batches are checked here, the training
        loader's when it is read (or by :meth:`check_train`). Bad input raises
        :class:`~motune.imports.ImportPathError` starting with ``field``.

        >>> import torch
        >>> batches = [(torch.zeros(4, 13), torch.tensor([0, 2, 1, 0]))]
        >>> data = Loaders.from_mapping({"train": batches, "val": batches})
        >>> data.input_shape, data.num_classes, data.test is None
        ((13,), 3, True)
        """
        if not isinstance(loaders, Mapping):
            raise ImportPathError(field, f"got a {type(loaders).__name__}, not a mapping of loaders")
        extra = [key for key in loaders if key not in ("train", "val", "test", "input_shape", "num_classes")]
        missing = [key for key in ("train", "val") if loaders.get(key) is None]
        if missing or extra:
            what = f"has no {missing[0]!r} loader" if missing else f"has an unknown key {extra[0]!r}"
            raise ImportPathError(field, f"the mapping of loaders {what}; give 'train', 'val' and optionally 'test' "
                                         "(and optionally 'input_shape', 'num_classes')")
        if not isinstance(loaders["train"], Iterable):
            raise ImportPathError(field, f"the train loader is a {type(loaders['train']).__name__}, not an iterable of "
                                         "(x, y) batches")
        splits = [split for split in ("val", "test") if loaders.get(split) is not None]
        firsts = {split: _first_batch(loaders[split], split, field) for split in splits}
        input_shape = loaders.get("input_shape")
        if input_shape is None:
            input_shape = tuple(int(d) for d in firsts["val"][0].shape[1:])
        num_classes = loaders.get("num_classes")
        if num_classes is None:
            top = -1
            for batch in loaders["train"]:
                top = max(top, int(_check_batch(batch, "train", field)[1].max()))
            num_classes = top + 1
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ImportPathError(field, f"num_classes must be an integer >= 2, got {num_classes!r}")
        return cls(loaders["train"], loaders["val"], loaders.get("test"), tuple(int(d) for d in input_shape),
                   num_classes, name)

    def check_train(self, field: str = "dataset") -> None:
        """Check the training loader's first batch (draws from a shuffling loader's random stream)."""
        _first_batch(self.train, "train", field)


def _first_batch(loader: Any, split: str, field: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        first = next(iter(loader))
    except TypeError:
        raise ImportPathError(
            field, f"the {split} loader is a {type(loader).__name__}, not an iterable of (x, y) batches"
        ) from None
    except StopIteration:
        raise ImportPathError(field, f"the {split} loader yields no batches") from None
    return _check_batch(first, split, field)


def as_data(data: Dataset | Loaders | Mapping[str, Any], field: str = "dataset") -> Dataset | Loaders:
    """``data`` as motune trains on it: a :class:`Dataset` or :class:`Loaders` as they are, a mapping of loaders checked."""
    if isinstance(data, (Dataset, Loaders)):
        return data
    if isinstance(data, Mapping):
        return Loaders.from_mapping(data, field=field)
    raise ImportPathError(field, f"got a {type(data).__name__}; give a motune.Dataset (in-memory tensors) or a mapping "
                                 "with 'train', 'val' and optionally 'test' loaders of (x, y) batches")


def load_data(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    image_size: int | None = None,
    limit: int | None = None,
    args: Mapping[str, Any] | None = None,
) -> Dataset | Loaders:
    """A built-in dataset (:func:`load_dataset`) or the user's, named by an import path.

    The callable of ``"module:callable"`` gets ``args`` (and ``data_dir`` when it takes
    it) and returns a :class:`Dataset` or a mapping of loaders (see
    :meth:`Loaders.from_mapping`). Every failure is a ``ValueError`` starting with the
    setting at fault (``dataset`` or ``data_args``).
    """
    args = dict(args or {})
    if not is_import_path(name):
        if args:
            raise ValueError(f"data_args: built-in dataset {name!r} takes no arguments; remove them")
        return load_dataset(name, data_dir, image_size=image_size, limit=limit)
    fn = resolve("dataset", name)
    optional = {"data_dir": os.fspath(data_dir)} if data_dir is not None else {}
    data = call("dataset", fn, args, args_field="data_args", optional=optional, name=name)
    if isinstance(data, Dataset):
        return data
    if isinstance(data, Mapping):
        return Loaders.from_mapping(data, field="dataset", name=name)
    raise ImportPathError("dataset", f"{name} returned a {type(data).__name__}; return a motune.Dataset or a mapping "
                                     "with 'train', 'val' and optionally 'test' loaders")
