"""On-chip training of a mapped program with EaPU and baseline update rules.

Where things live: :mod:`.config` (options), :mod:`.loop` (the :class:`Trainer`), :mod:`.losses`,
:mod:`.optimizers` and :mod:`.rules` (registries chosen by name), :mod:`.backward` (the tape's
reverse walk) with :mod:`.autodiff` (every op's VJP), :mod:`.state`, :mod:`.wear`,
:mod:`.checkpoint`, and the update kernels ``_update.pyx`` with their NumPy twins
:mod:`.update_reference`.
"""

from __future__ import annotations

from xbarc.runtime.train.config import RECAL_EVERY, TrainConfig
from xbarc.runtime.train.loop import Trainer, dump_json, prepare_data
from xbarc.runtime.train.losses import LOSSES, mse, softmax_xent
from xbarc.runtime.train.optimizers import OPTIMIZERS
from xbarc.runtime.train.rules import RULES
from xbarc.runtime.train.state import EpochRecord, LayerState, TrainResult

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "RECAL_EVERY",
    "RULES",
    "EpochRecord",
    "LayerState",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "dump_json",
    "mse",
    "prepare_data",
    "softmax_xent",
]
