"""Training state: per-layer optimiser state, per-epoch records, the run's result."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from xbarc.runtime.counters import DigitalCounters, TileCounters
from xbarc.runtime.train.config import TrainConfig

Array = np.ndarray[Any, Any]


@dataclass
class LayerState:
    """Optimiser state and write bookkeeping of one crossbar layer."""

    m: Array
    v: Array
    chi: Array
    wear_p: Array
    """Writes per G+ (or offset) device ``[G, R*C]`` int32 (this run)."""
    wear_n: Array
    counts: Array
    """``[G, R, n_col_blocks, 5]``: requested, applied, skipped, pulses, rule draws (this epoch)."""


@dataclass
class EpochRecord:
    """Metrics of one epoch."""

    epoch: int
    loss: float
    train_acc: float
    test_acc: float
    test_loss: float
    lr: float
    requested: int
    applied: int
    skipped: int
    pulses: int
    energy_j: float
    max_writes: int


@dataclass
class TrainResult:
    """What ``train`` returns: history, counters, energy, wear."""

    history: list[EpochRecord]
    counters: TileCounters
    digital: DigitalCounters
    energy: dict[str, Any]
    wear: dict[str, Any]
    samples: int
    final_test_acc: float
    config: TrainConfig
    per_epoch_tiles: list[dict[str, list[int]]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "config": asdict(self.config),
            "history": [asdict(h) for h in self.history],
            "final_test_acc": self.final_test_acc,
            "samples_seen": self.samples,
            "tile_counters": self.counters.to_dict(),
            "tile_counters_totals": self.counters.totals(),
            "digital_counters": self.digital.to_dict(),
            "energy": self.energy,
            "wear": self.wear,
            "per_epoch_tiles": self.per_epoch_tiles,
        }
