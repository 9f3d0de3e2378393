"""The energy model: constants by name, the converter scaling rules, Σ counter × constant.

Charging rules (:meth:`EnergyModel.breakdown`):

=================  =====================================  ==================================
component          counter                                constant
=================  =====================================  ==================================
``array_read``     ``TileCounters.cell_reads``            ``read_cell_bit``
``dac``            ``TileCounters.dac``                   :meth:`EnergyModel.dac` (tile bits)
``adc``            ``TileCounters.adc``                   :meth:`EnergyModel.adc` (tile bits)
``write``          ``TileCounters.write_pulses``          ``write_pulse``
``verify``         ``TileCounters.verify_reads``          ``verify_read``
``digital_mac``    ``DigitalCounters.macs``               ``mac_fp32``
``digital_elem``   ``DigitalCounters.elem_ops``           ``elem_op``
``rng``            ``DigitalCounters.rng_draws``          ``rng_draw``
``buffer``         ``DigitalCounters.buffer_bytes``       ``sram_byte``
GPU baseline       ``gpu_flops_per_sample``               ``gpu_train_flop`` / ``gpu_infer_flop``
=================  =====================================  ==================================

Converter rules:

* **DAC**: ``E_dac(b) = dac_1b · 2^(b−1)``. This reproduces every entry of MNSIM-2.0's
  ISAAC-derived DAC table exactly (1/2/3/4/6/8 b → 3.9/7.8/15.6/31.2/124.8/499.2 fJ at
  1 GS/s; in particular 31.2 fJ at 4 b and 124.8 fJ at 6 b) and extends it by the same
  doubling per bit.
* **ADC**: a table of points named ``adc_<b>b`` (defaults 6, 8 and 10 b). At a table width the
  table value is returned exactly. Between two points ``b0 < b < b1`` the energy is
  log-linear: ``E = E0 · (E1/E0)^((b−b0)/(b1−b0))``. Outside the table it follows Walden
  figure-of-merit scaling, ``E ∝ 2^b``, anchored at the nearest point:
  ``E = E_min · 2^(b−b_min)`` below and ``E = E_max · 2^(b−b_max)`` above.
* **Ideal converters**: ``bits = 0`` means an ideal (float) converter in xbarc. Its energy is
  computed at a nominal :data:`IDEAL_CONVERTER_BITS` = 8 bits and the report says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from xbarc.errors import ConfigError
from xbarc.fsutil import toml_table
from xbarc.runtime.counters import DigitalCounters, TileCounters
from xbarc.runtime.energy.constants import (
    FIELDS,
    IDEAL_CONVERTER_BITS,
    MAX_CONVERTER_BITS,
    REQUIRED,
    TAGS,
    Constant,
    adc_bits_of,
    check_bits,
)
from xbarc.runtime.energy.formatting import format_value
from xbarc.runtime.energy.presets import DEFAULT_PRESET, load_preset
from xbarc.runtime.energy.report import EnergyReport

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_OVERRIDE_FIELDS = frozenset(FIELDS)


@dataclass
class EnergyModel:
    """Energy constants by name, with the converter scaling rules and :meth:`breakdown`."""

    constants: dict[str, Constant]
    """Every constant the model charges, keyed by :attr:`Constant.name`."""
    preset: str = DEFAULT_PRESET
    """The preset the constants started from (a name, or the path of a preset file)."""

    def __post_init__(self) -> None:
        self.constants = dict(self.constants)
        for key, c in self.constants.items():
            if not isinstance(c, Constant):
                raise ValueError(f"energy constant {key!r}: expected a Constant, got {c!r}")
            if c.name != key:
                raise ValueError(f"energy constant {key!r} is named {c.name!r}")
        missing = [n for n in REQUIRED if n not in self.constants]
        if missing:
            raise ValueError(f"energy model lacks constant(s) {missing}")
        if not self.adc_table():
            raise ValueError("energy model needs at least one ADC point named adc_<bits>b")

    # ------------------------------------------------------------------ construction

    @classmethod
    def default(cls) -> EnergyModel:
        """The model of the default preset (:data:`.presets.DEFAULT_PRESET`)."""
        return cls.from_preset(DEFAULT_PRESET)

    @classmethod
    def from_preset(cls, name_or_path: str | Path) -> EnergyModel:
        """The model of a bundled preset (by name) or of a preset file (by path).

        Raises:
            ConfigError: If there is no such preset, or the file is not a valid preset; the
                message names the file and the entry at fault.
        """
        preset = load_preset(name_or_path)
        return cls(dict(preset.constants), preset=preset.name)

    @classmethod
    def from_toml(cls, path: str | Path) -> EnergyModel:
        """The default model with the ``[energy]`` table of a TOML file applied.

        Other tables (``[chip]``, ``[device]``) are ignored here; a file without ``[energy]``
        gives the defaults. See :meth:`with_overrides` for the table's format.

        Raises:
            ConfigError: If the file cannot be read or an override is invalid; the message
                names the file and the key.
        """
        return cls.default().with_overrides(toml_table(path, "energy"), where=str(path))

    def with_overrides(
        self, overrides: Mapping[str, Any], *, where: str = "overrides"
    ) -> EnergyModel:
        """A copy with some constants replaced.

        Each entry is ``name = value`` (joules, e.g. ``write_pulse = 2e-12``) or a table
        ``name = {value = 2e-12, source = "my chip", unit = ..., node = ..., tag = ...,
        note = ...}``. An overridden constant keeps its unit and node unless given; its source
        becomes the given one or ``"user override (<where>)"`` and its tag ``"user"`` unless
        given. Values are always joules: a ``unit`` is a label and must start with ``J``.
        Besides the existing names, ``adc_<b>b`` adds a point to the ADC table.

        Args:
            overrides: ``{name: value or table}``, e.g. the ``[energy]`` table of a chip TOML
                (``ChipConfig.energy``).
            where: The file (or other origin) named in error messages and default sources.

        Raises:
            ConfigError: For an unknown name, a non-numeric, non-finite or non-positive value,
                or a malformed table; the message names ``where`` and the key.
        """
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"{where}: [energy] must be a table, got {overrides!r}")
        new = dict(self.constants)
        for key, spec in overrides.items():
            new[key] = self._override(str(key), spec, where)
        try:
            return EnergyModel(new, preset=self.preset)
        except ValueError as e:  # pragma: no cover - _override validated each entry
            raise ConfigError(f"{where}: [energy] {e}") from None

    def _override(self, key: str, spec: Any, where: str) -> Constant:
        at = f"{where}: [energy] {key}"
        old = self.constants.get(key)
        adc_bits = adc_bits_of(key)
        if old is None and (adc_bits is None or adc_bits < 1):
            known = ", ".join(sorted(self.constants))
            raise ConfigError(f"{at}: unknown energy constant (known: {known}, adc_<bits>b)")
        if isinstance(spec, Mapping):
            extra = sorted(set(spec) - _OVERRIDE_FIELDS)
            if extra:
                raise ConfigError(f"{at}: unknown field(s) {extra}; use {sorted(_OVERRIDE_FIELDS)}")
            if "value" not in spec:
                raise ConfigError(f"{at}: table needs a value")
            for k in _OVERRIDE_FIELDS - {"value"}:
                if k in spec and (not isinstance(spec[k], str) or not spec[k].strip()):
                    raise ConfigError(f"{at}: {k} must be a non-empty string, got {spec[k]!r}")
            raw: Any = spec["value"]
            opts: Mapping[str, Any] = spec
        else:
            raw, opts = spec, {}
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ConfigError(f"{at}: value must be a number in joules, got {raw!r}")
        value = float(raw)
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{at}: value must be finite and > 0, got {raw!r}")
        unit = str(opts.get("unit", old.unit if old else "J/conversion"))
        if not unit.startswith("J"):
            raise ConfigError(f"{at}: values are in joules; unit must start with 'J', got {unit!r}")
        tag = str(opts.get("tag", "user"))
        if tag not in TAGS:
            raise ConfigError(f"{at}: tag must be one of {TAGS}, got {tag!r}")
        was = f"replaces {format_value(old.value, old.unit)} ({old.source})" if old else "added"
        return Constant(
            name=key,
            value=value,
            unit=unit,
            node=str(opts.get("node", old.node if old else "unstated")),
            source=str(opts.get("source", f"user override ({where})")),
            tag=tag,
            note=str(opts.get("note", was)),
        )

    # ------------------------------------------------------------------ converters

    def adc_table(self) -> list[tuple[int, Constant]]:
        """The ADC points ``(bits, constant)`` sorted by bits (constants named ``adc_<b>b``)."""
        pts = [(b, c) for name, c in self.constants.items() if (b := adc_bits_of(name))]
        return sorted(pts, key=lambda p: p[0])

    def _dac_rule(self, bits: int) -> tuple[float, tuple[str, ...], str]:
        b = check_bits(bits, "DAC") or IDEAL_CONVERTER_BITS
        c = self.constants["dac_1b"]
        energy = c.value * 2.0 ** (b - 1)
        return energy, (c.name,), f"dac_1b·2^({b}−1)"

    def _adc_rule(self, bits: int) -> tuple[float, tuple[str, ...], str]:
        b = check_bits(bits, "ADC") or IDEAL_CONVERTER_BITS
        table = self.adc_table()
        below = [(tb, c) for tb, c in table if tb <= b]
        above = [(tb, c) for tb, c in table if tb >= b]
        if below and below[-1][0] == b:
            c = below[-1][1]
            return c.value, (c.name,), f"= {c.name} (table point)"
        if below and above:
            (b0, c0), (b1, c1) = below[-1], above[0]
            energy = c0.value * (c1.value / c0.value) ** ((b - b0) / (b1 - b0))
            return energy, (c0.name, c1.name), f"log-linear between {c0.name} and {c1.name}"
        b0, c0 = above[0] if above else below[-1]
        energy = c0.value * 2.0 ** (b - b0)
        return energy, (c0.name,), f"{c0.name}·2^({b}−{b0}) (Walden scaling outside the table)"

    def dac(self, bits: int) -> float:
        """Energy of one DAC conversion at ``bits`` bits, in joules.

        ``dac_1b · 2^(bits−1)``; ``bits = 0`` (ideal) is charged at
        :data:`IDEAL_CONVERTER_BITS`.

        Raises:
            ValueError: If ``bits`` is not an int in 0..32.
        """
        return self._dac_rule(bits)[0]

    def adc(self, bits: int) -> float:
        """Energy of one ADC conversion at ``bits`` bits, in joules.

        The table value at a table width, log-linear between table points, Walden scaling
        (``∝ 2^bits``) from the nearest point outside the table; ``bits = 0`` (ideal) is
        charged at :data:`IDEAL_CONVERTER_BITS`.

        Raises:
            ValueError: If ``bits`` is not an int in 0..32.
        """
        return self._adc_rule(bits)[0]

    # ------------------------------------------------------------------ accounting

    def breakdown(
        self,
        tiles: TileCounters,
        digital: DigitalCounters,
        *,
        dac_bits: npt.ArrayLike,
        adc_bits: npt.ArrayLike,
        samples: int,
        gpu_flops_per_sample: float,
        training: bool,
    ) -> EnergyReport:
        """Energy of the work in ``tiles`` and ``digital``: Σ counter × constant.

        Args:
            tiles: Per-tile counters. ``dac``/``adc``/``cell_reads`` must already include the
                transposed (backward) MVMs; ``mvm``/``mvm_t``/``updates_*`` are not charged.
            digital: Digital-periphery counters.
            dac_bits: Bits per DAC conversion of each tile (int array of length ``n_tiles``,
                or one int for all): 1 for bit-serial inputs, 0 for an ideal DAC.
            adc_bits: Bits per ADC conversion of each tile, likewise (0 = ideal).
            samples: Samples (images, tokens…) the counters cover, for ``per_sample``.
            gpu_flops_per_sample: FLOPs per sample of the same model on a GPU (about 3× the
                forward FLOPs when training).
            training: Charge the GPU baseline with ``gpu_train_flop`` (else
                ``gpu_infer_flop``).

        Returns:
            The report; its notes name every converter rule and assumption applied.

        Raises:
            ValueError: For a bits array of the wrong shape, dtype or range, a negative
                ``samples`` or a negative or non-finite ``gpu_flops_per_sample``.
        """
        if not isinstance(tiles, TileCounters) or not isinstance(digital, DigitalCounters):
            raise TypeError("breakdown needs TileCounters and DigitalCounters")
        n = tiles.n_tiles
        dbits = _bits_array("dac_bits", dac_bits, n)
        abits = _bits_array("adc_bits", adc_bits, n)
        if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 0:
            raise ValueError(f"samples must be an int >= 0, got {samples!r}")
        gflops = float(gpu_flops_per_sample)
        if not math.isfinite(gflops) or gflops < 0:
            raise ValueError(f"gpu_flops_per_sample must be finite and >= 0, got {gflops}")

        c = self.constants
        used: list[str] = []
        notes: list[str] = []

        def use(*names: str) -> None:
            used.extend(nm for nm in names if nm not in used)

        def charge(count: IntArray, name: str) -> FloatArray:
            if count.any():
                use(name)
            out: FloatArray = count.astype(np.float64) * c[name].value
            return out

        def convert(kind: str, count: IntArray, bits: IntArray) -> FloatArray:
            rule = self._dac_rule if kind == "DAC" else self._adc_rule
            per = np.zeros(n, np.float64)
            for b in np.unique(bits).tolist():
                mask = bits == b
                energy, names, how = rule(int(b))
                per[mask] = energy
                active = int(np.count_nonzero(count[mask]))
                if not active:
                    continue
                use(*names)
                shown = IDEAL_CONVERTER_BITS if b == 0 else b
                ideal = f"ideal {kind} (bits 0) counted at {shown} b; " if b == 0 else ""
                notes.append(
                    f"{ideal}{kind} {shown} b on {active} tile(s): "
                    f"{format_value(energy, 'J/conversion')}, {how}"
                )
            return count.astype(np.float64) * per

        tile_parts: dict[str, FloatArray] = {
            "array_read": charge(tiles.cell_reads, "read_cell_bit"),
            "dac": convert("DAC", tiles.dac, dbits),
            "adc": convert("ADC", tiles.adc, abits),
            "write": charge(tiles.write_pulses, "write_pulse"),
            "verify": charge(tiles.verify_reads, "verify_read"),
        }
        digital_parts: dict[str, tuple[int, str]] = {
            "digital_mac": (digital.macs, "mac_fp32"),
            "digital_elem": (digital.elem_ops, "elem_op"),
            "rng": (digital.rng_draws, "rng_draw"),
            "buffer": (digital.buffer_bytes, "sram_byte"),
        }
        totals: dict[str, float] = {k: math.fsum(v.tolist()) for k, v in tile_parts.items()}
        for k, (count, name) in digital_parts.items():
            if count:
                use(name)
            totals[k] = float(count) * c[name].value
        gpu_name = "gpu_train_flop" if training else "gpu_infer_flop"
        use(gpu_name)
        per_tile = np.zeros(n, np.float64)
        for arr in tile_parts.values():
            per_tile += arr
        total = math.fsum(totals.values())
        if samples == 0:
            notes.append("samples = 0: per-sample energy undefined")
        counts = {
            "array_read": int(tiles.cell_reads.sum()),
            "dac": int(tiles.dac.sum()),
            "adc": int(tiles.adc.sum()),
            "write": int(tiles.write_pulses.sum()),
            "verify": int(tiles.verify_reads.sum()),
            **{k: int(cnt) for k, (cnt, _) in digital_parts.items()},
        }
        return EnergyReport(
            **totals,
            total=total,
            per_tile=per_tile,
            tile_breakdown=tile_parts,
            per_sample=total / samples if samples else None,
            gpu_per_sample=gflops * c[gpu_name].value,
            gpu_flops_per_sample=gflops,
            samples=int(samples),
            training=bool(training),
            counts=counts,
            constants_used=[c[nm].to_dict() for nm in self._ordered(used)],
            notes=notes,
        )

    def _ordered(self, names: list[str]) -> list[str]:
        """``names`` in the model's constant order."""
        wanted = set(names)
        return [nm for nm in self.constants if nm in wanted]

    def to_dict(self) -> dict[str, dict[str, str | float]]:
        """``{name: constant as dict}`` (JSON-able)."""
        return {name: c.to_dict() for name, c in self.constants.items()}

    def digest(self) -> str:
        """SHA-256 (hex) of the constants as canonical JSON: names the exact constants used."""
        text = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=True, allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def replace(self, **constants: Constant) -> EnergyModel:
        """A copy with whole :class:`Constant` records replaced or added."""
        return dataclasses.replace(self, constants={**self.constants, **constants})


def _bits_array(name: str, bits: npt.ArrayLike, n_tiles: int) -> IntArray:
    arr = np.asarray(bits)
    if arr.ndim == 0:
        arr = np.full(n_tiles, arr)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected an integer array, got dtype {arr.dtype}")
    if arr.shape != (n_tiles,):
        raise ValueError(f"{name}: expected shape ({n_tiles},), got {arr.shape}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > MAX_CONVERTER_BITS):
        raise ValueError(f"{name}: bits must be in 0..{MAX_CONVERTER_BITS}")
    return arr.astype(np.int64)
