"""Text forms of energies and constants: SI prefixes and the constants table."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xbarc.runtime.energy.model import EnergyModel

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
