"""Tests for motune.data: digits splits, IDX / CIFAR-10 decoding and their errors.

IDX and CIFAR-10 files are small fakes written into tmp_path in the real
formats; the real Fashion-MNIST is tested only where the Debian package is
installed.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from motune.data import (
    DATASETS,
    DEFAULT_DATA_DIRS,
    DataError,
    Dataset,
    load_dataset,
    read_cifar_batch,
    read_idx,
)
from motune.safe_pickle import ForbiddenGlobal, restricted_loads

FASHION_HINT = "apt-get install dataset-fashion-mnist"
DIR_HINT = "pass their directory"

# --------------------------------------------------------------------------- #
# Writers for the real file formats
# --------------------------------------------------------------------------- #

_IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Encode ``array`` as an IDX file (big-endian), optionally with a forced magic."""
    code = _IDX_CODES[array.dtype.type]
    if magic is None:
        magic = (code << 8) | array.ndim
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_mnist_dir(
    directory: Path, gz: bool = True, n_train: int = 20, n_test: int = 10, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write the four MNIST IDX files (20 train / 10 test, 28x28) and return the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for base, array in arrays.items():
        write(directory / (base + (".gz" if gz else "")), idx_bytes(array), gz)
    return arrays


def cifar_batch_bytes(data: object, labels: object, protocol: int = 2, **extra: object) -> bytes:
    """A batch dict pickled like the real files (bytes keys)."""
    batch = {b"batch_label": b"testing batch", b"labels": labels, b"data": data, **extra}
    return pickle.dumps(batch, protocol=protocol)


def make_cifar_dir(directory: Path, per_batch: int = 4, n_test: int = 6, seed: int = 0) -> dict[str, tuple]:
    """Write data_batch_1..5 and test_batch into directory/cifar-10-batches-py."""
    rng = np.random.default_rng(seed)
    batches = directory / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    out = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in (np.arange(n) + i) % 10]
        (batches / name).write_bytes(cifar_batch_bytes(data, labels))
        out[name] = (data, labels)
    return out


def assert_data_error(excinfo: pytest.ExceptionInfo[DataError], *needles: str) -> None:
    message = str(excinfo.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


# --------------------------------------------------------------------------- #
# digits
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def test_digits_shapes_and_dtypes(digits: Dataset) -> None:
    assert digits.name == "digits" and digits.num_classes == 10
    assert digits.input_shape == (1, 8, 8)
    for x, y in ((digits.x_train, digits.y_train), (digits.x_val, digits.y_val), (digits.x_test, digits.y_test)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 8, 8) and len(x) == len(y)
    sizes = (len(digits.y_train), len(digits.y_val), len(digits.y_test))
    assert sum(sizes) == 1797
    assert sizes == (1077, 360, 360)  # 60/20/20


def test_digits_split_is_disjoint_and_stratified(digits: Dataset) -> None:
    full = np.bincount(np.concatenate([digits.y_train, digits.y_val, digits.y_test]), minlength=10) / 1797
    for y in (digits.y_train, digits.y_val, digits.y_test):
        share = np.bincount(y.numpy(), minlength=10) / len(y)
        assert np.abs(share - full).max() < 0.01
    # No image appears in two splits (digits has a few duplicate images, so compare rows loosely).
    train = {row.tobytes() for row in digits.x_train.flatten(1).numpy()}
    test_rows = [row.tobytes() for row in digits.x_test.flatten(1).numpy()]
    assert sum(r in train for r in test_rows) < 5


def test_digits_standardised_with_train_stats(digits: Dataset) -> None:
    assert abs(digits.x_train.mean().item()) < 1e-5
    assert abs(digits.x_train.std().item() - 1.0) < 1e-3
    # val/test use the same transform, so they are close to but not exactly standardised.
    assert abs(digits.x_test.mean().item()) < 0.1


def test_digits_seeded(digits: Dataset) -> None:
    again = load_dataset("digits", seed=0)
    assert torch.equal(again.x_train, digits.x_train) and torch.equal(again.y_val, digits.y_val)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(other.y_train, digits.y_train)


def test_digits_val_fraction_override() -> None:
    ds = load_dataset("digits", val_fraction=0.1)
    assert len(ds.y_test) == 360
    assert abs(len(ds.y_val) - 180) <= 1
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 1797


def test_digits_image_size_and_limit() -> None:
    ds = load_dataset("digits", image_size=28, limit=50)
    assert ds.input_shape == (1, 28, 28)
    assert ds.x_train.shape == (50, 1, 28, 28)
    assert len(ds.y_val) == 50 and len(ds.y_test) == 50
    assert abs(ds.x_train.mean().item()) < 1e-5  # standardised after resizing


def test_dataset_to_and_repr(digits: Dataset) -> None:
    moved = digits.to("cpu")
    assert isinstance(moved, Dataset) and moved.x_train.device.type == "cpu"
    assert moved.input_shape == digits.input_shape
    assert "train=1077" in repr(digits) and "tensor" not in repr(digits)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": 0.8}, "val_fraction"),  # digits keeps 20% for test
        ({"val_fraction": float("nan")}, "val_fraction"),
        ({"image_size": 0}, "image_size"),
        ({"limit": 0}, "limit"),
        ({"limit": -3}, "limit"),
    ],
)
def test_bad_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        load_dataset("digits", **kwargs)


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(ValueError) as excinfo:
        load_dataset("imagenet")
    assert "imagenet" in str(excinfo.value)
    for name in DATASETS:
        assert name in str(excinfo.value)


# --------------------------------------------------------------------------- #
# IDX: round trips and MNIST-style loading
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_round_trip(tmp_path: Path, gz: bool, dtype: type) -> None:
    array = np.arange(30).reshape(2, 3, 5).astype(dtype) * 3
    if np.dtype(dtype).kind != "u":
        array -= 40  # negative values survive too
    # gzip is detected by magic bytes, not by the name: no .gz suffix here.
    path = write(tmp_path / "blob", idx_bytes(array), gz)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_from_idx_files(tmp_path: Path, gz: bool) -> None:
    arrays = make_mnist_dir(tmp_path, gz=gz)
    ds = load_dataset("mnist", tmp_path)
    assert ds.name == "mnist" and ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (17, 3, 10)  # round(20/6) = 3 val
    np.testing.assert_array_equal(ds.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
    # Values round-trip through the standardisation: undo it with the training statistics.
    train_pixels = arrays["train-images-idx3-ubyte"].astype(np.float64) / 255
    perm = np.random.default_rng(0).permutation(20)
    kept = train_pixels[perm[:17]]
    mean, std = kept.mean(), kept.std()
    restored = ds.x_test.numpy()[:, 0] * std + mean
    np.testing.assert_allclose(restored * 255, arrays["t10k-images-idx3-ubyte"], atol=1e-3)
    np.testing.assert_array_equal(ds.y_train.numpy(), arrays["train-labels-idx1-ubyte"][perm[:17]])


def test_idx_split_seeded_and_val_fraction(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path, n_train=60)
    a, b = load_dataset("mnist", tmp_path, seed=3), load_dataset("mnist", tmp_path, seed=3)
    assert torch.equal(a.x_val, b.x_val)
    c = load_dataset("mnist", tmp_path, seed=4)
    assert not torch.equal(a.y_train, c.y_train)
    d = load_dataset("mnist", tmp_path, val_fraction=0.5, limit=7, image_size=14)
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (7, 7, 7)
    assert d.input_shape == (1, 14, 14)


def test_fashion_mnist_from_explicit_dir_and_mixed_names(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path, gz=True)
    # One file uncompressed under the plain name: both spellings are accepted.
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(gzip.decompress(labels.read_bytes()))
    labels.unlink()
    ds = load_dataset("fashion-mnist", tmp_path)
    assert ds.name == "fashion-mnist" and len(ds.y_test) == 10


def test_torchvision_layout_accepted(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path / "MNIST" / "raw", gz=False)
    assert len(load_dataset("mnist", tmp_path).y_test) == 10


# --------------------------------------------------------------------------- #
# IDX: errors
# --------------------------------------------------------------------------- #


def test_mnist_without_data_dir() -> None:
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist")
    assert_data_error(excinfo, "mnist", DIR_HINT)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", tmp_path / "nowhere")
    assert_data_error(excinfo, "nowhere", "does not exist", DIR_HINT)
    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion-mnist", tmp_path / "nowhere")
    assert_data_error(excinfo, "nowhere", FASHION_HINT, "--data-dir")


def test_missing_one_file(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion-mnist", tmp_path)
    assert_data_error(excinfo, "t10k-labels-idx1-ubyte", "not found", FASHION_HINT)


def test_wrong_magic(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path, gz=False)
    images = np.zeros((20, 28, 28), np.uint8)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(images, magic=0x1234ABCD))
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", tmp_path)
    assert_data_error(
        excinfo, "train-images-idx3-ubyte", "expected magic 0x00000803", "found 0x1234abcd", DIR_HINT
    )


def test_labels_file_in_place_of_images(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path, gz=False)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros(20, np.uint8)))
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", tmp_path)
    assert_data_error(excinfo, "train-images-idx3-ubyte", "found 0x00000801")


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_data(tmp_path: Path, gz: bool) -> None:
    make_mnist_dir(tmp_path, gz=gz)
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    data = idx_bytes(np.zeros((10, 28, 28), np.uint8))[:-100]
    write(tmp_path / name, data, gz)
    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion-mnist", tmp_path)
    assert_data_error(excinfo, name, "truncated data", "7840 bytes", FASHION_HINT)


def test_truncated_header(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path, gz=False)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((20, 28, 28), np.uint8))[:10])
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", tmp_path)
    assert_data_error(excinfo, "train-images-idx3-ubyte", "truncated header", DIR_HINT)
    write(tmp_path / "train-images-idx3-ubyte", b"\x00\x00")
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", tmp_path)
    assert_data_error(excinfo, "train-images-idx3-ubyte", "truncated header", DIR_HINT)


def test_trailing_garbage(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path, gz=False)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(20, np.uint8)) + b"junk")
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", tmp_path)
    assert_data_error(excinfo, "train-labels-idx1-ubyte", "trailing garbage", DIR_HINT)


def test_mismatched_counts(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path, gz=False)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(19, np.uint8)))
    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion-mnist", tmp_path)
    assert_data_error(excinfo, "train-labels-idx1-ubyte", "19 labels", "20 images", FASHION_HINT)


def test_label_out_of_range(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path, gz=False)
    labels = np.zeros(10, np.uint8)
    labels[4] = 10
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(labels))
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", tmp_path)
    assert_data_error(excinfo, "t10k-labels-idx1-ubyte", "label 10 out of range", DIR_HINT)


def test_mismatched_image_sizes(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path, gz=False)
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(np.zeros((10, 27, 28), np.uint8)))
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", tmp_path)
    assert_data_error(excinfo, "t10k-images-idx3-ubyte", "27x28", DIR_HINT)


@pytest.mark.parametrize("how", ["flipped", "truncated"])
def test_corrupt_gzip(tmp_path: Path, how: str) -> None:
    make_mnist_dir(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    blob = bytearray(path.read_bytes())
    if how == "flipped":
        for i in range(20, 60):
            blob[i] ^= 0xFF
    else:
        del blob[len(blob) // 2 :]
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion-mnist", tmp_path)
    assert_data_error(excinfo, "train-images-idx3-ubyte.gz", "corrupt gzip", FASHION_HINT)


def test_read_idx_errors_name_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing-file"):
        read_idx(tmp_path / "missing-file")
    with pytest.raises(DataError, match="bad IDX magic"):
        read_idx(write(tmp_path / "bad", b"\x00\x00\x07\x01\x00\x00\x00\x00"))
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path)  # a directory


# --------------------------------------------------------------------------- #
# CIFAR-10
# --------------------------------------------------------------------------- #


def test_read_cifar_batch_round_trip(tmp_path: Path) -> None:
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    path = write(tmp_path / "data_batch_1", cifar_batch_bytes(data, [3, 9]))
    images, labels = read_cifar_batch(path)
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [3, 9]
    np.testing.assert_array_equal(images.reshape(2, -1), data)


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_read_cifar_batch_other_protocols(tmp_path: Path, protocol: int) -> None:
    data = np.full((3, 3072), 7, np.uint8)
    labels = np.array([0, 1, 2])  # numpy labels instead of a list
    path = write(tmp_path / "b", cifar_batch_bytes(data, labels, protocol=protocol))
    images, out = read_cifar_batch(path)
    assert images.shape == (3, 3, 32, 32) and out.tolist() == [0, 1, 2]


def test_read_cifar_batch_numpy1_module_names(tmp_path: Path) -> None:
    # The real files (and numpy 1.x pickles) name numpy.core, not numpy._core.
    blob = cifar_batch_bytes(np.ones((1, 3072), np.uint8), [5]).replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in blob
    images, labels = read_cifar_batch(write(tmp_path / "b", blob))
    assert images.sum() == 3072 and labels.tolist() == [5]


def test_load_cifar10(tmp_path: Path) -> None:
    written = make_cifar_dir(tmp_path)
    for data_dir in (tmp_path, tmp_path / "cifar-10-batches-py"):  # parent or the directory itself
        ds = load_dataset("cifar10", data_dir, val_fraction=0.2)
        assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
        assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (16, 4, 6)
        assert ds.y_test.tolist() == written["test_batch"][1]
        # Per-channel standardisation.
        means = ds.x_train.mean(dim=(0, 2, 3))
        assert torch.allclose(means, torch.zeros(3), atol=1e-5)
    default = load_dataset("cifar10", tmp_path)
    assert len(default.y_val) == 2  # 10% of 20


def test_cifar_missing_file(tmp_path: Path) -> None:
    make_cifar_dir(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", tmp_path)
    assert_data_error(excinfo, "data_batch_3", "not found", DIR_HINT)


def test_cifar_without_data_dir() -> None:
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10")
    assert_data_error(excinfo, "cifar10", DIR_HINT)


class _Evil:
    """Pickles as a call to os.system: a stand-in for a malicious file."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def test_cifar_forbidden_global_not_executed(tmp_path: Path) -> None:
    make_cifar_dir(tmp_path)
    marker = tmp_path / "pwned"
    evil = cifar_batch_bytes(np.zeros((4, 3072), np.uint8), _Evil(f"touch {marker}"))
    write(tmp_path / "cifar-10-batches-py" / "data_batch_2", evil)
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", tmp_path)
    assert_data_error(excinfo, "data_batch_2", "system", DIR_HINT)
    assert not marker.exists()
    assert "pickle" not in type(excinfo.value).__module__


@pytest.mark.parametrize("protocol", [2, 5])
def test_restricted_loads_rebuilds_numeric_arrays_only(protocol: int) -> None:
    array = np.arange(6, dtype=np.int16).reshape(2, 3)
    out = restricted_loads(pickle.dumps({"a": array, "b": [1, 2.5, b"x", None]}, protocol=protocol))
    np.testing.assert_array_equal(out["a"], array)
    assert out["a"].dtype == np.int16 and out["b"] == [1, 2.5, b"x", None]
    with pytest.raises(ForbiddenGlobal, match="system"):
        restricted_loads(pickle.dumps(_Evil("true"), protocol=protocol))
    with pytest.raises(pickle.UnpicklingError, match="unsupported kind"):
        restricted_loads(pickle.dumps(np.array([1, "a"], dtype=object), protocol=protocol))


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (pickle.dumps({b"labels": [1]}, protocol=2), "b'data'"),
        (pickle.dumps([1, 2, 3], protocol=2), "expected a pickled dict"),
        (cifar_batch_bytes(np.zeros((2, 100), np.uint8), [1, 2]), "N x 3072"),
        (cifar_batch_bytes(np.zeros((2, 3072), np.float32), [1, 2]), "uint8"),
        (cifar_batch_bytes(np.zeros((2, 3072), np.uint8), [1]), "2 images but 1 labels"),
        (cifar_batch_bytes(np.zeros((2, 3072), np.uint8), [1, 10]), "label 10 out of range"),
        (cifar_batch_bytes(np.zeros((2, 3072), np.uint8), [b"x", b"y"]), "integers"),
        (b"\x80\x02}q\x00(", "not a valid CIFAR-10 batch"),
        (b"", "not a valid CIFAR-10 batch"),
        (pickle.dumps(np.zeros(2, dtype=object), protocol=2), "unsupported kind"),
    ],
)
def test_cifar_malformed_batches(tmp_path: Path, payload: bytes, needle: str) -> None:
    make_cifar_dir(tmp_path)
    write(tmp_path / "cifar-10-batches-py" / "test_batch", payload)
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", tmp_path)
    assert_data_error(excinfo, "test_batch", needle, DIR_HINT)


def test_cifar_tarball_instead_of_directory(tmp_path: Path) -> None:
    tarball = write(tmp_path / "cifar-10-python.tar.gz", b"not really")
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", tarball)
    assert_data_error(excinfo, "cifar-10-python.tar.gz", "extract", DIR_HINT)


# --------------------------------------------------------------------------- #
# Property-based: decoders never raise anything but DataError
# --------------------------------------------------------------------------- #

_FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_VALID_IDX = idx_bytes(np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4))
_VALID_CIFAR = cifar_batch_bytes(np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072), [1, 2])


@st.composite
def idx_like_bytes(draw: st.DrawFn) -> bytes:
    """Bytes that often get past the magic check, to reach the deeper validation."""
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0xFF]))
    ndim = draw(st.integers(0, 5))
    dims = draw(st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 6), min_size=ndim, max_size=ndim))
    body = draw(st.binary(max_size=300))
    return bytes([0, 0, code, ndim]) + b"".join(struct.pack(">I", d) for d in dims) + body


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """A valid file with some bytes replaced, then maybe truncated or extended."""
    blob = bytearray(valid)
    for _ in range(draw(st.integers(0, 8))):
        blob[draw(st.integers(0, len(blob) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(blob)))
    return bytes(blob[:cut]) + draw(st.binary(max_size=16)) if draw(st.booleans()) else bytes(blob)


def _check_idx(path: Path, blob: bytes) -> None:
    path.write_bytes(blob)
    try:
        out = read_idx(path)
    except DataError as exc:
        assert str(path) in str(exc)
    else:
        assert isinstance(out, np.ndarray)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@_FUZZ
@given(blob=st.binary(max_size=400) | idx_like_bytes())
def test_read_idx_arbitrary_bytes(fuzz_dir: Path, blob: bytes) -> None:
    _check_idx(fuzz_dir / "arbitrary-idx", blob)


@_FUZZ
@given(blob=mutated(_VALID_IDX), gz=st.booleans())
def test_read_idx_mutated(fuzz_dir: Path, blob: bytes, gz: bool) -> None:
    _check_idx(fuzz_dir / "mutated-idx", gzip.compress(blob) if gz else blob)


@_FUZZ
@given(blob=mutated(gzip.compress(_VALID_IDX)))
def test_read_idx_mutated_gzip(fuzz_dir: Path, blob: bytes) -> None:
    _check_idx(fuzz_dir / "mutated-gz", blob)


def _check_cifar(path: Path, blob: bytes) -> None:
    path.write_bytes(blob)
    try:
        images, labels = read_cifar_batch(path)
    except DataError as exc:
        assert str(path) in str(exc)
    else:
        assert images.dtype == np.uint8 and images.shape[1:] == (3, 32, 32)
        assert labels.dtype == np.int64 and len(labels) == len(images)


@_FUZZ
@given(blob=st.binary(max_size=400))
def test_read_cifar_batch_arbitrary_bytes(fuzz_dir: Path, blob: bytes) -> None:
    _check_cifar(fuzz_dir / "arbitrary-cifar", blob)


@_FUZZ
@given(blob=mutated(_VALID_CIFAR))
def test_read_cifar_batch_mutated(fuzz_dir: Path, blob: bytes) -> None:
    _check_cifar(fuzz_dir / "mutated-cifar", blob)


# --------------------------------------------------------------------------- #
# The real Fashion-MNIST (Debian package dataset-fashion-mnist)
# --------------------------------------------------------------------------- #


def _fashion_installed() -> bool:
    root = Path(DEFAULT_DATA_DIRS["fashion-mnist"])
    bases = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return all((root / b).is_file() or (root / f"{b}.gz").is_file() for b in bases)


def test_real_fashion_mnist() -> None:
    if not _fashion_installed():
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
    ds = load_dataset("fashion-mnist")
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (50000, 10000, 10000)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert set(ds.y_test.unique().tolist()) == set(range(10))
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10  # the official test set is balanced
    assert abs(ds.x_train.mean().item()) < 1e-4 and abs(ds.x_train.std().item() - 1) < 1e-3
