"""The :class:`Dataset` every loader returns, and the checks a model applies to it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from xbarc.errors import DataError
from xbarc.runtime.data.transforms import adapt

FloatArray = npt.NDArray[np.float32]


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
        check_limit(limit)
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
        x_train = adapt(self.x_train, target, self.name)
        x_test = adapt(self.x_test, target, self.name)
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


def check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit <= 0:
        raise DataError(f"limit must be a positive integer, got {limit!r}")
