"""Argument checks the NumPy kernel twins share (the checks and messages of ``_kernels.pyx``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]


def _describe(a: object) -> str:
    dtype = getattr(a, "dtype", None)
    shape = getattr(a, "shape", None)
    if dtype is None or shape is None:
        return type(a).__name__
    return f"{type(a).__name__} of dtype {dtype}, shape {tuple(shape)}"


def _array(fn: str, name: str, a: object, ndim: int, *, writable: bool = False) -> F32:
    """``a`` itself if it is a C-contiguous native float32 array of rank ``ndim``; else raise."""
    if (
        isinstance(a, np.ndarray)
        and a.dtype == np.dtype(np.float32)
        and a.ndim == ndim
        and a.flags.c_contiguous
        and (a.flags.writeable or not writable)
    ):
        return a
    what = "a writable" if writable else "a"
    dims = "dimension" if ndim == 1 else "dimensions"
    raise ValueError(
        f"{fn}: {name} must be {what} C-contiguous float32 array with {ndim} {dims}; "
        f"got {_describe(a)}"
    )


def _expect(fn: str, name: str, got: tuple[int, ...], want: tuple[int, ...]) -> None:
    if got != want:
        raise ValueError(f"{fn}: {name} has shape {got}, expected {want}")


def _disjoint(fn: str, outs: Mapping[str, F32], ins: Mapping[str, F32]) -> None:
    items = list(outs.items())
    for i, (na, a) in enumerate(items):
        for nb, b in [*items[i + 1 :], *ins.items()]:
            if np.may_share_memory(a, b):
                raise ValueError(f"{fn}: {na} and {nb} overlap in memory; pass separate buffers")


def _positive(fn: str, name: str, v: int) -> None:
    if v < 1:
        raise ValueError(f"{fn}: {name} must be >= 1, got {v}")


def _check_bits(fn: str, name: str, bits: int, signed: bool) -> None:
    lo = 2 if signed else 1
    if bits != 0 and not lo <= bits <= 32:
        raise ValueError(f"{fn}: {name} must be 0 (off) or in [{lo}, 32], got {bits}")


def _to_f32(v: float) -> float:
    """``v`` rounded to float32, as a C ``float`` argument of the compiled twin receives it."""
    return float(np.float32(v))


# --------------------------------------------------------------------------- im2col / col2im
