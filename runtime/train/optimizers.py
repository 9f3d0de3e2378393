"""Optimisers, chosen by name (``TrainConfig.optimizer``).

An optimiser turns a gradient into the desired update ``u``. For crossbar weights that step is
fused with the update rule in one Cython kernel (``_update.optimizer_rule_update``), which takes
the optimiser's :attr:`Optimizer.code`; digital parameters (biases, normalisation) are updated
exactly here in NumPy by :meth:`Optimizer.step`. Adding an optimiser is one new entry in
:data:`OPTIMIZERS` (and a branch in the kernel).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from xbarc.runtime.train.config import TrainConfig

Array = np.ndarray[Any, Any]


class Optimizer(abc.ABC):
    """An optimiser; subclasses are stateless (state arrays belong to the trainer)."""

    name: ClassVar[str]
    code: ClassVar[int]
    """The optimiser's number in the update kernels (``update_reference.OPT_*``)."""
    second_moment: ClassVar[bool] = False
    """Keeps a second-moment estimate ``v`` per weight."""
    ops_per_weight: ClassVar[int]
    """Digital element operations per weight and step (for the energy model)."""

    @abc.abstractmethod
    def step(
        self, p: Array, g: Array, m: Array, v: Array, lr: float, t: int, cfg: TrainConfig
    ) -> None:
        """Update a digital parameter ``p`` in place from its gradient ``g`` (step ``t`` ≥ 1)."""


OPTIMIZERS: dict[str, Optimizer] = {}
"""Every optimiser by name."""


def register(cls: type[Optimizer]) -> type[Optimizer]:
    """Class decorator: add one instance of ``cls`` to :data:`OPTIMIZERS`."""
    OPTIMIZERS[cls.name] = cls()
    return cls


@register
@dataclass(frozen=True)
class SGD(Optimizer):
    """SGD with (heavy-ball) momentum: ``m = momentum·m + g``, ``p -= lr·m``."""

    name: ClassVar[str] = "sgd"
    code: ClassVar[int] = 0
    ops_per_weight: ClassVar[int] = 3

    def step(
        self, p: Array, g: Array, m: Array, v: Array, lr: float, t: int, cfg: TrainConfig
    ) -> None:
        m *= cfg.momentum
        m += g
        p -= np.float32(lr) * m


@register
@dataclass(frozen=True)
class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba 2015)."""

    name: ClassVar[str] = "adam"
    code: ClassVar[int] = 1
    second_moment: ClassVar[bool] = True
    ops_per_weight: ClassVar[int] = 12

    def step(
        self, p: Array, g: Array, m: Array, v: Array, lr: float, t: int, cfg: TrainConfig
    ) -> None:
        bias1, bias2 = 1 - cfg.beta1**t, 1 - cfg.beta2**t
        m *= cfg.beta1
        m += (1 - cfg.beta1) * g
        v *= cfg.beta2
        v += (1 - cfg.beta2) * g * g
        p -= (lr * (m / bias1) / (np.sqrt(v / bias2) + cfg.eps)).astype(np.float32)
