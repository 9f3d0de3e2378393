"""``digits``: the 8×8 handwritten digits bundled with xbarc (the UCI / scikit-learn file).

``datasets/digits.csv.gz`` beside this module: 1,797 rows of 64 pixel values (0..16) and the
label. Fixed split: the first :data:`DIGITS_TRAIN` rows train, the last 360 test.
"""

from __future__ import annotations

import gzip
import importlib.resources
import io

import numpy as np

from xbarc.errors import DataError
from xbarc.runtime.data.dataset import Dataset

#: Number of rows of the bundled digits file that form the training split (the rest is test).
DIGITS_TRAIN = 1437
_DIGITS_ROWS = 1797


def load_digits(limit: int | None) -> Dataset:
    ref = importlib.resources.files("xbarc.runtime.data") / "datasets" / "digits.csv.gz"
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
