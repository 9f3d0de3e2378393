"""Energy presets: TOML files of sourced constants, bundled under ``presets/`` or the user's own.

A preset is a file a user can copy and edit. Its layout::

    [preset]
    name = "default-45nm"              # optional; defaults to the file's stem
    description = "what it models"     # optional

    [constants.write_pulse]
    value = 1e-12                      # SI: joules per event
    unit = "J/pulse"                   # required, starts with "J"
    node = "n/a"                       # required: technology node of the source
    source = "MLP_NeuroSim Cell.cpp"   # required: where the number comes from
    tag = "derived"                    # required: src, mem, derived or user
    note = "how it was derived"        # optional (expected for "derived")

Every constant of :data:`~xbarc.runtime.energy.constants.REQUIRED` and at least one
``adc_<bits>b`` point must be present. Anything missing or malformed is one
:class:`~xbarc.errors.ConfigError` naming the file and the entry (exit code 2 on the CLI).
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from xbarc.errors import ConfigError
from xbarc.runtime.energy.constants import FIELDS, REQUIRED, Constant, adc_bits_of

PRESET_DIR = Path(__file__).resolve().parent / "presets"
"""Folder of the bundled preset files (``<name>.toml``)."""

DEFAULT_PRESET = "default-45nm"
"""Name of the preset :meth:`EnergyModel.default` loads."""

_REQUIRED_FIELDS: tuple[str, ...] = ("value", "unit", "node", "source", "tag")
_PRESET_FIELDS = frozenset({"name", "description"})


@dataclass(frozen=True)
class Preset:
    """One preset file, parsed and validated."""

    name: str
    """The preset's name (``[preset] name``, else the file's stem)."""
    path: Path
    """The file it was read from."""
    description: str
    """``[preset] description`` (may be empty)."""
    constants: Mapping[str, Constant]
    """The constants by name, in file order (read-only)."""
    sha256: str
    """SHA-256 (hex) of the file's bytes."""


def preset_names() -> list[str]:
    """Names of the bundled presets, sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def preset_path(name_or_path: str | Path) -> Path:
    """The file of a bundled preset name, or ``name_or_path`` itself if it names a file.

    Raises:
        ConfigError: If it is neither a bundled preset nor an existing file.
    """
    text = str(name_or_path)
    bundled = PRESET_DIR / f"{text}.toml"
    if isinstance(name_or_path, str) and "/" not in text and bundled.is_file():
        return bundled
    p = Path(name_or_path)
    if p.is_file():
        return p
    raise ConfigError(
        f"{text}: no such energy preset or file (bundled: {', '.join(preset_names())})"
    )


def load_preset(name_or_path: str | Path) -> Preset:
    """Read and validate a preset by bundled name or path (bundled files are read once).

    Raises:
        ConfigError: If the file is missing or not a valid preset; the message names the
            file and the entry.
    """
    p = preset_path(name_or_path)
    if p.parent == PRESET_DIR:
        return _bundled(p)
    return _read(p)


@cache
def _bundled(path: Path) -> Preset:
    return _read(path)


def _read(path: Path) -> Preset:
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: cannot read TOML ({e})") from None
    return parse_preset(data, path, hashlib.sha256(raw).hexdigest())


def parse_preset(data: Mapping[str, Any], path: Path, sha256: str = "") -> Preset:
    """Validate the tables of a preset file (see the module docstring for the layout).

    Args:
        data: The parsed TOML.
        path: The file, named in error messages.
        sha256: Digest of the file's bytes, kept on the result.

    Raises:
        ConfigError: For a missing or malformed ``[constants]`` table or entry, a missing
            field (value, unit, node, source, tag), an unknown field or table, or a missing
            required constant.
    """
    unknown = sorted(set(data) - {"preset", "constants"})
    if unknown:
        raise ConfigError(
            f"{path}: unknown table [{unknown[0]}] (a preset has [preset] and [constants])"
        )
    head = data.get("preset", {})
    if not isinstance(head, Mapping) or set(head) - _PRESET_FIELDS:
        raise ConfigError(f"{path}: [preset] may hold only {sorted(_PRESET_FIELDS)}")
    for k in _PRESET_FIELDS:
        if k in head and not isinstance(head[k], str):
            raise ConfigError(f"{path}: [preset] {k} must be a string, got {head[k]!r}")
    table = data.get("constants")
    if not isinstance(table, Mapping) or not table:
        raise ConfigError(f"{path}: a preset needs a [constants] table with one table per constant")
    constants = {str(k): _constant(str(k), v, path) for k, v in table.items()}
    missing = [n for n in REQUIRED if n not in constants]
    if missing:
        raise ConfigError(f"{path}: [constants] lacks {', '.join(missing)}")
    if not any(adc_bits_of(n) for n in constants):
        raise ConfigError(f"{path}: [constants] needs at least one ADC point adc_<bits>b")
    return Preset(
        name=str(head.get("name") or path.stem),
        path=path,
        description=str(head.get("description", "")),
        constants=MappingProxyType(constants),
        sha256=sha256,
    )


def _constant(name: str, spec: Any, path: Path) -> Constant:
    at = f"{path}: [constants.{name}]"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{at} must be a table with {', '.join(_REQUIRED_FIELDS)}")
    extra = sorted(set(spec) - set(FIELDS))
    if extra:
        raise ConfigError(f"{at}: unknown field {extra[0]!r} (fields: {', '.join(FIELDS)})")
    for k in _REQUIRED_FIELDS:
        if k not in spec:
            need = ", ".join(_REQUIRED_FIELDS)
            raise ConfigError(f"{at}: missing {k} (every constant needs {need})")
    value = spec["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{at}: value must be a number in SI units, got {value!r}")
    for k in ("unit", "node", "source", "tag", "note"):
        if k in spec and not isinstance(spec[k], str):
            raise ConfigError(f"{at}: {k} must be a string, got {spec[k]!r}")
    try:
        return Constant(
            name=name,
            value=value,
            unit=spec["unit"],
            node=spec["node"],
            source=spec["source"],
            tag=spec["tag"],
            note=spec.get("note", ""),
        )
    except ValueError as e:
        raise ConfigError(f"{at}: {e}") from None


DEFAULT_CONSTANTS: Mapping[str, Constant] = load_preset(DEFAULT_PRESET).constants
"""The default preset's constants by name (read-only)."""
