"""One energy constant with its provenance, and the names every model must hold.

A :class:`Constant` is a value in SI units (joules per event) with its unit, technology node,
source and an evidence tag (:data:`TAGS`). The values themselves are data: they live in the
preset files under ``presets/`` (see :mod:`xbarc.runtime.energy.presets`), never in code.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

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

ADC_NAME = re.compile(r"^adc_(\d+)b$")
"""Names of the ADC table points: ``adc_<bits>b``."""

FIELDS: tuple[str, ...] = ("value", "unit", "node", "source", "tag", "note")
"""The fields of a constant, in a preset file or an override table (``note`` is optional)."""


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


def adc_bits_of(name: str) -> int | None:
    """The bit width of an ADC table point's name (``"adc_8b"`` → 8), else None."""
    m = ADC_NAME.match(name)
    return int(m.group(1)) if m else None


def check_bits(bits: int, what: str) -> int:
    """``bits`` as an int in 0..:data:`MAX_CONVERTER_BITS`; ``ValueError`` naming ``what``."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise ValueError(f"{what} bits must be an int, got {bits!r}")
    if not 0 <= bits <= MAX_CONVERTER_BITS:
        raise ValueError(f"{what} bits must be in 0..{MAX_CONVERTER_BITS}, got {bits}")
    return int(bits)
