"""Value types of the IR: element types, static tensor types and tile placements.

Every tensor in an xbarc graph has a fully static shape: the ONNX frontend fixes the batch size
at import, so shape arithmetic never needs symbols.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


class DType(enum.Enum):
    """Element type of a tensor; the value is the short name the printer uses."""

    F16 = "f16"
    F32 = "f32"
    F64 = "f64"
    I8 = "i8"
    I32 = "i32"
    I64 = "i64"
    U8 = "u8"
    BOOL = "bool"

    @property
    def numpy(self) -> np.dtype[np.generic]:
        """The NumPy dtype holding this element type."""
        return np.dtype(_TO_NUMPY[self])

    @property
    def is_float(self) -> bool:
        """True for the floating-point types."""
        return self in (DType.F16, DType.F32, DType.F64)

    @staticmethod
    def from_numpy(dtype: np.dtype[np.generic] | type) -> DType:
        """Map a NumPy dtype to the IR type; raise ``ValueError`` if there is none."""
        key = np.dtype(dtype).str.lstrip("<>|=")
        try:
            return _FROM_NUMPY[key]
        except KeyError:
            raise ValueError(f"no IR element type for NumPy dtype {np.dtype(dtype)}") from None


_TO_NUMPY = {
    DType.F16: "<f2",
    DType.F32: "<f4",
    DType.F64: "<f8",
    DType.I8: "i1",
    DType.I32: "<i4",
    DType.I64: "<i8",
    DType.U8: "u1",
    DType.BOOL: "?",
}
_FROM_NUMPY = {np.dtype(v).str.lstrip("<>|="): k for k, v in _TO_NUMPY.items()}


@dataclass(frozen=True, slots=True)
class TensorType:
    """A tensor type with a static shape, printed as ``f32[1,16,32,32]``."""

    shape: tuple[int, ...]
    """Extent of each axis; all known and non-negative."""
    dtype: DType = DType.F32
    """Element type."""

    def __post_init__(self) -> None:
        if not all(isinstance(d, int) and d >= 0 for d in self.shape):
            raise ValueError(f"tensor shape must be non-negative ints, got {self.shape!r}")

    @property
    def rank(self) -> int:
        """Number of axes."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        n = 1
        for d in self.shape:
            n *= d
        return n

    def with_shape(self, shape: tuple[int, ...]) -> TensorType:
        """The same element type with another shape."""
        return TensorType(tuple(int(d) for d in shape), self.dtype)

    def __str__(self) -> str:
        return f"{self.dtype.value}[{','.join(str(d) for d in self.shape)}]"

    @staticmethod
    def of(array: np.ndarray) -> TensorType:
        """The type of a NumPy array."""
        return TensorType(tuple(int(d) for d in array.shape), DType.from_numpy(array.dtype))


@dataclass(frozen=True, slots=True)
class Tile:
    """One rectangle of a layer's physical weight matrix placed on one physical crossbar tile.

    Placement is data on the graph (``Graph.tiles``), not extra nodes. A layer's physical matrix
    (``rows x cols_phys`` per group) is cut into rectangles; several rectangles of different layers
    may share one physical tile when packing finds a row- or column-disjoint spot.
    """

    tile: int
    """Physical tile id (index into the chip's tile array)."""
    layer: str
    """Name of the ``XbarMVM`` node (its ``layer`` attribute) this rectangle belongs to."""
    group: int
    """Convolution group index (0 for dense layers)."""
    replica: int
    """Replica index (0 for the original; >0 for copies made by replication)."""
    row0: int
    """First row of the rectangle in the layer's physical matrix."""
    col0: int
    """First column of the rectangle in the layer's physical matrix."""
    rows: int
    """Number of rows used."""
    cols: int
    """Number of columns used."""
    trow: int = 0
    """First row inside the physical tile (non-zero only for packed tiles)."""
    tcol: int = 0
    """First column inside the physical tile (non-zero only for packed tiles)."""
    device: str = "default"
    """Name of the device model of the physical tile (``insert-periphery`` sets it)."""
