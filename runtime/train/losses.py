"""Training losses, chosen by name (``TrainConfig.loss``).

A loss maps the network output and the targets of a batch to the mean loss, its gradient with
respect to the output, and the number of correct predictions (classification) — one small
object per loss in :data:`LOSSES`; adding a loss is one new entry.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

Array = np.ndarray[Any, Any]


class LossValue(NamedTuple):
    """What a loss returns for one batch."""

    loss: float
    """Mean loss over the batch."""
    grad: Array
    """d loss / d output (float32, the output's shape)."""
    correct: int
    """Correct predictions (0 for a regression loss)."""


class Loss(abc.ABC):
    """A training loss; subclasses are stateless and registered in :data:`LOSSES`."""

    name: ClassVar[str]
    classification: ClassVar[bool] = False
    """Targets are class labels (accuracy is reported) rather than values."""

    @abc.abstractmethod
    def __call__(self, out: Array, y: Array) -> LossValue:
        """The loss of ``out`` against the targets ``y``."""


LOSSES: dict[str, Loss] = {}
"""Every loss by name."""


def register(cls: type[Loss]) -> type[Loss]:
    """Class decorator: add one instance of ``cls`` to :data:`LOSSES`."""
    LOSSES[cls.name] = cls()
    return cls


def softmax_xent(logits: Array, y: Array) -> tuple[float, Array, Array]:
    """Mean cross-entropy, its gradient w.r.t. the logits, and the predictions."""
    z = logits.reshape(logits.shape[0], -1).astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = z.shape[0]
    loss = float(-np.log(np.maximum(p[np.arange(n), y], 1e-300)).mean())
    g = p
    g[np.arange(n), y] -= 1.0
    return loss, (g / n).astype(np.float32).reshape(logits.shape), z.argmax(axis=1)


def mse(out: Array, y: Array) -> tuple[float, Array]:
    """Mean squared error and its gradient."""
    d = out.astype(np.float64) - y.reshape(out.shape)
    return float((d * d).mean()), (2 * d / d.size).astype(np.float32)


@register
@dataclass(frozen=True)
class CrossEntropy(Loss):
    """Softmax cross-entropy over the output's last axis; targets are class indices."""

    name: ClassVar[str] = "xent"
    classification: ClassVar[bool] = True

    def __call__(self, out: Array, y: Array) -> LossValue:
        loss, grad, pred = softmax_xent(out, y)
        return LossValue(loss, grad, int((pred == y).sum()))


@register
@dataclass(frozen=True)
class MeanSquared(Loss):
    """Mean squared error against target values of the output's shape."""

    name: ClassVar[str] = "mse"

    def __call__(self, out: Array, y: Array) -> LossValue:
        loss, grad = mse(out, y)
        return LossValue(loss, grad, 0)


def resolve(name: str, classes: int) -> Loss:
    """The loss ``name`` stands for.

    ``auto`` is cross-entropy for a classification set (``classes > 0``) and MSE otherwise.
    """
    if name == "auto":
        return LOSSES["xent" if classes > 0 else "mse"]
    return LOSSES[name]


LossFn = Callable[[Array, Array], LossValue]
