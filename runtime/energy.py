"""Energy model: work counters × sourced constants.

Energy is ``Σ counter × constant`` and nothing else. Every constant is a :class:`Constant`
record carrying its value (SI: joules per event), unit, technology node, source and an
evidence tag:

* ``"src"``: read in a tool's source code or documentation (file named in ``source``);
* ``"mem"``: from the literature, not re-read for xbarc (verify before relying on it);
* ``"derived"``: computed from other sourced numbers; ``note`` shows the arithmetic;
* ``"user"``: set by the user (``[energy]`` table of a chip TOML, or :meth:`with_overrides`).

The defaults come from ``shared/landscape.md`` §3 and ``shared/eapu.md`` ("Energy"); see
:data:`DEFAULT_CONSTANTS` and ``format_constants(EnergyModel.default())`` for the table.

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
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from xbarc.errors import ConfigError
from xbarc.fsutil import toml_table
from xbarc.runtime.counters import DigitalCounters, TileCounters

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

TAGS: tuple[str, ...] = ("src", "mem", "derived", "user")
"""Evidence tags a :class:`Constant` may carry (``"user"`` only for overrides)."""

IDEAL_CONVERTER_BITS = 8
"""Bit width at which an ideal converter (``bits = 0``) is charged."""

MAX_CONVERTER_BITS = 32
"""Largest converter width the scaling rules accept."""

REQUIRED: tuple[str, ...] = (
    "read_cell_bit",
    "dac_1b",
    "write_pulse",
    "verify_read",
    "mac_fp32",
    "elem_op",
    "rng_draw",
    "sram_byte",
    "gpu_train_flop",
    "gpu_infer_flop",
)
"""Constants every model must hold, besides at least one ``adc_<b>b`` table point."""

_ADC_NAME = re.compile(r"^adc_(\d+)b$")
_OVERRIDE_FIELDS = frozenset({"value", "unit", "node", "source", "tag", "note"})


@dataclass(frozen=True, slots=True)
class Constant:
    """One energy constant with its provenance."""

    name: str
    """Key in the model (``"write_pulse"``)."""
    value: float
    """Value in SI base units: joules per event (per pulse, per conversion, per FLOP…)."""
    unit: str
    """Unit of ``value``, always joules per something (``"J/pulse"``)."""
    node: str
    """Technology node of the source (``"32 nm"``), or ``"n/a"``."""
    source: str
    """Citation, URL or file the number comes from."""
    tag: str
    """Evidence tag, one of :data:`TAGS`."""
    note: str = ""
    """Derivation (for ``"derived"``), caveats, alternatives."""

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            raise ValueError(f"constant {self.name!r}: value must be a number, got {self.value!r}")
        if not math.isfinite(self.value) or self.value <= 0:
            raise ValueError(f"constant {self.name!r}: value must be finite and > 0")
        for attr in ("name", "unit", "node", "source"):
            if not isinstance(getattr(self, attr), str) or not getattr(self, attr).strip():
                raise ValueError(f"constant {self.name!r}: {attr} must be a non-empty string")
        if not self.unit.startswith("J"):
            raise ValueError(
                f"constant {self.name!r}: unit must be joules per event, got {self.unit!r}"
            )
        if self.tag not in TAGS:
            raise ValueError(f"constant {self.name!r}: tag must be one of {TAGS}, got {self.tag!r}")
        object.__setattr__(self, "value", float(self.value))

    def to_dict(self) -> dict[str, str | float]:
        """All fields as a JSON-able dict."""
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "node": self.node,
            "source": self.source,
            "tag": self.tag,
            "note": self.note,
        }


_HOROWITZ = "M. Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014"
_DL_EXAMPLES = "NVIDIA DeepLearningExamples PyTorch/Classification/ConvNets/resnet50v1.5/README.md"

_DEFAULTS: tuple[Constant, ...] = (
    Constant(
        name="read_cell_bit",
        value=0.3e-3 * 100e-9 / (128 * 128),
        unit="J/(cell·bit-cycle)",
        node="32 nm",
        source="ISAAC (Shafiee et al., ISCA'16): 0.3 mW per 128×128 array, 100 ns cycle [mem]; "
        "PUMA puma-simulator include/constants.py xbar_pow_dict['128'] = 0.3 mW [src]",
        tag="derived",
        note="0.3 mW × 100 ns = 30 pJ per array read cycle, ÷ (128·128) cells = 1.83 fJ per "
        "cell per input bit cycle (landscape.md §3 rounds it to ≈2 fJ). ISAAC's array power is "
        "an average over its workload, so this charge is not data-dependent.",
    ),
    Constant(
        name="dac_1b",
        value=3.9e-15,
        unit="J/conversion",
        node="32 nm",
        source="MNSIM-2.0 MNSIM/Hardware_Model/DAC.py, DAC_power_dict[1] = 0.0039 mW at "
        "1 GS/s (ISAAC-derived) [src]",
        tag="src",
        note="b-bit DAC: dac_1b·2^(b−1), which reproduces the whole MNSIM table: 1/2/3/4/6/8 b "
        "→ 3.9/7.8/15.6/31.2/124.8/499.2 fJ (its 8-b entry is written 0.4992 W, missing "
        "1e-3). PUMA: 1-bit DAC 3.5 µW dynamic at 1 ns → 3.5 fJ [src].",
    ),
    Constant(
        name="adc_6b",
        value=1.26e-3 / 1e9,
        unit="J/conversion",
        node="unstated",
        source="MNSIM-2.0 MNSIM/Hardware_Model/ADC.py preset 4: 1.26 mW at 1 GS/s, 'Area-"
        "Efficient 1GS/s 6b SAR ADC with Charge-Injection-Cell-Based DAC' [src]",
        tag="derived",
        note="P / f_s = 1.26 mW / 1 GS/s = 1.26 pJ per conversion. MNSIM itself charges "
        "P·(b+2)/f_s (latency × power), 8× more at 6 b; xbarc charges the energy per sample at "
        "the rated rate. MNSIM cites the paper by title only; its node is not recorded here.",
    ),
    Constant(
        name="adc_8b",
        value=2e-3 / 1.28e9,
        unit="J/conversion",
        node="32 nm",
        source="ISAAC (ISCA'16): 8-b ADC 2 mW at 1.28 GS/s [mem]; 2 mW also in MNSIM-2.0 "
        "ADC.py preset 2 and PUMA (1.8 mW dynamic + 0.2 mW leakage) [src]",
        tag="derived",
        note="2 mW / 1.28 GS/s = 1.5625 pJ per conversion. MNSIM preset 2 pairs the 2 mW with "
        "1 GS/s (→ 2 pJ). Alternative: MNSIM preset 3, two-step SAR, 4 mW at 1.1 GS/s → 3.6 pJ. "
        "Walden-FoM bound (2–10 fJ/step, Murmann ADC survey): 0.5–2.6 pJ.",
    ),
    Constant(
        name="adc_10b",
        value=6.92e-3 / 1.5e9,
        unit="J/conversion",
        node="14 nm FinFET",
        source="MNSIM-2.0 MNSIM/Hardware_Model/ADC.py preset 1: 6.92 mW at 1.5 GS/s, 'A 10b "
        "1.5GS/s Pipelined-SAR ADC ... in 14nm CMOS FinFET' [src]",
        tag="derived",
        note="6.92 mW / 1.5 GS/s = 4.61 pJ per conversion. A 14 nm design, so widths above "
        "8 b are interpolated towards a newer node than the 32 nm 8-b point.",
    ),
    Constant(
        name="write_pulse",
        value=1e-12,
        unit="J/pulse",
        node="n/a",
        source="landscape.md §3 suggested default, inside the NeuroSim range: 0.2 pJ "
        "(MLP_NeuroSim documents/Cell.cpp IdealDevice: 2 V, 10 ns, 5 µS) to 8 pJ "
        "(DNN_NeuroSim V2.1 Param.cpp: 4 V, 50 ns, 10 µS) [src]; PUMA constants.py xbar_wr_* "
        "≈ 1.4 pJ/cell [src]",
        tag="derived",
        note="Per pulse E = V_w²·G·t_w (+ C_wire·V_w²) (MLP_NeuroSim Cell.cpp). 1 pJ is a chosen "
        "mid value; range 0.2–8 pJ (Ag:a-Si RealDevice ≈118 pJ; device target < 10 fJ). The "
        "EaPU paper's 180 nm per-pulse constants (its Methods) were not available.",
    ),
    Constant(
        name="verify_read",
        value=0.5**2 * 10e-6 * 10e-9 + 2e-3 / 1.28e9,
        unit="J/read",
        node="32 nm",
        source="DNN_NeuroSim V2.1 Param.cpp read defaults (0.5 V, 10 ns, LRS 10 µS) [src] + "
        "ISAAC 8-b ADC (adc_8b)",
        tag="derived",
        note="One verify read of one device = cell read V_r²·G·t_r = 0.5² V² × 10 µS × 10 ns "
        "= 25 fJ, plus one 8-b sense/ADC conversion 1.5625 pJ → 1.5875 pJ. A fixed value: "
        "overriding adc_8b does not change it.",
    ),
    Constant(
        name="mac_fp32",
        value=4.6e-12,
        unit="J/MAC",
        node="45 nm",
        source=_HOROWITZ,
        tag="mem",
        note="32-bit FP multiply (3.7 pJ) + 32-bit FP add (0.9 pJ).",
    ),
    Constant(
        name="elem_op",
        value=0.9e-12,
        unit="J/op",
        node="45 nm",
        source=_HOROWITZ,
        tag="mem",
        note="One 32-bit FP add, charged for every digital element op (adds, partial-sum "
        "accumulation, shift-add, activations, softmax, normalisation); exp/div cost more, "
        "so softmax and normalisation are under-counted.",
    ),
    Constant(
        name="rng_draw",
        value=10 * 0.1e-12,
        unit="J/draw",
        node="45 nm",
        source=f"derived from {_HOROWITZ}: 32-bit integer add 0.1 pJ [mem]",
        tag="derived",
        note="One 32-bit uniform from xorshift128: 3 shifts + 4 XORs + 3 register moves ≈ 10 "
        "integer ops, each no dearer than a 32-bit add (0.1 pJ) → 1 pJ. A counter-based "
        "Philox round needs 32×32-bit multiplies (3.1 pJ each) and would cost several times "
        "more. A normal draw is counted as the uniforms it consumes.",
    ),
    Constant(
        name="sram_byte",
        value=10e-12 / 8,
        unit="J/byte",
        node="45 nm",
        source=f"{_HOROWITZ}: 64-bit read from an 8 KB SRAM 10 pJ [mem]",
        tag="derived",
        note="10 pJ / 8 bytes = 1.25 pJ per byte; writes are charged as reads.",
    ),
    Constant(
        name="gpu_train_flop",
        value=400.0 / (2470 * 3 * 8.2e9),
        unit="J/FLOP",
        node="7 nm (A100)",
        source=f"{_DL_EXAMPLES}: 1× A100-80GB AMP training 2470 img/s [src]; A100 TDP 400 W "
        "and ResNet-50 4.1 GMAC = 8.2 GFLOP per image [mem]",
        tag="derived",
        note="400 W / 2470 img/s = 0.162 J/img at TDP (an upper bound on the real draw), ÷ "
        "(3 × 8.2 GFLOP per training image: forward + 2× backward) = 6.58 pJ/FLOP.",
    ),
    Constant(
        name="gpu_infer_flop",
        value=400.0 / (2470 * 3 * 8.2e9) * (3 * 1200) / 3382,
        unit="J/FLOP",
        node="7 nm (A100)",
        source=f"{_DL_EXAMPLES}: 1× V100-16GB AMP training 1200 img/s and AMP inference "
        "3382 img/s at batch 256 [src]; gpu_train_flop",
        tag="derived",
        note="The README has no A100 inference table. Assumption: inference and training "
        "energy per FLOP relate on the A100 as on the V100 in the same README: at 300 W, "
        "300/(1200·24.6 GFLOP) = 10.16 pJ per training FLOP and 300/(3382·8.2 GFLOP) = "
        "10.82 pJ per inference FLOP, ratio 3600/3382 = 1.064; 6.58 × 1.064 = 7.01 pJ/FLOP. "
        "Batch 256 is the README's best throughput; small batches cost more per FLOP.",
    ),
)

DEFAULT_CONSTANTS: Mapping[str, Constant] = MappingProxyType({c.name: c for c in _DEFAULTS})
"""The default constants by name (read-only)."""


def _adc_bits_of(name: str) -> int | None:
    m = _ADC_NAME.match(name)
    return int(m.group(1)) if m else None


def _check_bits(bits: int, what: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise ValueError(f"{what} bits must be an int, got {bits!r}")
    if not 0 <= bits <= MAX_CONVERTER_BITS:
        raise ValueError(f"{what} bits must be in 0..{MAX_CONVERTER_BITS}, got {bits}")
    return int(bits)


_PREFIXES = (
    (1e-18, "a"),
    (1e-15, "f"),
    (1e-12, "p"),
    (1e-9, "n"),
    (1e-6, "µ"),
    (1e-3, "m"),
    (1.0, ""),
    (1e3, "k"),
    (1e6, "M"),
)


def format_value(value: float, unit: str = "J") -> str:
    """Format a value in joules (per something) with an SI prefix (``3.9e-15 J/x`` → ``3.9 fJ/x``).

    Args:
        value: The value in SI base units.
        unit: Its unit; a prefix is added only when it starts with ``J``.

    Returns:
        The value with four significant digits and the prefixed unit.
    """
    if not unit.startswith("J") or value == 0 or not math.isfinite(value):
        return f"{value:.4g} {unit}"
    scale, prefix = _PREFIXES[0]
    for s, p in _PREFIXES:
        if abs(value) >= s * (1 - 1e-12):
            scale, prefix = s, p
    return f"{value / scale:.4g} {prefix}{unit}"


@dataclass
class EnergyReport:
    """Energy of a run, by component (joules), with the constants and rules used."""

    COMPONENTS: ClassVar[tuple[str, ...]] = (
        "array_read",
        "dac",
        "adc",
        "write",
        "verify",
        "digital_mac",
        "digital_elem",
        "rng",
        "buffer",
    )
    TILE_COMPONENTS: ClassVar[tuple[str, ...]] = ("array_read", "dac", "adc", "write", "verify")
    ROW_HEADER: ClassVar[tuple[str, ...]] = ("component", "events", "energy", "per sample", "share")

    array_read: float
    """Crossbar cell reads: ``cell_reads × read_cell_bit``."""
    dac: float
    """DAC conversions at each tile's DAC width."""
    adc: float
    """ADC conversions at each tile's ADC width."""
    write: float
    """Programming pulses: ``write_pulses × write_pulse``."""
    verify: float
    """Verify reads: ``verify_reads × verify_read``."""
    digital_mac: float
    """Digital MACs: ``macs × mac_fp32``."""
    digital_elem: float
    """Digital element ops: ``elem_ops × elem_op``."""
    rng: float
    """Random draws: ``rng_draws × rng_draw``."""
    buffer: float
    """SRAM buffer traffic: ``buffer_bytes × sram_byte``."""
    total: float
    """Sum of the components above."""
    per_tile: FloatArray
    """Per-tile ``array_read + dac + adc + write + verify`` (float64, length ``n_tiles``)."""
    tile_breakdown: dict[str, FloatArray]
    """The five tile components per tile, by name."""
    per_sample: float | None
    """``total / samples``; None when no samples were processed."""
    gpu_per_sample: float
    """GPU baseline per sample: ``gpu_flops_per_sample × gpu_{train,infer}_flop``."""
    gpu_flops_per_sample: float
    """FLOPs per sample the GPU baseline was charged for."""
    samples: int
    """Samples the counters cover."""
    training: bool
    """Whether the GPU baseline is a training (else inference) figure."""
    counts: dict[str, int]
    """Event counts charged, by component (conversions, pulses, MACs, …)."""
    constants_used: list[dict[str, str | float]] = field(default_factory=list)
    """The :class:`Constant` records that entered a nonzero term, as dicts."""
    notes: list[str] = field(default_factory=list)
    """How converter energies were obtained, ideal-converter assumptions, caveats."""

    def components(self) -> dict[str, float]:
        """``{component: joules}`` in :attr:`COMPONENTS` order."""
        return {name: float(getattr(self, name)) for name in self.COMPONENTS}

    @property
    def gpu_ratio(self) -> float | None:
        """GPU energy per sample ÷ crossbar energy per sample (None if undefined)."""
        if self.per_sample is None or self.per_sample == 0:
            return None
        return self.gpu_per_sample / self.per_sample

    def to_dict(self) -> dict[str, Any]:
        """The whole report as plain JSON-able Python values."""
        return {
            "components": self.components(),
            "total": float(self.total),
            "per_sample": self.per_sample,
            "gpu_per_sample": float(self.gpu_per_sample),
            "gpu_flops_per_sample": float(self.gpu_flops_per_sample),
            "gpu_ratio": self.gpu_ratio,
            "samples": int(self.samples),
            "training": bool(self.training),
            "counts": {k: int(v) for k, v in self.counts.items()},
            "per_tile": [float(v) for v in self.per_tile.tolist()],
            "tile_breakdown": {
                k: [float(v) for v in a.tolist()] for k, a in self.tile_breakdown.items()
            },
            "constants_used": [dict(c) for c in self.constants_used],
            "notes": list(self.notes),
        }

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        """Table rows (see :attr:`ROW_HEADER`): one per component, the total, the GPU baseline.

        The GPU row's energy is the baseline for the same number of samples.
        """
        out: list[tuple[str, str, str, str, str]] = []
        for name, joules in [*self.components().items(), ("total", self.total)]:
            per = "-" if self.per_sample is None else format_value(joules / self.samples)
            share = f"{100 * joules / self.total:.1f} %" if self.total > 0 else "-"
            events = str(self.counts.get(name, "")) if name != "total" else ""
            out.append((name, events, format_value(joules), per, share))
        mode = "train" if self.training else "infer"
        out.append(
            (
                f"gpu baseline ({mode})",
                f"{self.gpu_flops_per_sample * self.samples:.4g} FLOP",
                format_value(self.gpu_per_sample * self.samples),
                format_value(self.gpu_per_sample),
                "",
            )
        )
        return out


@dataclass
class EnergyModel:
    """Energy constants by name, with the converter scaling rules and :meth:`breakdown`."""

    constants: dict[str, Constant]
    """Every constant the model charges, keyed by :attr:`Constant.name`."""

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
        """The model with :data:`DEFAULT_CONSTANTS`."""
        return cls(dict(DEFAULT_CONSTANTS))

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
            return EnergyModel(new)
        except ValueError as e:  # pragma: no cover - _override validated each entry
            raise ConfigError(f"{where}: [energy] {e}") from None

    def _override(self, key: str, spec: Any, where: str) -> Constant:
        at = f"{where}: [energy] {key}"
        old = self.constants.get(key)
        adc_bits = _adc_bits_of(key)
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
        pts = [(b, c) for name, c in self.constants.items() if (b := _adc_bits_of(name))]
        return sorted(pts, key=lambda p: p[0])

    def _dac_rule(self, bits: int) -> tuple[float, tuple[str, ...], str]:
        b = _check_bits(bits, "DAC") or IDEAL_CONVERTER_BITS
        c = self.constants["dac_1b"]
        energy = c.value * 2.0 ** (b - 1)
        return energy, (c.name,), f"dac_1b·2^({b}−1)"

    def _adc_rule(self, bits: int) -> tuple[float, tuple[str, ...], str]:
        b = _check_bits(bits, "ADC") or IDEAL_CONVERTER_BITS
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
            return count.astype(np.float64) * c[name].value

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


CONSTANTS_HEADER: tuple[str, str, str, str] = ("name", "value", "node", "source")
"""Column names of :func:`format_constants` rows."""


def format_constants(model: EnergyModel) -> list[tuple[str, ...]]:
    """The model's constants as table rows ``(name, value with unit, node, source [tag])``.

    See :data:`CONSTANTS_HEADER` for the column names.
    """
    return [
        (name, format_value(c.value, c.unit), c.node, f"{c.source} [{c.tag}]")
        for name, c in model.constants.items()
    ]
