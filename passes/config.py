"""Chip configuration: the one definition of every mapping, periphery and device option.

CLI flags and the TOML file (``--config chip.toml``) set the same fields::

    [chip]
    tile = "128x128"        # or tile_rows / tile_cols
    weight_bits = 8
    cell_bits = 2
    signing = "differential"
    dac_bits = 8
    adc_bits = 8
    pack = "greedy"

    [device]
    g_min = 1.0             # µS
    g_max = 81.0
    write_noise = 2.0

    [energy]                # read by runtime.energy (constant overrides)
    write_pulse = 2e-12

Every default names its source in :data:`DEVICE_SOURCES` / the field docstrings; the values
marked [inferred] are our choices where no source gives one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from xbarc.errors import ConfigError
from xbarc.fsutil import read_toml


@dataclass(frozen=True)
class DeviceConfig:
    """Device model of a crossbar cell (conductances in µS)."""

    g_min: float = 1.0
    """Lowest programmable conductance (HRS), µS."""
    g_max: float = 81.0
    """Highest programmable conductance (LRS), µS. With ``g_min`` the 80 µS window maps the EaPU
    paper's R_wg = 1/80 weight per µS onto weights in [-1, 1] [inferred]."""
    levels: int = 0
    """Distinguishable programming levels across [g_min, g_max]; 0 = continuous (analog)."""
    prog_noise_abs: float = 1.0
    """Programming error σ per device after write-verify, µS [inferred: half the EaPU paper's
    single-write σ of 2 µS]."""
    prog_noise_rel: float = 0.0
    """Programming error σ relative to the target conductance."""
    read_noise: float = 0.01
    """Relative σ of the conductance fluctuation per read (1 %) [inferred; RRAM read noise is
    reported at the percent level, e.g. Wan et al., Nature 608 (2022) (NeuRRAM)]."""
    write_noise: float = 2.0
    """σ of the error of one programming pulse (ε_cell), µS: the EaPU paper's default σ = 2 µS
    (Liu et al., Nat. Commun. 2025; Fig. 5 uses 2.4 µS)."""
    drift_nu: float = 0.0
    """Mean drift exponent ν in G(t) = G0·(t/t0)^-ν; 0 for RRAM (PCM: ≈0.05, aihwkit PCM preset)."""
    drift_nu_std: float = 0.0
    """Device-to-device spread of ν."""
    drift_t0: float = 1.0
    """Reference time t0 of the drift law, seconds."""
    t_read: float = 0.0
    """Time since programming at which inference runs, seconds (0 or ≤ t0: no drift)."""
    stuck_at_gmin: float = 0.0
    """Fraction of devices stuck at g_min."""
    stuck_at_gmax: float = 0.0
    """Fraction of devices stuck at g_max."""
    endurance: float = 1e6
    """Write cycles a device survives (RRAM 10^6 as a working figure) [inferred]."""
    pulse_step: float = 0.0
    """Conductance change of one identical pulse for the ``pulse``/``mixed`` rules, µS; 0 means
    (g_max - g_min)/100 [inferred: 100 steps across the window, aihwkit ConstantStep-like]."""
    pulse_asymmetry: float = 0.0
    """Relative difference between up and down step sizes (0 = symmetric)."""
    pulse_nonlinearity: float = 0.0
    """Soft-bounds factor: step scales by (1 - ν_nl·(G - g_min)/(g_max - g_min)) upward."""

    def step(self) -> float:
        """Conductance change of one pulse, µS."""
        return self.pulse_step or (self.g_max - self.g_min) / 100.0


@dataclass(frozen=True)
class ChipConfig:
    """Mapping and periphery options of the compile pipeline."""

    tile_rows: int = 256
    """Rows (word lines) of one crossbar tile."""
    tile_cols: int = 256
    """Columns (bit lines) of one crossbar tile."""
    weight_bits: int = 0
    """Weight precision; 0 keeps analog weights (one continuous cell per sign)."""
    cell_bits: int = 2
    """Bits per cell when ``weight_bits > 0`` (bit slicing, ISAAC/PUMA use 2)."""
    signing: str = "differential"
    """``differential`` (G+, G- pair per weight) or ``offset`` (one cell, digital offset)."""
    weight_scale: float = 0.0
    """Weight per µS (R_wg); 0 = per layer, so the largest |w| spans the conductance window."""
    dac_bits: int = 8
    """Input DAC resolution; 0 = ideal."""
    adc_bits: int = 8
    """Output ADC resolution; 0 = ideal."""
    input_mode: str = "parallel"
    """``parallel`` (one multi-bit DAC pulse per MVM) or ``bit-serial`` (dac_bits 1-bit cycles)."""
    pack: str = "greedy"
    """``none`` or ``greedy``: share tiles between small matrices."""
    replicate: int = 1
    """Most copies of any layer. 1 without a tile budget means no replication; with a
    ``tile_budget`` and ``replicate = 1`` the budget alone bounds the copies."""
    tile_budget: int = 0
    """Most tiles the chip has; 0 = unlimited. Replication never exceeds it."""
    device: DeviceConfig = field(default_factory=DeviceConfig)
    """The cell model attached to every tile."""
    energy: dict[str, Any] = field(default_factory=dict)
    """Overrides of energy constants (see ``runtime.energy``), kept verbatim."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def tile(self) -> tuple[int, int]:
        """Tile rows and columns."""
        return (self.tile_rows, self.tile_cols)

    @property
    def columns_per_weight(self) -> int:
        """Physical columns per weight per slice: 2 for differential, 1 for offset."""
        return 2 if self.signing == "differential" else 1

    @property
    def slices(self) -> int:
        """Bit slices per weight."""
        if self.weight_bits == 0:
            return 1
        magnitude = self.weight_bits - 1 if self.signing == "differential" else self.weight_bits
        return max(1, math.ceil(magnitude / self.cell_bits))

    def validate(self) -> None:
        """Raise ConfigError naming the field if a value is out of range."""

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"config field {name}: {why}")

        if self.tile_rows < 1 or self.tile_cols < 1:
            raise bad("tile", f"needs rows and columns >= 1, got {self.tile_rows}x{self.tile_cols}")
        if self.signing not in ("differential", "offset"):
            raise bad("signing", f"must be 'differential' or 'offset', got {self.signing!r}")
        if self.signing == "differential" and self.tile_cols < 2:
            raise bad("tile", "differential signing needs at least 2 tile columns (use offset)")
        if not 0 <= self.weight_bits <= 32:
            raise bad("weight_bits", f"must be 0..32, got {self.weight_bits}")
        if self.weight_bits == 1:
            raise bad("weight_bits", "needs at least 2 bits (sign and magnitude), or 0 for analog")
        if not 1 <= self.cell_bits <= 16:
            raise bad("cell_bits", f"must be 1..16, got {self.cell_bits}")
        for name in ("dac_bits", "adc_bits"):
            v = getattr(self, name)
            if not (v == 0 or 2 <= v <= 24):
                raise bad(name, f"must be 0 (ideal) or 2..24 (signed converter), got {v}")
        if self.input_mode not in ("parallel", "bit-serial"):
            raise bad("input_mode", f"must be 'parallel' or 'bit-serial', got {self.input_mode!r}")
        if self.pack not in ("none", "greedy"):
            raise bad("pack", f"must be 'none' or 'greedy', got {self.pack!r}")
        if self.replicate < 1:
            raise bad("replicate", f"must be >= 1, got {self.replicate}")
        if self.tile_budget < 0:
            raise bad("tile_budget", f"must be >= 0, got {self.tile_budget}")
        if not (self.weight_scale >= 0 and math.isfinite(self.weight_scale)):
            raise bad("weight_scale", f"must be >= 0 (0 = per layer), got {self.weight_scale}")
        d = self.device
        if not (0 <= d.g_min < d.g_max and math.isfinite(d.g_max)):
            raise bad("device.g_min/g_max", f"need 0 <= g_min < g_max, got {d.g_min}, {d.g_max}")
        if d.levels < 0 or d.levels == 1:
            raise bad("device.levels", f"must be 0 (continuous) or >= 2, got {d.levels}")
        for name in (
            "prog_noise_abs",
            "prog_noise_rel",
            "read_noise",
            "write_noise",
            "drift_nu",
            "drift_nu_std",
            "t_read",
            "pulse_step",
            "pulse_nonlinearity",
        ):
            v = getattr(d, name)
            if not (v >= 0 and math.isfinite(v)):
                raise bad(f"device.{name}", f"must be finite and >= 0, got {v}")
        if d.drift_t0 <= 0:
            raise bad("device.drift_t0", f"must be > 0, got {d.drift_t0}")
        if (
            not 0 <= d.stuck_at_gmin + d.stuck_at_gmax <= 1
            or min(d.stuck_at_gmin, d.stuck_at_gmax) < 0
        ):
            raise bad("device.stuck_at_*", "fractions must be >= 0 and sum to <= 1")
        if d.endurance <= 0:
            raise bad("device.endurance", f"must be > 0, got {d.endurance}")
        if not -1 < d.pulse_asymmetry < 1:
            raise bad("device.pulse_asymmetry", f"must be in (-1, 1), got {d.pulse_asymmetry}")

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON-able data."""
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """sha256 of the canonical JSON form (a run's configuration fingerprint)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @staticmethod
    def from_dict(data: dict[str, Any], *, where: str = "config") -> ChipConfig:
        """Build from ``to_dict`` output (or a TOML table); unknown keys are errors."""
        chip = dict(data)
        dev = chip.pop("device", {}) or {}
        if not isinstance(dev, dict):
            raise ConfigError(f"{where}: device must be a table")
        cfg: ChipConfig = _build(
            ChipConfig, chip, where, device=_build(DeviceConfig, dev, f"{where} [device]")
        )
        return cfg

    @staticmethod
    def from_toml(path: str | Path, **overrides: Any) -> ChipConfig:
        """Read ``[chip]``, ``[device]`` and ``[energy]`` tables; ``overrides`` win."""
        p = Path(path)
        data = read_toml(p)
        unknown = set(data) - {"chip", "device", "energy"}
        if unknown:
            raise ConfigError(
                f"{p}: unknown table(s) {sorted(unknown)}; use [chip], [device], [energy]"
            )
        chip = dict(data.get("chip", {}))
        for table in ("device", "energy"):
            if table in chip:
                raise ConfigError(f"{p}: [chip] field {table}: use a [{table}] table instead")
        if "tile" in chip:
            chip["tile_rows"], chip["tile_cols"] = parse_tile(str(chip.pop("tile")))
        chip["device"] = data.get("device", {})
        chip["energy"] = data.get("energy", {})
        base = ChipConfig.from_dict(chip, where=str(p))
        return base.replace(**overrides)

    def replace(self, **changes: Any) -> ChipConfig:
        """A copy with top-level fields and ``device_<field>`` entries changed."""
        dev = {k.removeprefix("device_"): v for k, v in changes.items() if k.startswith("device_")}
        top = {k: v for k, v in changes.items() if not k.startswith("device_")}
        if dev:
            top["device"] = _build(
                DeviceConfig, {**dataclasses.asdict(self.device), **dev}, "option"
            )
        known = {f.name for f in fields(ChipConfig)}
        for k in top:
            if k not in known:
                raise ConfigError(f"unknown config field {k!r}")
        return dataclasses.replace(self, **top)


def parse_tile(text: str) -> tuple[int, int]:
    """``"256x128"`` → (256, 128); ConfigError otherwise."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        rows, cols = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"tile must look like ROWSxCOLS (e.g. 256x256), got {text!r}") from None
    if rows < 1 or cols < 1:
        raise ConfigError(f"tile needs rows and columns >= 1, got {text!r}")
    return rows, cols


def _build(cls: type[Any], data: dict[str, Any], where: str, **extra: Any) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        default = getattr(cls(), k) if k not in ("device", "energy") else None
        if (
            isinstance(default, bool)
            or default is None
            or (isinstance(default, int) and not isinstance(v, bool) and isinstance(v, int))
        ):
            kwargs[k] = v
        elif isinstance(default, float) and isinstance(v, (int, float)) and not isinstance(v, bool):
            kwargs[k] = float(v)
        elif isinstance(default, str) and isinstance(v, str):
            kwargs[k] = v
        else:
            raise ConfigError(f"{where}: field {k} must be {type(default).__name__}, got {v!r}")
    kwargs.update(extra)
    try:
        return cls(**kwargs)
    except (TypeError, ConfigError) as e:  # ConfigError: validate() on a field's range
        raise ConfigError(f"{where}: {e}") from None
