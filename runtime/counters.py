"""Work counters: what the runtime did, per tile and in the digital periphery.

The engine and the trainer add to these counters; :mod:`xbarc.runtime.energy` turns them into
joules (energy = Σ counter × constant, nothing else). Counters only ever grow while a run
accumulates; :meth:`TileCounters.minus` gives the work done between two snapshots (one epoch,
one evaluation).

* :class:`TileCounters` holds one ``int64`` array of length ``n_tiles`` per field, indexed by
  the program's tile id.
* :class:`DigitalCounters` holds Python ints for the digital side (no tile index).

Both serialise to plain JSON-able dicts (``to_dict``) and back (``from_dict``, which validates
every field and raises ``ValueError`` naming the one at fault).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


def _as_counter_array(name: str, value: Any, n_tiles: int | None) -> IntArray:
    """Validate one per-tile counter and return it as a contiguous int64 array.

    Args:
        name: Field name, used in error messages.
        value: An integer array or a sequence of ints.
        n_tiles: Expected length, or None to accept any length.

    Returns:
        A 1-D ``int64`` array (a copy when ``value`` is not already one).

    Raises:
        ValueError: If the value is not 1-D, not integer, negative or of the wrong length.
    """
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise ValueError(f"counter {name!r}: expected a 1-D array, got shape {arr.shape}")
    if arr.size == 0 and arr.dtype.kind == "f":  # ``[]`` reads as float64
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"counter {name!r}: expected integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"counter {name!r}: value overflows int64")
    if n_tiles is not None and arr.shape[0] != n_tiles:
        raise ValueError(f"counter {name!r}: expected length {n_tiles}, got {arr.shape[0]}")
    if arr.size and int(arr.min()) < 0:
        raise ValueError(f"counter {name!r}: counts cannot be negative")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _as_count(name: str, value: Any) -> int:
    """Validate one scalar counter (a non-negative int; bools and floats are rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"counter {name!r}: expected an int, got {value!r}")
    if value < 0:
        raise ValueError(f"counter {name!r}: counts cannot be negative, got {value}")
    return int(value)


def _check_keys(cls_name: str, names: tuple[str, ...], d: Mapping[str, Any]) -> None:
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"{cls_name}: unknown counter {unknown[0]!r} (known: {', '.join(names)})")
    for name in names:
        if name not in d:
            raise ValueError(f"{cls_name}: counter {name!r} is missing")


@dataclass(eq=False)
class TileCounters:
    """Per-tile work counters, one ``int64`` array of length ``n_tiles`` per field.

    Every field counts events on the tile with that index, accumulated across calls. The
    energy model charges ``cell_reads``, ``dac``, ``adc``, ``write_pulses`` and
    ``verify_reads``; ``mvm``/``mvm_t`` and the ``updates_*`` fields are reported, not charged
    (their energy is already in the conversions, cell reads and pulses they cause).
    """

    FIELDS: ClassVar[tuple[str, ...]] = (
        "mvm",
        "mvm_t",
        "dac",
        "adc",
        "cell_reads",
        "write_pulses",
        "verify_reads",
        "updates_requested",
        "updates_applied",
        "updates_skipped",
    )

    mvm: IntArray
    """Forward MVMs: input vectors applied to the tile's rows."""
    mvm_t: IntArray
    """Transposed MVMs (backward pass): error vectors applied to the tile's columns."""
    dac: IntArray
    """DAC conversions (forward and transposed MVMs)."""
    adc: IntArray
    """ADC conversions (forward and transposed MVMs)."""
    cell_reads: IntArray
    """Cell read bit-cycles: cells active in an MVM × input bit cycles (both directions)."""
    write_pulses: IntArray
    """Programming pulses applied while training."""
    verify_reads: IntArray
    """Verify reads of single devices (write-verify schemes)."""
    updates_requested: IntArray
    """Weight updates the optimiser asked for (nonzero ``u``) on the tile's devices."""
    updates_applied: IntArray
    """Requested updates actually written."""
    updates_skipped: IntArray
    """Requested updates not written (skipped by the update rule)."""

    def __post_init__(self) -> None:
        n: int | None = None
        for name in self.FIELDS:
            arr = _as_counter_array(name, getattr(self, name), n)
            n = arr.shape[0]
            setattr(self, name, arr)

    @classmethod
    def zeros(cls, n_tiles: int) -> Self:
        """All-zero counters for ``n_tiles`` tiles."""
        if isinstance(n_tiles, bool) or not isinstance(n_tiles, (int, np.integer)) or n_tiles < 0:
            raise ValueError(f"n_tiles must be an int >= 0, got {n_tiles!r}")
        return cls(**{name: np.zeros(int(n_tiles), np.int64) for name in cls.FIELDS})

    @property
    def n_tiles(self) -> int:
        """Number of tiles (length of every array)."""
        return int(self.mvm.shape[0])

    def _same_shape(self, other: TileCounters, what: str) -> None:
        if not isinstance(other, TileCounters):
            raise TypeError(f"{what} needs TileCounters, got {type(other).__name__}")
        if other.n_tiles != self.n_tiles:
            raise ValueError(f"{what}: tile counts differ ({self.n_tiles} vs {other.n_tiles})")

    def add(self, other: TileCounters) -> None:
        """Add ``other``'s counts to these, in place.

        Raises:
            ValueError: If the two hold a different number of tiles.
        """
        self._same_shape(other, "TileCounters.add")
        for name in self.FIELDS:
            np.add(getattr(self, name), getattr(other, name), out=getattr(self, name))

    def minus(self, earlier: TileCounters) -> Self:
        """The work done since the snapshot ``earlier`` (``self − earlier``), as new counters.

        Raises:
            ValueError: If tile counts differ or ``earlier`` is not an earlier snapshot
                (some count would be negative).
        """
        self._same_shape(earlier, "TileCounters.minus")
        out: dict[str, IntArray] = {}
        for name in self.FIELDS:
            diff = getattr(self, name) - getattr(earlier, name)
            if diff.size and int(diff.min()) < 0:
                raise ValueError(f"TileCounters.minus: counter {name!r} would be negative")
            out[name] = diff
        return type(self)(**out)

    def copy(self) -> Self:
        """A deep copy (the arrays are copied)."""
        return type(self)(**{name: getattr(self, name).copy() for name in self.FIELDS})

    def to_dict(self) -> dict[str, list[int]]:
        """``{field: [count per tile]}`` with plain Python ints (JSON-able)."""
        return {name: [int(v) for v in getattr(self, name).tolist()] for name in self.FIELDS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], n_tiles: int) -> Self:
        """Rebuild counters from :meth:`to_dict` output.

        Args:
            d: ``{field: sequence of ints}``; every field must be present.
            n_tiles: Expected length of every field.

        Raises:
            ValueError: Naming the field that is missing, unknown, of the wrong length,
                not integer or negative.
        """
        _check_keys(cls.__name__, cls.FIELDS, d)
        return cls(**{name: _as_counter_array(name, d[name], n_tiles) for name in cls.FIELDS})

    def totals(self) -> dict[str, int]:
        """Each counter summed over tiles."""
        return {name: int(getattr(self, name).sum()) for name in self.FIELDS}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TileCounters):
            return NotImplemented
        return all(np.array_equal(getattr(self, n), getattr(other, n)) for n in self.FIELDS)

    __hash__ = None  # type: ignore[assignment]  # mutable


@dataclass
class DigitalCounters:
    """Work done by the digital periphery (Python ints, not per tile).

    Charged per event by the energy model: ``macs`` × ``mac_fp32``, ``elem_ops`` ×
    ``elem_op``, ``rng_draws`` × ``rng_draw``, ``buffer_bytes`` × ``sram_byte``.
    """

    FIELDS: ClassVar[tuple[str, ...]] = ("macs", "elem_ops", "rng_draws", "buffer_bytes")

    macs: int = 0
    """Digital multiply-accumulates: attention matmuls, gradient outer products."""
    elem_ops: int = 0
    """Other element operations: adds (incl. partial-sum accumulation and ADC shift-add),
    activations, softmax, normalisation."""
    rng_draws: int = 0
    """32-bit random numbers drawn by the update rule."""
    buffer_bytes: int = 0
    """Bytes moved through on-chip SRAM buffers."""

    def __post_init__(self) -> None:
        for name in self.FIELDS:
            setattr(self, name, _as_count(name, getattr(self, name)))

    @classmethod
    def zeros(cls) -> Self:
        """All-zero counters."""
        return cls()

    def add(self, other: DigitalCounters) -> None:
        """Add ``other``'s counts to these, in place."""
        if not isinstance(other, DigitalCounters):
            raise TypeError(
                f"DigitalCounters.add needs DigitalCounters, got {type(other).__name__}"
            )
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def minus(self, earlier: DigitalCounters) -> Self:
        """The work done since the snapshot ``earlier`` (``self − earlier``), as new counters.

        Raises:
            ValueError: If some count would be negative.
        """
        out: dict[str, int] = {}
        for name in self.FIELDS:
            diff = getattr(self, name) - getattr(earlier, name)
            if diff < 0:
                raise ValueError(f"DigitalCounters.minus: counter {name!r} would be negative")
            out[name] = diff
        return type(self)(**out)

    def copy(self) -> Self:
        """A copy."""
        return type(self)(**self.to_dict())

    def to_dict(self) -> dict[str, int]:
        """``{field: count}`` (JSON-able)."""
        return {name: int(getattr(self, name)) for name in self.FIELDS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        """Rebuild counters from :meth:`to_dict` output.

        Raises:
            ValueError: Naming the field that is missing, unknown, not an int or negative.
        """
        _check_keys(cls.__name__, cls.FIELDS, d)
        return cls(**{name: _as_count(name, d[name]) for name in cls.FIELDS})

    def totals(self) -> dict[str, int]:
        """``{field: count}`` (same as :meth:`to_dict`; mirrors :meth:`TileCounters.totals`)."""
        return self.to_dict()
