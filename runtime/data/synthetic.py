"""``synthetic``: a seeded, learnable classification (or linear regression) task of any shape."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from xbarc.errors import DataError
from xbarc.runtime.data.dataset import Dataset

FloatArray = npt.NDArray[np.float32]


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


def generate(spec: SyntheticSpec, seed: int) -> Dataset:
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
