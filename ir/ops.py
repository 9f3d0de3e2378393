"""One frozen dataclass per op kind.

An op holds attributes only; its operands are the node's input values. ``infer`` maps input types
to output types and raises :class:`~xbarc.errors.VerifyError` when the inputs do not fit. Shapes
are static, so every shape-like ONNX input (``Reshape``'s shape, ``Slice``'s starts/ends, ...) is
an attribute here: the frontend folds it to a constant at import.

Ops are looked up by their printed name in :data:`OPS`, which is how the container reads a
program back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

from xbarc.errors import VerifyError
from xbarc.ir.types import DType, TensorType

AttrValue = int | float | str | bool | tuple[int, ...] | tuple[float, ...] | None

OPS: dict[str, type[Op]] = {}
"""Registry of op classes keyed by their printed name."""


def _register(cls: type[Op]) -> type[Op]:
    if cls.NAME in OPS:
        raise RuntimeError(f"op name {cls.NAME!r} registered twice")
    OPS[cls.NAME] = cls
    return cls


def _fail(op: Op, msg: str) -> VerifyError:
    return VerifyError(f"{op.NAME}: {msg}")


@dataclass(frozen=True, slots=True)
class Op:
    """Base of all op kinds: attributes only, plus the type rule ``infer``."""

    NAME: ClassVar[str] = "op"
    ARITY: ClassVar[tuple[int, int]] = (1, 1)
    """Minimum and maximum number of inputs."""

    def attrs(self) -> dict[str, AttrValue]:
        """The attributes as an ordered name -> value mapping."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def check_arity(self, ins: Sequence[TensorType]) -> None:
        """Raise ``VerifyError`` if the number of inputs is out of range."""
        lo, hi = self.ARITY
        if not lo <= len(ins) <= hi:
            want = str(lo) if lo == hi else f"{lo}..{hi}"
            raise _fail(self, f"expects {want} inputs, got {len(ins)}")

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        """Output types for the given input types."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- helpers


def broadcast_shapes(op: Op, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy broadcasting of several shapes; ``VerifyError`` if they do not broadcast."""
    rank = max(len(s) for s in shapes)
    out: list[int] = []
    for axis in range(rank):
        dims = {s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise _fail(op, f"shapes {' and '.join(str(list(s)) for s in shapes)} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _same_dtype(op: Op, ins: Sequence[TensorType]) -> DType:
    dtypes = {t.dtype for t in ins}
    if len(dtypes) != 1:
        raise _fail(op, f"mixed element types {sorted(d.value for d in dtypes)}")
    return ins[0].dtype


def _need_float(op: Op, t: TensorType) -> None:
    if not t.dtype.is_float:
        raise _fail(op, f"needs a floating-point input, got {t}")


def _axis(op: Op, axis: int, rank: int) -> None:
    if not 0 <= axis < rank:
        raise _fail(op, f"axis {axis} out of range for rank {rank}")


def window_out(size: int, k: int, stride: int, pad0: int, pad1: int, dil: int, ceil: bool) -> int:
    """Output extent of a sliding window (conv or pool) along one axis, ONNX/PyTorch rule."""
    span = size + pad0 + pad1 - dil * (k - 1) - 1
    out = (-(-span // stride) if ceil else span // stride) + 1
    # With ceil_mode the last window must start inside the input or the begin padding.
    if ceil and (out - 1) * stride >= size + pad0:
        out -= 1
    return out


# ----------------------------------------------------------------------------- elementwise


@dataclass(frozen=True, slots=True)
class Unary(Op):
    """Elementwise op on one floating-point tensor; output type = input type."""

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        _need_float(self, ins[0])
        return (ins[0],)


@_register
@dataclass(frozen=True, slots=True)
class Relu(Unary):
    """max(x, 0)."""

    NAME = "relu"


@_register
@dataclass(frozen=True, slots=True)
class LeakyRelu(Unary):
    """x if x >= 0 else alpha*x."""

    NAME = "leaky_relu"
    alpha: float = 0.01


@_register
@dataclass(frozen=True, slots=True)
class Sigmoid(Unary):
    """1 / (1 + exp(-x))."""

    NAME = "sigmoid"


@_register
@dataclass(frozen=True, slots=True)
class HardSigmoid(Unary):
    """clip(alpha*x + beta, 0, 1)."""

    NAME = "hard_sigmoid"
    alpha: float = 0.2
    beta: float = 0.5


@_register
@dataclass(frozen=True, slots=True)
class HardSwish(Unary):
    """x * clip(x/6 + 1/2, 0, 1)."""

    NAME = "hard_swish"


@_register
@dataclass(frozen=True, slots=True)
class Tanh(Unary):
    """tanh(x)."""

    NAME = "tanh"


@_register
@dataclass(frozen=True, slots=True)
class Gelu(Unary):
    """x * Phi(x), exact (``approximate="none"``) or the tanh approximation."""

    NAME = "gelu"
    approximate: str = "none"


@_register
@dataclass(frozen=True, slots=True)
class Erf(Unary):
    """The error function."""

    NAME = "erf"


@_register
@dataclass(frozen=True, slots=True)
class Sqrt(Unary):
    """Square root."""

    NAME = "sqrt"


@_register
@dataclass(frozen=True, slots=True)
class Exp(Unary):
    """exp(x)."""

    NAME = "exp"


@_register
@dataclass(frozen=True, slots=True)
class Log(Unary):
    """Natural logarithm."""

    NAME = "log"


@_register
@dataclass(frozen=True, slots=True)
class Neg(Unary):
    """-x."""

    NAME = "neg"


@_register
@dataclass(frozen=True, slots=True)
class Abs(Unary):
    """|x|."""

    NAME = "abs"


@_register
@dataclass(frozen=True, slots=True)
class Reciprocal(Unary):
    """1/x."""

    NAME = "reciprocal"


@_register
@dataclass(frozen=True, slots=True)
class Softplus(Unary):
    """log(1 + exp(x))."""

    NAME = "softplus"


@_register
@dataclass(frozen=True, slots=True)
class Clip(Unary):
    """clip(x, min, max); ``None`` means unbounded on that side."""

    NAME = "clip"
    min: float | None = None
    max: float | None = None


@_register
@dataclass(frozen=True, slots=True)
class Identity(Op):
    """x, any element type (canonicalize removes it)."""

    NAME = "identity"

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        return (ins[0],)


@_register
@dataclass(frozen=True, slots=True)
class Dropout(Op):
    """Inference-mode dropout: x unchanged (canonicalize removes it)."""

    NAME = "dropout"
    ratio: float = 0.5

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        return (ins[0],)


@_register
@dataclass(frozen=True, slots=True)
class Cast(Op):
    """Convert to element type ``to``."""

    NAME = "cast"
    to: str = "f32"

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        try:
            dtype = DType(self.to)
        except ValueError:
            raise _fail(self, f"unknown element type {self.to!r}") from None
        return (TensorType(ins[0].shape, dtype),)


@_register
@dataclass(frozen=True, slots=True)
class Not(Op):
    """Logical not of a bool tensor."""

    NAME = "not"

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        if ins[0].dtype is not DType.BOOL:
            raise _fail(self, f"needs a bool input, got {ins[0]}")
        return (ins[0],)


@dataclass(frozen=True, slots=True)
class Binary(Op):
    """Broadcasting elementwise op on two tensors of one element type."""

    ARITY = (2, 2)

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        dtype = _same_dtype(self, ins)
        return (TensorType(broadcast_shapes(self, ins[0].shape, ins[1].shape), dtype),)


@_register
@dataclass(frozen=True, slots=True)
class Add(Binary):
    """a + b."""

    NAME = "add"


@_register
@dataclass(frozen=True, slots=True)
class Sub(Binary):
    """a - b."""

    NAME = "sub"


@_register
@dataclass(frozen=True, slots=True)
class Mul(Binary):
    """a * b."""

    NAME = "mul"


@_register
@dataclass(frozen=True, slots=True)
class Div(Binary):
    """a / b (integer division truncates toward zero, as in ONNX)."""

    NAME = "div"


@_register
@dataclass(frozen=True, slots=True)
class Pow(Op):
    """a ** b; the result has a's element type (b may differ, as in ONNX)."""

    NAME = "pow"
    ARITY = (2, 2)

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        return (TensorType(broadcast_shapes(self, ins[0].shape, ins[1].shape), ins[0].dtype),)


@_register
@dataclass(frozen=True, slots=True)
class Max(Binary):
    """Elementwise maximum."""

    NAME = "max"


@_register
@dataclass(frozen=True, slots=True)
class Min(Binary):
    """Elementwise minimum."""

    NAME = "min"


@dataclass(frozen=True, slots=True)
class Compare(Binary):
    """Broadcasting comparison; the result is bool."""

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        (t,) = Binary.infer(self, ins)
        return (TensorType(t.shape, DType.BOOL),)


@_register
@dataclass(frozen=True, slots=True)
class Equal(Compare):
    """a == b."""

    NAME = "equal"


@_register
@dataclass(frozen=True, slots=True)
class Less(Compare):
    """a < b."""

    NAME = "less"


@_register
@dataclass(frozen=True, slots=True)
class Greater(Compare):
    """a > b."""

    NAME = "greater"


@_register
@dataclass(frozen=True, slots=True)
class Where(Op):
    """cond ? a : b with three-way broadcasting."""

    NAME = "where"
    ARITY = (3, 3)

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        if ins[0].dtype is not DType.BOOL:
            raise _fail(self, f"condition must be bool, got {ins[0]}")
        dtype = _same_dtype(self, ins[1:])
        return (TensorType(broadcast_shapes(self, *(t.shape for t in ins)), dtype),)


# ----------------------------------------------------------------------------- linear algebra


def matmul_shape(op: Op, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """Result shape of NumPy/ONNX ``matmul`` (1-D operands promoted, batch dims broadcast)."""
    if not a or not b:
        raise _fail(op, "operands must have rank >= 1")
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise _fail(op, f"inner dimensions differ: {list(a)} @ {list(b)}")
    batch = broadcast_shapes(op, a2[:-2], b2[:-2])
    out = (*batch, a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


@_register
@dataclass(frozen=True, slots=True)
class MatMul(Op):
    """a @ b with NumPy semantics (weight x activation or activation x activation)."""

    NAME = "matmul"
    ARITY = (2, 2)

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        dtype = _same_dtype(self, ins)
        return (TensorType(matmul_shape(self, ins[0].shape, ins[1].shape), dtype),)


@_register
@dataclass(frozen=True, slots=True)
class Gemm(Op):
    """alpha * op(A) @ op(B) + beta * C with op = optional transpose; A and B are 2-D."""

    NAME = "gemm"
    ARITY = (2, 3)
    alpha: float = 1.0
    beta: float = 1.0
    trans_a: bool = False
    trans_b: bool = False

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        dtype = _same_dtype(self, ins)
        a, b = ins[0].shape, ins[1].shape
        if len(a) != 2 or len(b) != 2:
            raise _fail(self, f"A and B must be 2-D, got {list(a)} and {list(b)}")
        m, k = (a[1], a[0]) if self.trans_a else a
        k2, n = (b[1], b[0]) if self.trans_b else b
        if k != k2:
            raise _fail(self, f"inner dimensions differ: {k} vs {k2}")
        if len(ins) == 3:
            out = broadcast_shapes(self, (m, n), ins[2].shape)
            if out != (m, n):
                raise _fail(self, f"C of shape {list(ins[2].shape)} does not broadcast to {[m, n]}")
        return (TensorType((m, n), dtype),)


@_register
@dataclass(frozen=True, slots=True)
class Linear(Op):
    """``x @ w (+ b)`` with a 2-D weight ``w[K, N]`` applied to the last axis of ``x[..., K]``.

    ``canonicalize`` turns Gemm and MatMul(+Add) with constant weights into this form.
    """

    NAME = "linear"
    ARITY = (2, 3)

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        dtype = _same_dtype(self, ins)
        x, w = ins[0].shape, ins[1].shape
        if len(w) != 2 or not x or x[-1] != w[0]:
            raise _fail(self, f"input {list(x)} does not fit weight {list(w)}")
        if len(ins) == 3 and ins[2].shape != (w[1],):
            raise _fail(self, f"bias must have shape [{w[1]}], got {list(ins[2].shape)}")
        return (TensorType((*x[:-1], w[1]), dtype),)


def _conv_like_out(
    op: Op,
    x: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    pads: tuple[int, ...],
    dilations: tuple[int, ...],
    ceil: bool = False,
) -> tuple[int, ...]:
    nsp = len(x) - 2
    if nsp < 1:
        raise _fail(op, f"input must have rank >= 3, got {list(x)}")
    if not (len(kernel) == len(strides) == len(dilations) == nsp and len(pads) == 2 * nsp):
        raise _fail(op, f"attribute lengths do not match {nsp} spatial axes")
    if min(strides) < 1 or min(dilations) < 1 or min(kernel) < 1 or min(pads) < 0:
        raise _fail(op, "strides, dilations and kernel must be >= 1 and pads >= 0")
    out = []
    for i in range(nsp):
        o = window_out(x[2 + i], kernel[i], strides[i], pads[i], pads[i + nsp], dilations[i], ceil)
        if o < 1:
            raise _fail(op, f"window does not fit spatial axis {i} of input {list(x)}")
        out.append(o)
    return tuple(out)


@_register
@dataclass(frozen=True, slots=True)
class Conv(Op):
    """N-D convolution, NCHW, weight (Cout, Cin/group, *kernel), optional bias (Cout)."""

    NAME = "conv"
    ARITY = (2, 3)
    strides: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)
    """Begin pads of every spatial axis, then end pads (ONNX order)."""
    dilations: tuple[int, ...] = (1, 1)
    group: int = 1

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        dtype = _same_dtype(self, ins)
        x, w = ins[0].shape, ins[1].shape
        if len(w) != len(x):
            raise _fail(self, f"weight rank {len(w)} differs from input rank {len(x)}")
        if len(x) < 3:
            raise _fail(self, f"input must have rank >= 3, got {list(x)}")
        if self.group < 1 or x[1] != w[1] * self.group or w[0] % self.group:
            raise _fail(
                self, f"channels do not fit group={self.group}: input {list(x)}, weight {list(w)}"
            )
        if len(ins) == 3 and ins[2].shape != (w[0],):
            raise _fail(self, f"bias must have shape [{w[0]}], got {list(ins[2].shape)}")
        sp = _conv_like_out(self, x, w[2:], self.strides, self.pads, self.dilations)
        return (TensorType((x[0], w[0], *sp), dtype),)


@_register
@dataclass(frozen=True, slots=True)
class BatchNorm(Op):
    """Inference batch normalisation over axis 1: (x - mean) / sqrt(var + eps) * scale + bias."""

    NAME = "batch_norm"
    ARITY = (5, 5)
    epsilon: float = 1e-5

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        _need_float(self, ins[0])
        if ins[0].rank < 2:
            raise _fail(self, f"input must have rank >= 2, got {ins[0]}")
        c = ins[0].shape[1]
        for t in ins[1:]:
            if t.shape != (c,):
                raise _fail(self, f"parameters must have shape [{c}], got {t}")
        return (ins[0],)


@_register
@dataclass(frozen=True, slots=True)
class LayerNorm(Op):
    """Normalise over axes ``axis..rank-1``, then scale and optional bias."""

    NAME = "layer_norm"
    ARITY = (2, 3)
    axis: int = -1
    epsilon: float = 1e-5

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        x = ins[0]
        _need_float(self, x)
        if not -x.rank <= self.axis < x.rank:
            raise _fail(self, f"axis {self.axis} out of range for rank {x.rank}")
        norm = x.shape[self.axis % x.rank :]
        for t in ins[1:]:
            if broadcast_shapes(self, norm, t.shape) != norm:
                raise _fail(self, f"parameter {t} does not broadcast to {list(norm)}")
        return (x,)


@_register
@dataclass(frozen=True, slots=True)
class Softmax(Op):
    """exp(x) / sum(exp(x)) along ``axis``."""

    NAME = "softmax"
    axis: int = -1

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        _need_float(self, ins[0])
        if not -ins[0].rank <= self.axis < ins[0].rank:
            raise _fail(self, f"axis {self.axis} out of range for rank {ins[0].rank}")
        return (ins[0],)


@_register
@dataclass(frozen=True, slots=True)
class LogSoftmax(Softmax):
    """log(softmax(x)) along ``axis``."""

    NAME = "log_softmax"


# ----------------------------------------------------------------------------- reductions, pools


@dataclass(frozen=True, slots=True)
class Reduce(Op):
    """Reduction over ``axes`` (sorted, non-negative)."""

    axes: tuple[int, ...] = ()
    keepdims: bool = True

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        x = ins[0]
        for a in self.axes:
            _axis(self, a, x.rank)
        if list(self.axes) != sorted(set(self.axes)):
            raise _fail(self, f"axes must be sorted and unique, got {list(self.axes)}")
        shape = [1 if i in self.axes else d for i, d in enumerate(x.shape)]
        if not self.keepdims:
            shape = [d for i, d in enumerate(x.shape) if i not in self.axes]
        return (x.with_shape(tuple(shape)),)


@_register
@dataclass(frozen=True, slots=True)
class ReduceMean(Reduce):
    """Mean over axes."""

    NAME = "reduce_mean"


@_register
@dataclass(frozen=True, slots=True)
class ReduceSum(Reduce):
    """Sum over axes."""

    NAME = "reduce_sum"


@_register
@dataclass(frozen=True, slots=True)
class ReduceMax(Reduce):
    """Maximum over axes."""

    NAME = "reduce_max"


@_register
@dataclass(frozen=True, slots=True)
class MaxPool(Op):
    """Max pooling over the spatial axes of an NC... tensor (padding counts as -inf)."""

    NAME = "max_pool"
    kernel: tuple[int, ...] = (2, 2)
    strides: tuple[int, ...] = (2, 2)
    pads: tuple[int, ...] = (0, 0, 0, 0)
    dilations: tuple[int, ...] = (1, 1)
    ceil_mode: bool = False

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        x = ins[0]
        _need_float(self, x)
        sp = _conv_like_out(
            self, x.shape, self.kernel, self.strides, self.pads, self.dilations, self.ceil_mode
        )
        return (x.with_shape((*x.shape[:2], *sp)),)


@_register
@dataclass(frozen=True, slots=True)
class AveragePool(Op):
    """Average pooling; padded cells count in the divisor only with ``count_include_pad``."""

    NAME = "average_pool"
    kernel: tuple[int, ...] = (2, 2)
    strides: tuple[int, ...] = (2, 2)
    pads: tuple[int, ...] = (0, 0, 0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = False

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        x = ins[0]
        _need_float(self, x)
        ones = (1,) * len(self.kernel)
        sp = _conv_like_out(
            self, x.shape, self.kernel, self.strides, self.pads, ones, self.ceil_mode
        )
        return (x.with_shape((*x.shape[:2], *sp)),)


@_register
@dataclass(frozen=True, slots=True)
class GlobalAveragePool(Op):
    """Mean over all spatial axes, kept as size-1 axes."""

    NAME = "global_average_pool"

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        x = ins[0]
        _need_float(self, x)
        if x.rank < 3:
            raise _fail(self, f"input must have rank >= 3, got {x}")
        return (x.with_shape((*x.shape[:2], *(1,) * (x.rank - 2))),)


@_register
@dataclass(frozen=True, slots=True)
class GlobalMaxPool(GlobalAveragePool):
    """Maximum over all spatial axes, kept as size-1 axes."""

    NAME = "global_max_pool"


# ----------------------------------------------------------------------------- data movement


@_register
@dataclass(frozen=True, slots=True)
class Reshape(Op):
    """Reinterpret the elements with an explicit static ``shape`` (no 0 or -1 left)."""

    NAME = "reshape"
    shape: tuple[int, ...] = ()

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        if min(self.shape, default=0) < 0:
            raise _fail(self, f"target shape {list(self.shape)} has a negative extent")
        out = ins[0].with_shape(self.shape)
        if out.size != ins[0].size:
            raise _fail(self, f"cannot reshape {ins[0]} to {list(self.shape)}")
        return (out,)


@_register
@dataclass(frozen=True, slots=True)
class Transpose(Op):
    """Permute axes: output axis i is input axis ``perm[i]``."""

    NAME = "transpose"
    perm: tuple[int, ...] = ()

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        x = ins[0]
        if sorted(self.perm) != list(range(x.rank)):
            raise _fail(self, f"perm {list(self.perm)} is not a permutation of rank {x.rank}")
        return (x.with_shape(tuple(x.shape[p] for p in self.perm)),)


@_register
@dataclass(frozen=True, slots=True)
class Concat(Op):
    """Join tensors along ``axis``."""

    NAME = "concat"
    ARITY = (1, 1 << 16)
    axis: int = 0

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        dtype = _same_dtype(self, ins)
        first = ins[0].shape
        _axis(self, self.axis, len(first))
        total = 0
        for t in ins:
            rest = t.shape[: self.axis] + t.shape[self.axis + 1 :]
            if len(t.shape) != len(first) or rest != first[: self.axis] + first[self.axis + 1 :]:
                raise _fail(self, f"shapes {list(first)} and {list(t.shape)} differ off the axis")
            total += t.shape[self.axis]
        out = list(first)
        out[self.axis] = total
        return (TensorType(tuple(out), dtype),)


@_register
@dataclass(frozen=True, slots=True)
class Gather(Op):
    """Take entries of ``data`` along ``axis`` at integer ``indices`` (negative wrap)."""

    NAME = "gather"
    ARITY = (2, 2)
    axis: int = 0

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        data, idx = ins
        _axis(self, self.axis, data.rank)
        if idx.dtype not in (DType.I32, DType.I64):
            raise _fail(self, f"indices must be i32 or i64, got {idx}")
        shape = data.shape[: self.axis] + idx.shape + data.shape[self.axis + 1 :]
        return (data.with_shape(shape),)


def slice_range(dim: int, start: int, end: int, step: int) -> range:
    """The indices ONNX ``Slice`` selects on an axis of extent ``dim``."""
    # Not Python's slice.indices: with a negative step ONNX clamps a start below -dim to 0
    # (the first element), where Python would select nothing.
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return range(min(max(start, 0), dim), min(max(end, 0), dim), step)
    return range(min(max(start, 0), dim - 1), min(max(end, -1), dim - 1), step)


@_register
@dataclass(frozen=True, slots=True)
class Slice(Op):
    """Strided slice with ONNX clamping on the listed axes."""

    NAME = "slice"
    starts: tuple[int, ...] = ()
    ends: tuple[int, ...] = ()
    axes: tuple[int, ...] = ()
    steps: tuple[int, ...] = ()

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        x = ins[0]
        n = len(self.axes)
        if not len(self.starts) == len(self.ends) == len(self.steps) == n:
            raise _fail(self, "starts, ends, axes and steps differ in length")
        shape = list(x.shape)
        for s, e, a, st in zip(self.starts, self.ends, self.axes, self.steps, strict=True):
            _axis(self, a, x.rank)
            if st == 0:
                raise _fail(self, "step 0")
            shape[a] = len(slice_range(x.shape[a], s, e, st))
        return (x.with_shape(tuple(shape)),)


@_register
@dataclass(frozen=True, slots=True)
class Split(Op):
    """Cut along ``axis`` into pieces of the given ``sizes`` (one output each)."""

    NAME = "split"
    axis: int = 0
    sizes: tuple[int, ...] = ()

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        x = ins[0]
        _axis(self, self.axis, x.rank)
        if sum(self.sizes) != x.shape[self.axis] or min(self.sizes, default=-1) < 0:
            raise _fail(self, f"sizes {list(self.sizes)} do not split axis of {x.shape[self.axis]}")
        outs = []
        for s in self.sizes:
            shape = list(x.shape)
            shape[self.axis] = s
            outs.append(x.with_shape(tuple(shape)))
        return tuple(outs)


@_register
@dataclass(frozen=True, slots=True)
class Expand(Op):
    """Broadcast to ``shape`` (bidirectional, as ONNX Expand)."""

    NAME = "expand"
    shape: tuple[int, ...] = ()

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        if min(self.shape, default=0) < 0:
            raise _fail(self, f"target shape {list(self.shape)} has a negative extent")
        return (ins[0].with_shape(broadcast_shapes(self, ins[0].shape, self.shape)),)


@_register
@dataclass(frozen=True, slots=True)
class Pad(Op):
    """Pad with begin pads of every axis then end pads; mode constant, reflect or edge."""

    NAME = "pad"
    pads: tuple[int, ...] = ()
    mode: str = "constant"
    value: float = 0.0

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        x = ins[0]
        if len(self.pads) != 2 * x.rank:
            raise _fail(self, f"needs {2 * x.rank} pads, got {len(self.pads)}")
        if self.mode not in ("constant", "reflect", "edge"):
            raise _fail(self, f"unknown mode {self.mode!r}")
        shape = tuple(d + self.pads[i] + self.pads[i + x.rank] for i, d in enumerate(x.shape))
        if min(shape, default=0) < 0:
            raise _fail(self, f"pads {list(self.pads)} give a negative extent")
        return (x.with_shape(shape),)


RESIZE_MODES = ("nearest", "linear")
RESIZE_COORDS = (
    "half_pixel",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "half_pixel_symmetric",
)
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


@_register
@dataclass(frozen=True, slots=True)
class Resize(Op):
    """Resize to ``sizes`` by nearest or linear interpolation, axis by axis (ONNX ``Resize``).

    ``scales`` is the factor per axis that the coordinate transform divides by: the given scale,
    or ``sizes / input`` (in float32) when the model gave sizes. An output index ``i`` maps to
    the input coordinate ``coord(i)``; ``linear`` blends its two neighbours (the coordinate
    clamped to the input), ``nearest`` rounds it with ``nearest_mode``.
    """

    NAME = "resize"
    sizes: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()
    mode: str = "nearest"
    """``nearest`` or ``linear``."""
    coord: str = "half_pixel"
    """Coordinate transformation mode (:data:`RESIZE_COORDS`)."""
    nearest_mode: str = "round_prefer_floor"
    """Rounding of ``nearest`` (:data:`NEAREST_MODES`)."""

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        x = ins[0]
        _need_float(self, x)
        if len(self.sizes) != x.rank or len(self.scales) != x.rank:
            raise _fail(self, f"sizes and scales need {x.rank} entries for {x}")
        if min(self.sizes, default=1) < 1 or min(self.scales, default=1.0) <= 0:
            raise _fail(self, f"sizes {list(self.sizes)} and scales must be positive")
        if self.mode not in RESIZE_MODES:
            raise _fail(self, f"unknown mode {self.mode!r}")
        if self.coord not in RESIZE_COORDS:
            raise _fail(self, f"unknown coordinate transformation {self.coord!r}")
        if self.nearest_mode not in NEAREST_MODES:
            raise _fail(self, f"unknown nearest mode {self.nearest_mode!r}")
        return (x.with_shape(self.sizes),)


@_register
@dataclass(frozen=True, slots=True)
class Fill(Op):
    """A tensor of ``shape`` filled with ``value`` (a constant whose shape follows the batch)."""

    NAME = "fill"
    ARITY = (0, 0)
    shape: tuple[int, ...] = ()
    value: float = 0.0
    dtype: str = "f32"

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        try:
            dtype = DType(self.dtype)
        except ValueError:
            raise _fail(self, f"unknown element type {self.dtype!r}") from None
        if min(self.shape, default=0) < 0:
            raise _fail(self, f"negative extent in {list(self.shape)}")
        return (TensorType(self.shape, dtype),)


# ----------------------------------------------------------------------------- crossbar


@_register
@dataclass(frozen=True, slots=True)
class XbarMVM(Op):
    """Matrix-vector products on crossbar tiles: ``y = x @ W (+ b)``, ``W`` a constant.

    Inputs are the activation ``x``, the logical weight ``w`` (a constant of shape
    ``[groups, R, C]``) and an optional digital bias ``b``. ``kind="linear"`` maps ``x[..., R]`` to
    ``y[..., C]`` (one MVM per leading index). ``kind="conv"`` maps ``x[N, Cin, H, W]`` to
    ``y[N, groups*C, Ho, Wo]`` with im2col: row ``r`` of group ``g`` is input channel
    ``g*Cin/groups + r // (kh*kw)`` at kernel offset ``r % (kh*kw)``; one MVM per output pixel
    and group. Mapping, periphery and device fields are filled in by later passes.
    """

    NAME = "xbar.mvm"
    ARITY = (2, 3)
    layer: str = ""
    """Unique name of this crossbar layer; ``Graph.tiles`` refers to it."""
    kind: str = "linear"
    """``linear`` or ``conv``."""
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    weight_bits: int = 0
    """Weight precision; 0 keeps analog (unquantised) weights."""
    cell_bits: int = 0
    """Bits stored per cell when ``weight_bits > 0``."""
    slices: int = 1
    """Number of bit slices each weight spans."""
    signing: str = "differential"
    """``differential`` (G+, G- column pair) or ``offset`` (one column, digital offset)."""
    replicas: int = 1
    """Copies of the layer on the chip (replication for pipeline balance)."""
    dac_bits: int = 0
    """Input DAC resolution; 0 means ideal (no quantisation)."""
    adc_bits: int = 0
    """Output ADC resolution per column; 0 means ideal."""

    def infer(self, ins: Sequence[TensorType]) -> tuple[TensorType, ...]:
        self.check_arity(ins)
        dtype = _same_dtype(self, ins)
        x, w = ins[0].shape, ins[1].shape
        if len(w) != 3:
            raise _fail(self, f"weight must be [groups, R, C], got {list(w)}")
        groups, rows, cols = w
        if len(ins) == 3 and ins[2].shape != (groups * cols,):
            raise _fail(self, f"bias must have shape [{groups * cols}], got {list(ins[2].shape)}")
        if self.kind == "linear":
            if groups != 1 or not x or x[-1] != rows:
                raise _fail(self, f"linear input {list(x)} does not fit weight {list(w)}")
            return (TensorType((*x[:-1], cols), dtype),)
        if self.kind != "conv":
            raise _fail(self, f"unknown kind {self.kind!r}")
        kk = math.prod(self.kernel)
        if (
            len(x) != 2 + len(self.kernel)
            or groups < 1
            or x[1] % groups
            or rows != kk * x[1] // groups
        ):
            raise _fail(self, f"conv input {list(x)} does not fit weight {list(w)}")
        sp = _conv_like_out(self, x, self.kernel, self.strides, self.pads, self.dilations)
        return (TensorType((x[0], groups * cols, *sp), dtype),)
