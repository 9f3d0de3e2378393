"""The energy of one run, by component, with the constants and rules that priced it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from xbarc.runtime.energy.formatting import format_value

FloatArray = npt.NDArray[np.float64]


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
