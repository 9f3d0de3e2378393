"""Energy model: work counters × sourced constants, with the constants as data.

Energy is ``Σ counter × constant`` and nothing else. Every constant is a :class:`Constant`
record carrying its value (SI: joules per event), unit, technology node, source and an
evidence tag:

* ``"src"``: read in a tool's source code or documentation (file named in ``source``);
* ``"mem"``: from the literature, not re-read for xbarc (verify before relying on it);
* ``"derived"``: computed from other sourced numbers; ``note`` shows the arithmetic;
* ``"user"``: set by the user (``[energy]`` table of a chip TOML, or
  :meth:`EnergyModel.with_overrides`).

The package, one idea per module:

* :mod:`~xbarc.runtime.energy.constants`: the :class:`Constant` record and required names;
* :mod:`~xbarc.runtime.energy.presets`: reading and validating preset files; the bundled ones
  are ``presets/<name>.toml`` (the defaults come from ``shared/landscape.md`` §3 and
  ``shared/eapu.md``, "Energy"), and a user's preset is a copy of one of them;
* :mod:`~xbarc.runtime.energy.model`: :class:`EnergyModel` (overrides, converter rules,
  :meth:`EnergyModel.breakdown`, whose docstring holds the charging rules);
* :mod:`~xbarc.runtime.energy.report`: :class:`EnergyReport`, the priced breakdown;
* :mod:`~xbarc.runtime.energy.formatting`: SI-prefixed values and the constants table.
"""

from xbarc.runtime.energy.constants import (
    IDEAL_CONVERTER_BITS,
    MAX_CONVERTER_BITS,
    REQUIRED,
    TAGS,
    Constant,
)
from xbarc.runtime.energy.formatting import CONSTANTS_HEADER, format_constants, format_value
from xbarc.runtime.energy.model import EnergyModel
from xbarc.runtime.energy.presets import (
    DEFAULT_CONSTANTS,
    DEFAULT_PRESET,
    PRESET_DIR,
    Preset,
    load_preset,
    preset_names,
)
from xbarc.runtime.energy.report import EnergyReport

__all__ = [
    "CONSTANTS_HEADER",
    "DEFAULT_CONSTANTS",
    "DEFAULT_PRESET",
    "IDEAL_CONVERTER_BITS",
    "MAX_CONVERTER_BITS",
    "PRESET_DIR",
    "REQUIRED",
    "TAGS",
    "Constant",
    "EnergyModel",
    "EnergyReport",
    "Preset",
    "format_constants",
    "format_value",
    "load_preset",
    "preset_names",
]
