"""Training options: one frozen dataclass that CLI flags and the ``[train]`` TOML table both set."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from xbarc.errors import ConfigError
from xbarc.runtime.train.losses import LOSSES
from xbarc.runtime.train.optimizers import OPTIMIZERS
from xbarc.runtime.train.rules import RULES

RECAL_EVERY = 5
"""Steps between re-calibrations of the converter ranges while training. The read-noise rms
of the conductances (``Engine.refresh``) is recomputed on the same schedule and before every
evaluation; between those steps a layer's update only refreshes ``gdiff`` (exact), so the
read-noise scale lags the ~1 % of devices written per step by at most RECAL_EVERY - 1 steps."""


@dataclass(frozen=True)
class TrainConfig:
    """Training options (CLI flags and the ``[train]`` TOML table set the same fields)."""

    rule: str = "eapu"
    """eapu | bp | pulse | mixed | float."""
    optimizer: str = "adam"
    """sgd | adam."""
    lr: float = 1e-3
    momentum: float = 0.9
    """SGD momentum (the EaPU paper's SGD runs use 0.9)."""
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    epochs: int = 10
    batch: int = 64
    seed: int = 0
    schedule: str = "constant"
    """constant | step | cosine."""
    step_size: int = 30
    """Epochs between learning-rate drops for ``schedule="step"`` (the paper: StepLR(30, 0.1))."""
    gamma: float = 0.1
    clip: float = 2.0
    """EaPU threshold c in µS (ΔW_th / R_wg); also the mixed rule's threshold."""
    write_noise: float = -1.0
    """σ of one write in µS; negative = the device config's ``write_noise`` (2 µS)."""
    pulse_bl: int = 31
    """Pulse-train length of the ``pulse`` rule (aihwkit's default BL)."""
    pulse_noise: float = 0.3
    """Relative cycle-to-cycle std of one pulse step (aihwkit ConstantStep dw_min_std)."""
    loss: str = "auto"
    """auto (cross-entropy for classification, MSE for regression) | xent | mse."""
    limit: int = 0
    """Use only the first N training and test samples (0 = all)."""
    eval_batch: int = 256

    def validate(self) -> None:
        """ConfigError naming the field if a value is out of range."""

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"train option {name}: {why}")

        if self.rule not in RULES:
            raise bad("rule", f"must be one of {', '.join(RULES)}, got {self.rule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"must be {' or '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise bad("lr", f"must be > 0, got {self.lr}")
        if self.epochs < 0 or self.batch < 1:
            raise bad("epochs/batch", "need epochs >= 0 and batch >= 1")
        if self.clip <= 0:
            raise bad("clip", f"must be > 0 µS, got {self.clip}")
        if self.schedule not in ("constant", "step", "cosine"):
            raise bad("schedule", f"must be constant, step or cosine, got {self.schedule!r}")
        if self.loss != "auto" and self.loss not in LOSSES:
            names = ", ".join(["auto", *LOSSES])
            raise bad("loss", f"must be one of {names}, got {self.loss!r}")
        if self.pulse_bl < 1:
            raise bad("pulse_bl", "must be >= 1")

    @staticmethod
    def from_mapping(d: dict[str, Any], where: str = "train options") -> TrainConfig:
        """Build from a TOML table / JSON dict; unknown keys are errors."""
        names = {f.name: f for f in fields(TrainConfig)}
        unknown = set(d) - set(names)
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
        defaults = TrainConfig()
        kwargs: dict[str, Any] = {}
        for k, v in d.items():
            want = type(getattr(defaults, k))
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, want) or isinstance(v, bool) != (want is bool):
                raise ConfigError(f"{where}: field {k} must be {want.__name__}, got {v!r}")
            kwargs[k] = v
        cfg = TrainConfig(**kwargs)
        cfg.validate()
        return cfg
