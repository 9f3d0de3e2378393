"""Mini-batches over a split, optionally shuffled by a seeded generator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from xbarc.errors import DataError


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
