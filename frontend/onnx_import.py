"""ONNX → xbarc IR.

``load_onnx(path, batch=N)`` reads a model (embedded or external-data weights), runs
``onnx.checker`` and ONNX shape inference, upgrades ancient opsets with
``onnx.version_converter``, then lowers every node through :data:`LOWER`, a table keyed by ONNX
op type. Shapes are static: a symbolic batch axis becomes ``batch``; shape-computing subgraphs
(``Shape → Gather → Concat → Reshape``) fold to constants and end up as op attributes.

The graph stays rebindable to other batch sizes: the model is lowered twice, at ``batch`` and
``batch + 1``, and every integer attribute that differs between the two is recorded in
``Node.batch_coef`` (shape arithmetic in exported models is affine in the batch size).

Every problem raises :class:`~xbarc.errors.FrontendError` with one line naming the file, node,
op type, opset and attribute.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.inliner
import onnx.version_converter
from onnx import numpy_helper

from xbarc.errors import FrontendError, InterpError, VerifyError
from xbarc.ir import interp
from xbarc.ir import ops as O
from xbarc.ir.core import Graph, Node, Value, make_const
from xbarc.ir.types import DType, TensorType

MIN_OPSET = 7
"""Oldest default-domain opset accepted; older models are upgraded to :data:`UPGRADE_TO`."""
UPGRADE_TO = 13
MAX_OPSET = 23
"""Newest opset whose semantics the lowerings implement; newer models are converted down."""
FOLD_LIMIT = 4096
"""Nodes whose inputs are all constant fold at import when the result is at most this many
elements (shape arithmetic); larger constant expressions are left to ``canonicalize``."""

_ONNX_DTYPES: dict[int, DType] = {
    onnx.TensorProto.FLOAT: DType.F32,
    onnx.TensorProto.DOUBLE: DType.F64,
    onnx.TensorProto.FLOAT16: DType.F16,
    onnx.TensorProto.INT64: DType.I64,
    onnx.TensorProto.INT32: DType.I32,
    onnx.TensorProto.INT8: DType.I8,
    onnx.TensorProto.UINT8: DType.U8,
    onnx.TensorProto.BOOL: DType.BOOL,
}
_SHAPE_OPS = {"Shape", "Size", "ConstantOfShape", "Range", "Constant"}


# ----------------------------------------------------------------------------- loading


@dataclass
class _Model:
    """A parsed, checked model with its initializers as NumPy arrays."""

    path: str
    proto: onnx.ModelProto
    opset: int
    weights: dict[str, np.ndarray]


def _fail(path: str, msg: str) -> FrontendError:
    return FrontendError(f"{path}: {msg}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


def _read(path: str) -> _Model:
    p = Path(path)
    if not p.exists():
        raise _fail(path, "no such file")
    if not p.is_file():
        raise _fail(path, "not a regular file")
    if not os.access(p, os.R_OK):
        raise _fail(path, "permission denied")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise _fail(path, f"not a readable ONNX model ({_first_line(e)})") from e
    if not proto.HasField("graph") or not proto.opset_import:
        raise _fail(path, "not an ONNX model (no graph or no opset_import)")
    try:
        onnx.checker.check_model(str(p))
    except Exception as e:
        raise _fail(path, f"invalid ONNX model: {_first_line(e)}") from e
    opset = _default_opset(proto)
    if opset is None:
        raise _fail(path, "model imports no default-domain (ai.onnx) opset")
    if opset < MIN_OPSET:
        raise _fail(path, f"opset {opset} is older than {MIN_OPSET}; re-export the model")
    if opset > MAX_OPSET:
        # newer opsets (24+) mostly add element types; ONNX's converter takes them back to
        # MAX_OPSET, the semantics xbarc implements, or says why it cannot
        known = onnx.defs.onnx_opset_version()
        if opset > known:
            raise _fail(
                path,
                f"opset {opset} is newer than the installed onnx {onnx.__version__} knows "
                f"({known}); xbarc supports up to {MAX_OPSET}",
            )
        try:
            proto = onnx.version_converter.convert_version(proto, MAX_OPSET)
        except Exception as e:
            raise _fail(
                path,
                f"opset {opset} is newer than the newest supported ({MAX_OPSET}) and cannot "
                f"be converted to it: {_first_line(e)}",
            ) from e
        opset = MAX_OPSET
    if proto.functions:
        try:
            proto = onnx.inliner.inline_local_functions(proto)
        except Exception as e:
            raise _fail(path, f"cannot inline local functions: {_first_line(e)}") from e
    if opset < 11:
        try:
            proto = onnx.version_converter.convert_version(proto, UPGRADE_TO)
        except Exception as e:
            raise _fail(
                path, f"cannot upgrade opset {opset} to {UPGRADE_TO}: {_first_line(e)}"
            ) from e
        opset = UPGRADE_TO
    weights = _load_weights(path, p.parent, proto)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception as e:
        raise _fail(path, f"ONNX shape inference failed: {_first_line(e)}") from e
    return _Model(path, proto, opset, weights)


def _default_opset(proto: onnx.ModelProto) -> int | None:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def _load_weights(path: str, base: Path, proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers as read-only arrays; large ones leave the proto to keep memory flat.

    External-data tensors are memory-mapped (no copy); embedded ones are converted and their
    bytes dropped from the proto, so shape inference runs on a light model.
    """
    weights: dict[str, np.ndarray] = {}
    for t in proto.graph.initializer:
        if not t.name:
            continue
        if t.data_location == onnx.TensorProto.EXTERNAL:
            arr = _map_external(path, base, t)
        else:
            try:
                arr = numpy_helper.to_array(t)
            except Exception as e:
                raise _fail(path, f"initializer {t.name!r}: {_first_line(e)}") from e
        if t.data_type not in _ONNX_DTYPES:
            name = onnx.TensorProto.DataType.Name(t.data_type)
            raise _fail(path, f"initializer {t.name!r} has unsupported element type {name}")
        arr = np.asarray(arr)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        arr.flags.writeable = False
        weights[t.name] = arr
        if arr.size > FOLD_LIMIT and t.data_location != onnx.TensorProto.EXTERNAL:
            t.ClearField("raw_data")
            for fld in ("float_data", "int32_data", "int64_data", "double_data"):
                t.ClearField(fld)
    return weights


def _map_external(path: str, base: Path, t: onnx.TensorProto) -> np.ndarray:
    info = {e.key: e.value for e in t.external_data}
    loc = info.get("location", "")
    target = (base / loc).resolve()
    if not loc or os.path.isabs(loc) or ".." in Path(loc).parts:
        raise _fail(path, f"initializer {t.name!r}: unsafe external data location {loc!r}")
    if t.data_type not in _ONNX_DTYPES:
        name = onnx.TensorProto.DataType.Name(t.data_type)
        raise _fail(path, f"initializer {t.name!r} has unsupported element type {name}")
    dtype = _ONNX_DTYPES[t.data_type].numpy
    shape = tuple(int(d) for d in t.dims)
    offset = int(info.get("offset", 0))
    nbytes = math.prod(shape) * dtype.itemsize
    if not target.is_file():
        raise _fail(path, f"initializer {t.name!r}: external data file {loc!r} not found")
    if offset < 0 or offset + nbytes > target.stat().st_size:
        raise _fail(path, f"initializer {t.name!r}: external data {loc!r} is too short")
    if nbytes == 0:
        return np.zeros(shape, dtype)
    return np.memmap(target, dtype=dtype, mode="r", offset=offset, shape=shape)


# ----------------------------------------------------------------------------- lowering context


@dataclass
class _Ctx:
    """State of one lowering pass over the model."""

    model: _Model
    batch: int
    g: Graph
    env: dict[str, Value] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    tainted: set[int] = field(default_factory=set)
    """Constants computed from the shape of a run-time value (they may follow the batch)."""
    node: onnx.NodeProto | None = None
    node_name: str = ""

    @property
    def opset(self) -> int:
        return self.model.opset

    def err(self, msg: str) -> FrontendError:
        """An error naming the file, the current node, its op type and the opset."""
        assert self.node is not None
        return FrontendError(
            f"{self.model.path}: node {self.node_name!r} ({self.node.op_type}, opset {self.opset})"
            f": {msg}"
        )

    def attr(self, name: str, default: Any = None) -> Any:
        assert self.node is not None
        for a in self.node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def inp(self, i: int) -> Value | None:
        """Operand ``i`` of the current node, or None if absent/empty."""
        assert self.node is not None
        if i >= len(self.node.input) or not self.node.input[i]:
            return None
        name = self.node.input[i]
        if name not in self.env:
            raise self.err(f"input {name!r} is not defined")
        return self.env[name]

    def need(self, i: int) -> Value:
        v = self.inp(i)
        if v is None:
            raise self.err(f"input {i} is required")
        return v

    def const(self, i: int, what: str) -> np.ndarray | None:
        """The data of optional operand ``i``, which must be a constant."""
        v = self.inp(i)
        if v is None:
            return None
        if v.const is None:
            raise self.err(
                f"input {i} ({what}) is computed at run time; xbarc needs it constant "
                "(static shapes)"
            )
        return v.const

    def ints(self, i: int, what: str) -> tuple[int, ...] | None:
        c = self.const(i, what)
        return None if c is None else tuple(int(x) for x in np.asarray(c).reshape(-1))

    def emit(self, op: O.Op, inputs: Sequence[Value], *, fold: bool = True) -> list[Value]:
        """Add a node (or fold it when all inputs are small constants)."""
        try:
            types = op.infer([v.type for v in inputs])
        except VerifyError as e:
            raise self.err(str(e)) from None
        if fold and inputs and all(v.is_const for v in inputs):
            assert self.node is not None
            # Operands consumed as attributes (shape, starts, ...) count too.
            onnx_ins = [self.env[n] for n in self.node.input if n in self.env]
            taint = any(id(v) in self.tainted for v in (*inputs, *onnx_ins))
            small = all(t.size <= FOLD_LIMIT for t in types)
            # Integer results are shape arithmetic: fold them even when they follow the batch
            # (they end up as attributes, rebound via batch_coef). Float results that follow
            # the batch stay nodes so they can be rebound.
            if small and (not taint or all(not t.dtype.is_float for t in types)):
                probe = Node(op, list(inputs), [Value(t) for t in types], self.node_name)
                try:
                    arrays = interp.eval_node(probe, [v.const for v in inputs])  # type: ignore[misc]
                except InterpError as e:
                    raise self.err(str(e)) from None
                outs = [make_const(a) for a in arrays]
                if taint:
                    self.tainted.update(id(v) for v in outs)
                return outs
        name = self.node_name
        k = 1
        while name in self.names:
            k += 1
            name = f"{self.node_name}_{k}"
        self.names.add(name)
        return list(self.g.add(op, inputs, name).outputs)

    @property
    def node_op(self) -> str:
        assert self.node is not None
        return self.node.op_type


Lowering = Callable[[_Ctx], Sequence[Value | None]]
LOWER: dict[str, Lowering] = {}
"""ONNX op type → lowering function returning one value per ONNX output (None = unsupported)."""


def lower(*op_types: str) -> Callable[[Lowering], Lowering]:
    """Register a lowering for ONNX ``op_types``."""

    def deco(fn: Lowering) -> Lowering:
        for t in op_types:
            LOWER[t] = fn
        return fn

    return deco


def _axis(c: _Ctx, axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise c.err(f"attribute axis={axis} out of range for rank {rank}")
    return axis % rank if rank else 0


def _axes(c: _Ctx, axes: Sequence[int], rank: int) -> tuple[int, ...]:
    out = sorted({_axis(c, a, rank) for a in axes})
    if len(out) != len(axes):
        raise c.err(f"repeated axes {list(axes)}")
    return tuple(out)


# ----------------------------------------------------------------------------- elementwise


_SIMPLE_UNARY: dict[str, type[O.Op]] = {
    "Relu": O.Relu,
    "Sigmoid": O.Sigmoid,
    "Tanh": O.Tanh,
    "Erf": O.Erf,
    "Sqrt": O.Sqrt,
    "Exp": O.Exp,
    "Log": O.Log,
    "Neg": O.Neg,
    "Abs": O.Abs,
    "Reciprocal": O.Reciprocal,
    "Softplus": O.Softplus,
    "HardSwish": O.HardSwish,
    "Not": O.Not,
    "Identity": O.Identity,
}


@lower(*_SIMPLE_UNARY)
def _l_unary(c: _Ctx) -> list[Value]:
    return c.emit(_SIMPLE_UNARY[c.node_op](), [c.need(0)])


@lower("LeakyRelu")
def _l_leaky(c: _Ctx) -> list[Value]:
    return c.emit(O.LeakyRelu(alpha=float(c.attr("alpha", 0.01))), [c.need(0)])


def _scalar(x: Value, v: float) -> Value:
    """A scalar constant of ``x``'s element type."""
    return make_const(np.array(v, x.type.dtype.numpy))


def _pos_neg(c: _Ctx, x: Value) -> tuple[Value, Value]:
    """``(max(x, 0), min(x, 0))``: the two halves piecewise activations are built from."""
    zero = _scalar(x, 0.0)
    return c.emit(O.Max(), [x, zero])[0], c.emit(O.Min(), [x, zero])[0]


def _expm1_neg(c: _Ctx, neg: Value, alpha: float, inner: float = 1.0) -> Value:
    """``alpha · (exp(inner · neg) − 1)`` of a value ``neg <= 0`` (exp never overflows)."""
    (e,) = c.emit(O.Mul(), [neg, _scalar(neg, inner)]) if inner != 1.0 else (neg,)
    (e,) = c.emit(O.Exp(), [e])
    (e,) = c.emit(O.Sub(), [e, _scalar(neg, 1.0)])
    return c.emit(O.Mul(), [e, _scalar(neg, alpha)])[0]


@lower("Elu", "Selu", "Celu")
def _l_elu(c: _Ctx) -> list[Value]:
    """ELU family as ``max(x, 0) + alpha·(exp(min(x, 0)/s) − 1)`` (times ``gamma`` for SELU).

    Built from existing ops, so training gets their gradients; the exponential only sees
    ``min(x, 0)``, so it cannot overflow into a NaN gradient.
    """
    x = c.need(0)
    pos, neg = _pos_neg(c, x)
    op = c.node_op
    if op == "Selu":
        alpha = float(c.attr("alpha", 1.67326319217681884765625))
        gamma = float(c.attr("gamma", 1.05070102214813232421875))
    else:
        alpha, gamma = float(c.attr("alpha", 1.0)), 1.0
    if op == "Celu" and alpha == 0:
        raise c.err("attribute alpha=0 is not allowed for Celu")
    inner = 1.0 / alpha if op == "Celu" else 1.0
    (y,) = c.emit(O.Add(), [pos, _expm1_neg(c, neg, alpha, inner)])
    return c.emit(O.Mul(), [y, _scalar(y, gamma)]) if gamma != 1.0 else [y]


@lower("PRelu")
def _l_prelu(c: _Ctx) -> list[Value]:
    """``max(x, 0) + slope · min(x, 0)``; a constant slope is a trainable digital parameter."""
    x, slope = c.need(0), c.need(1)
    pos, neg = _pos_neg(c, x)
    (m,) = c.emit(O.Mul(), [slope, neg])
    return c.emit(O.Add(), [pos, m])


@lower("Mish")
def _l_mish(c: _Ctx) -> list[Value]:
    """``x · tanh(softplus(x))``."""
    x = c.need(0)
    (sp,) = c.emit(O.Softplus(), [x])
    (t,) = c.emit(O.Tanh(), [sp])
    return c.emit(O.Mul(), [x, t])


@lower("Softsign")
def _l_softsign(c: _Ctx) -> list[Value]:
    """``x / (1 + |x|)``."""
    x = c.need(0)
    (a,) = c.emit(O.Abs(), [x])
    (d,) = c.emit(O.Add(), [a, _scalar(x, 1.0)])
    return c.emit(O.Div(), [x, d])


@lower("HardSigmoid")
def _l_hsig(c: _Ctx) -> list[Value]:
    op = O.HardSigmoid(alpha=float(c.attr("alpha", 0.2)), beta=float(c.attr("beta", 0.5)))
    return c.emit(op, [c.need(0)])


@lower("Gelu")
def _l_gelu(c: _Ctx) -> list[Value]:
    approx = c.attr("approximate", b"none")
    approx = approx.decode() if isinstance(approx, bytes) else str(approx)
    if approx not in ("none", "tanh"):
        raise c.err(f"attribute approximate={approx!r} not supported")
    return c.emit(O.Gelu(approximate=approx), [c.need(0)])


@lower("Clip")
def _l_clip(c: _Ctx) -> list[Value]:
    if c.opset < 11:
        lo, hi = c.attr("min"), c.attr("max")
    else:
        a, b = c.const(1, "min"), c.const(2, "max")
        lo = None if a is None else float(np.asarray(a).reshape(-1)[0])
        hi = None if b is None else float(np.asarray(b).reshape(-1)[0])
    x = c.need(0)
    if not x.type.dtype.is_float:
        raise c.err(f"Clip on {x.type} is not supported (float only)")
    return c.emit(
        O.Clip(min=None if lo is None else float(lo), max=None if hi is None else float(hi)), [x]
    )


@lower("Dropout")
def _l_dropout(c: _Ctx) -> list[Value | None]:
    training = c.const(2, "training_mode")
    if training is not None and bool(np.asarray(training).reshape(-1)[0]):
        raise c.err("training_mode=true is not supported (inference graphs only)")
    ratio = c.const(1, "ratio")
    r = (
        float(np.asarray(ratio).reshape(-1)[0])
        if ratio is not None
        else float(c.attr("ratio", 0.5))
    )
    return [*c.emit(O.Dropout(ratio=r), [c.need(0)]), None]


@lower("Cast", "CastLike")
def _l_cast(c: _Ctx) -> list[Value]:
    if c.node_op == "CastLike":
        to = c.need(1).type.dtype
    else:
        code = int(c.attr("to"))
        if code not in _ONNX_DTYPES:
            raise c.err(f"attribute to={onnx.TensorProto.DataType.Name(code)} is not supported")
        to = _ONNX_DTYPES[code]
    return c.emit(O.Cast(to=to.value), [c.need(0)])


_BINARY: dict[str, type[O.Op]] = {
    "Add": O.Add,
    "Sub": O.Sub,
    "Mul": O.Mul,
    "Div": O.Div,
    "Pow": O.Pow,
    "Equal": O.Equal,
    "Less": O.Less,
    "Greater": O.Greater,
}


@lower(*_BINARY)
def _l_binary(c: _Ctx) -> list[Value]:
    if c.opset < 7 and c.attr("broadcast"):
        raise c.err("legacy broadcast attribute is not supported")
    a, b = c.need(0), c.need(1)
    if c.node_op != "Pow" and a.type.dtype != b.type.dtype:
        raise c.err(f"operand types differ: {a.type} vs {b.type}")
    return c.emit(_BINARY[c.node_op](), [a, b])


@lower("LessOrEqual", "GreaterOrEqual")
def _l_cmp_eq(c: _Ctx) -> list[Value]:
    inner: O.Op = O.Greater() if c.node_op == "LessOrEqual" else O.Less()
    (t,) = c.emit(inner, [c.need(0), c.need(1)])
    return c.emit(O.Not(), [t])


@lower("Max", "Min", "Sum")
def _l_variadic(c: _Ctx) -> list[Value]:
    op: O.Op = {"Max": O.Max(), "Min": O.Min(), "Sum": O.Add()}[c.node_op]
    assert c.node is not None
    vals = [c.need(i) for i in range(len(c.node.input))]
    acc = vals[0]
    for v in vals[1:]:
        (acc,) = c.emit(op, [acc, v])
    return [acc]


@lower("Where")
def _l_where(c: _Ctx) -> list[Value]:
    return c.emit(O.Where(), [c.need(0), c.need(1), c.need(2)])


# ----------------------------------------------------------------------------- linear algebra


@lower("MatMul")
def _l_matmul(c: _Ctx) -> list[Value]:
    return c.emit(O.MatMul(), [c.need(0), c.need(1)])


@lower("Attention")
def _l_attention(c: _Ctx) -> list[Value | None]:
    """ONNX ``Attention`` (opset 23) as digital matmuls, scale, mask and softmax.

    torch's dynamo exporter writes ``scaled_dot_product_attention`` as this op at opset 23+.
    3-D inputs ``[B, S, heads·D]`` are split into heads (``q_num_heads``/``kv_num_heads``)
    and merged back; grouped-query attention repeats each K/V head over its group of query
    heads. No KV cache (``past_key``/``past_value``) and no ``present_*`` or
    ``qk_matmul_output`` outputs.
    """
    q, k, v = c.need(0), c.need(1), c.need(2)
    if c.inp(4) is not None or c.inp(5) is not None:
        raise c.err("past_key/past_value (a KV cache) are not supported")
    rank = q.type.rank
    if rank not in (3, 4) or k.type.rank != rank or v.type.rank != rank:
        raise c.err(f"Q, K, V must all be 3-D or 4-D, got {q.type}, {k.type}, {v.type}")

    def heads(x: Value, n: int, what: str) -> Value:
        b, seq, hidden = x.type.shape
        if n < 1 or hidden % n:
            raise c.err(f"{what} hidden size {hidden} is not divisible by {n} heads")
        (r,) = c.emit(O.Reshape(shape=(b, seq, n, hidden // n)), [x])
        return c.emit(O.Transpose(perm=(0, 2, 1, 3)), [r])[0]

    if rank == 3:
        hq, hkv = int(c.attr("q_num_heads", 0)), int(c.attr("kv_num_heads", 0))
        if hq < 1 or hkv < 1:
            raise c.err("3-D inputs need the q_num_heads and kv_num_heads attributes")
        q, k, v = heads(q, hq, "Q"), heads(k, hkv, "K"), heads(v, hkv, "V")
    hq, hkv = q.type.shape[1], k.type.shape[1]
    if v.type.shape[1] != hkv or hq % hkv:
        raise c.err(f"{hq} query heads cannot share {hkv} key/value heads")
    if hq != hkv:  # grouped-query: K/V head j serves query heads j·g … j·g + g − 1

        def repeat(x: Value) -> Value:
            b, h, seq, d = x.type.shape
            (r,) = c.emit(O.Reshape(shape=(b, h, 1, seq, d)), [x])
            (e,) = c.emit(O.Expand(shape=(b, h, hq // h, seq, d)), [r])
            return c.emit(O.Reshape(shape=(b, hq, seq, d)), [e])[0]

        k, v = repeat(k), repeat(v)
    d = q.type.shape[3]
    scale = c.attr("scale", None)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    dt = q.type.dtype.numpy
    (kt,) = c.emit(O.Transpose(perm=(0, 1, 3, 2)), [k])
    (s,) = c.emit(O.MatMul(), [q, kt])
    (s,) = c.emit(O.Mul(), [s, make_const(np.array(scale, dt))])
    softcap = float(c.attr("softcap", 0.0))
    if softcap > 0:
        (s,) = c.emit(O.Div(), [s, make_const(np.array(softcap, dt))])
        (s,) = c.emit(O.Tanh(), [s])
        (s,) = c.emit(O.Mul(), [s, make_const(np.array(softcap, dt))])
    sq, skv = s.type.shape[2], s.type.shape[3]
    if int(c.attr("is_causal", 0)):
        allowed = np.tril(np.ones((sq, skv), bool))  # no KV cache: query i sees keys j <= i
        (s,) = c.emit(O.Add(), [s, make_const(np.where(allowed, 0.0, -np.inf).astype(dt))])
    mask = c.inp(3)
    if mask is not None:
        if mask.type.dtype == DType.BOOL:
            (s,) = c.emit(O.Where(), [mask, s, make_const(np.array(-np.inf, dt))])
        else:
            (s,) = c.emit(O.Add(), [s, mask])
    (p,) = c.emit(O.Softmax(axis=3), [s])
    (y,) = c.emit(O.MatMul(), [p, v])
    if rank == 3:
        b, h, seq, dv = y.type.shape
        (t,) = c.emit(O.Transpose(perm=(0, 2, 1, 3)), [y])
        (y,) = c.emit(O.Reshape(shape=(b, seq, h * dv)), [t])
    return [y, None, None, None]


@lower("Gemm")
def _l_gemm(c: _Ctx) -> list[Value]:
    op = O.Gemm(
        alpha=float(c.attr("alpha", 1.0)),
        beta=float(c.attr("beta", 1.0)),
        trans_a=bool(c.attr("transA", 0)),
        trans_b=bool(c.attr("transB", 0)),
    )
    ins = [c.need(0), c.need(1)]
    bias = c.inp(2)
    if bias is not None:
        ins.append(bias)
    return c.emit(op, ins)


def _auto_pads(
    c: _Ctx,
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> tuple[int, ...]:
    mode = c.attr("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    nsp = len(kernel)
    if mode == "NOTSET":
        pads = tuple(int(p) for p in c.attr("pads", [0] * (2 * nsp)))
        if len(pads) != 2 * nsp:
            raise c.err(f"attribute pads={list(pads)} needs {2 * nsp} entries")
        return pads
    if mode == "VALID":
        return (0,) * (2 * nsp)
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise c.err(f"attribute auto_pad={mode!r} is not supported")
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small = total // 2
        begin.append(small if mode == "SAME_UPPER" else total - small)
        end.append(total - small if mode == "SAME_UPPER" else small)
    return (*begin, *end)


def _window_attrs(
    c: _Ctx, x: Value, kernel: Sequence[int] | None
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    nsp = x.type.rank - 2
    if nsp < 1:
        raise c.err(f"input {x.type} needs a batch, a channel and spatial axes")
    ks = tuple(int(k) for k in (c.attr("kernel_shape") or kernel or ()))
    if len(ks) != nsp:
        raise c.err(f"attribute kernel_shape={list(ks)} does not match {nsp} spatial axes")
    strides = tuple(int(s) for s in c.attr("strides", [1] * nsp))
    dil = tuple(int(d) for d in c.attr("dilations", [1] * nsp))
    if len(strides) != nsp or len(dil) != nsp:
        raise c.err("attributes strides/dilations do not match the spatial rank")
    pads = _auto_pads(c, x.type.shape[2:], ks, strides, dil)
    return ks, strides, pads, dil


def _to_2d(c: _Ctx, x: Value) -> Value:
    """[N, C, L] → [N, C, 1, L] so 1-D windows run as 2-D ones."""
    n, ch, length = x.type.shape
    (y,) = c.emit(O.Reshape(shape=(n, ch, 1, length)), [x])
    return y


def _pads_2d(pads: Sequence[int]) -> tuple[int, ...]:
    return (0, pads[0], 0, pads[1])


@lower("Conv")
def _l_conv(c: _Ctx) -> list[Value]:
    x, w = c.need(0), c.need(1)
    bias = c.inp(2)
    if w.type.rank != x.type.rank:
        raise c.err(f"weight {w.type} and input {x.type} differ in rank")
    ks, strides, pads, dil = _window_attrs(c, x, w.type.shape[2:])
    if tuple(w.type.shape[2:]) != ks:
        raise c.err(f"attribute kernel_shape={list(ks)} differs from the weight {w.type}")
    group = int(c.attr("group", 1))
    nsp = len(ks)
    if nsp > 2:
        raise c.err(f"{nsp}-D convolution is not supported (1-D and 2-D are)")
    if nsp == 1:
        x2 = _to_2d(c, x)
        (w2,) = c.emit(O.Reshape(shape=(*w.type.shape[:2], 1, ks[0])), [w])
        op = O.Conv(
            strides=(1, strides[0]), pads=_pads_2d(pads), dilations=(1, dil[0]), group=group
        )
        (y,) = c.emit(op, [x2, w2] + ([bias] if bias is not None else []))
        n, ch, _, length = y.type.shape
        return c.emit(O.Reshape(shape=(n, ch, length)), [y])
    op = O.Conv(strides=strides, pads=pads, dilations=dil, group=group)
    return c.emit(op, [x, w] + ([bias] if bias is not None else []))


def _conv_transpose_pads(
    c: _Ctx,
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    out_pad: Sequence[int],
) -> tuple[int, ...]:
    """Begin then end pads of a ConvTranspose (``pads``, ``auto_pad`` or ``output_shape``)."""
    nsp = len(kernel)
    shape = c.attr("output_shape")
    mode = c.attr("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if shape is None and mode in ("NOTSET", "VALID"):
        pads = tuple(int(p) for p in c.attr("pads", [0] * (2 * nsp)))
        if mode == "VALID":
            pads = (0,) * (2 * nsp)
        if len(pads) != 2 * nsp:
            raise c.err(f"attribute pads={list(pads)} needs {2 * nsp} entries")
        return pads
    if mode not in ("NOTSET", "SAME_UPPER", "SAME_LOWER"):
        raise c.err(f"attribute auto_pad={mode!r} is not supported")
    want = [int(s) for s in shape][-nsp:] if shape is not None else None
    if want is not None and len(want) != nsp:
        raise c.err(f"attribute output_shape={list(shape)} does not match {nsp} spatial axes")
    begin, end = [], []
    for i in range(nsp):
        full = strides[i] * (spatial[i] - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1
        target = want[i] if want is not None else spatial[i] * strides[i]
        total = full - target
        if total < 0:
            raise c.err(f"output_shape {want} is larger than the full output along axis {i}")
        # ONNX: SAME_UPPER puts the larger half at the end, otherwise at the beginning.
        small = total // 2
        if mode == "SAME_UPPER":
            begin.append(small)
            end.append(total - small)
        else:
            begin.append(total - small)
            end.append(small)
    return (*begin, *end)


def _transposed_kernel(c: _Ctx, w: Value, group: int) -> Value:
    """ConvTranspose weight ``[Cin, Cout/g, *k]`` → the Conv weight ``[Cout, Cin/g, *k]``.

    Each group's block is transposed (input ↔ output channels) and every spatial axis is
    flipped: a transposed convolution is the convolution of the zero-inserted input with this
    kernel. A constant weight is transformed once here (keeping its initializer name, so it
    stays a trainable crossbar matrix); a run-time weight gets the same as graph ops.
    """
    cin, cout_g, *ks = w.type.shape
    if cin % group:
        raise c.err(f"weight {w.type} does not fit group={group}")
    cin_g = cin // group
    nsp = len(ks)
    perm = (0, 2, 1, *range(3, 3 + nsp))
    flip = tuple(slice(None, None, -1) for _ in ks)
    if w.const is not None:
        arr = np.asarray(w.const).reshape(group, cin_g, cout_g, *ks).transpose(perm)
        arr = np.ascontiguousarray(arr[(slice(None),) * 3 + flip])
        return make_const(arr.reshape(group * cout_g, cin_g, *ks), w.name, param=w.param)
    (y,) = c.emit(O.Reshape(shape=(group, cin_g, cout_g, *ks)), [w])
    (y,) = c.emit(O.Transpose(perm=perm), [y])
    (y,) = c.emit(O.Reshape(shape=(group * cout_g, cin_g, *ks)), [y])
    big = 2**62
    axes = tuple(range(2, 2 + nsp))
    op = O.Slice(starts=(-1,) * nsp, ends=(-big,) * nsp, axes=axes, steps=(-1,) * nsp)
    (y,) = c.emit(op, [y])
    return y


def _zero_insert(c: _Ctx, x: Value, strides: Sequence[int]) -> Value:
    """``[N, C, H, W]`` → ``[N, C, H·sh, W·sw]`` with ``s-1`` zeros after every input pixel."""
    n, ch, h, wd = x.type.shape
    sh, sw = strides
    (y,) = c.emit(O.Reshape(shape=(n, ch, h, 1, wd, 1)), [x])
    (y,) = c.emit(O.Pad(pads=(0,) * 9 + (sh - 1, 0, sw - 1)), [y])
    (y,) = c.emit(O.Reshape(shape=(n, ch, h * sh, wd * sw)), [y])
    return y


@lower("ConvTranspose")
def _l_conv_transpose(c: _Ctx) -> list[Value]:
    """A transposed convolution as a Conv of the zero-inserted input (DESIGN.md, ConvTranspose).

    With stride ``s``, dilation ``d``, kernel ``k``, pads ``p0, p1`` and output padding ``op``
    along an axis: insert ``s-1`` zeros after every input element (the last ones are dropped),
    pad by ``d(k-1)-p0`` before and ``d(k-1)-p1+op`` after (negative = crop) and run a stride-1
    Conv with the flipped, channel-transposed kernel and the same dilation and groups.
    """
    x, w = c.need(0), c.need(1)
    bias = c.inp(2)
    if w.type.rank != x.type.rank:
        raise c.err(f"weight {w.type} and input {x.type} differ in rank")
    nsp = x.type.rank - 2
    if nsp not in (1, 2):
        raise c.err(f"{nsp}-D transposed convolution is not supported (1-D and 2-D are)")
    ks = tuple(int(k) for k in (c.attr("kernel_shape") or w.type.shape[2:]))
    if ks != tuple(w.type.shape[2:]):
        raise c.err(f"attribute kernel_shape={list(ks)} differs from the weight {w.type}")
    strides = tuple(int(s) for s in c.attr("strides", [1] * nsp))
    dil = tuple(int(d) for d in c.attr("dilations", [1] * nsp))
    out_pad = tuple(int(p) for p in c.attr("output_padding", [0] * nsp))
    group = int(c.attr("group", 1))
    if len(strides) != nsp or len(dil) != nsp or len(out_pad) != nsp:
        raise c.err("attributes strides/dilations/output_padding do not match the spatial rank")
    if min((*strides, *dil), default=1) < 1 or group < 1:
        raise c.err("strides, dilations and group must be >= 1")
    if x.type.shape[1] != w.type.shape[0]:
        raise c.err(f"input {x.type} has not the {w.type.shape[0]} channels of weight {w.type}")
    pads = _conv_transpose_pads(c, x.type.shape[2:], ks, strides, dil, out_pad)
    wc = _transposed_kernel(c, w, group)
    if nsp == 1:
        x = _to_2d(c, x)
        shape = (*wc.type.shape[:2], 1, ks[0])
        if wc.const is not None:
            wc = make_const(np.asarray(wc.const).reshape(shape), wc.name, param=wc.param)
        else:
            (wc,) = c.emit(O.Reshape(shape=shape), [wc])
        ks, strides, dil = (1, *ks), (1, *strides), (1, *dil)
        out_pad = (0, *out_pad)
        pads = (0, pads[0], 0, pads[1])
    y = _zero_insert(c, x, strides) if strides != (1, 1) else x
    # The zero-inserted input has s-1 trailing zeros too many per axis: fold them into the end
    # pad. Non-negative pads go to the Conv, negative ones (cropping) to a Pad before it.
    before = [d * (k - 1) - p for k, d, p in zip(ks, dil, pads[:2], strict=True)]
    after = [
        d * (k - 1) - p + o - (s - 1)
        for k, d, p, o, s in zip(ks, dil, pads[2:], out_pad, strides, strict=True)
    ]
    crop = [min(0, v) for v in (*before, *after)]
    if any(crop):
        (y,) = c.emit(O.Pad(pads=(0, 0, crop[0], crop[1], 0, 0, crop[2], crop[3])), [y])
    conv_pads = tuple(max(0, v) for v in (*before, *after))
    op = O.Conv(strides=(1, 1), pads=conv_pads, dilations=dil, group=group)
    (y,) = c.emit(op, [y, wc] + ([bias] if bias is not None else []))
    if nsp == 1:
        n, ch, _, length = y.type.shape
        return c.emit(O.Reshape(shape=(n, ch, length)), [y])
    return [y]


@lower("BatchNormalization")
def _l_bn(c: _Ctx) -> list[Value | None]:
    if int(c.attr("training_mode", 0)):
        raise c.err("attribute training_mode=1 is not supported (inference graphs only)")
    ins = [c.need(i) for i in range(5)]
    return [*c.emit(O.BatchNorm(epsilon=float(c.attr("epsilon", 1e-5))), ins), None, None]


@lower("LayerNormalization")
def _l_ln(c: _Ctx) -> list[Value | None]:
    x = c.need(0)
    axis = _axis(c, int(c.attr("axis", -1)), x.type.rank)
    ins = [x, c.need(1)]
    bias = c.inp(2)
    if bias is not None:
        ins.append(bias)
    return [
        *c.emit(O.LayerNorm(axis=axis, epsilon=float(c.attr("epsilon", 1e-5))), ins),
        None,
        None,
    ]


@lower("RMSNormalization")
def _l_rms_norm(c: _Ctx) -> list[Value]:
    """``x / sqrt(mean(x², axes axis..) + epsilon) · scale`` (opset 23; torch's nn.RMSNorm)."""
    x, scale = c.need(0), c.need(1)
    rank = x.type.rank
    axis = _axis(c, int(c.attr("axis", -1)), rank)
    dt = x.type.dtype.numpy
    (sq,) = c.emit(O.Mul(), [x, x])
    (ms,) = c.emit(O.ReduceMean(axes=tuple(range(axis, rank)), keepdims=True), [sq])
    (ms,) = c.emit(O.Add(), [ms, make_const(np.array(float(c.attr("epsilon", 1e-5)), dt))])
    (rms,) = c.emit(O.Sqrt(), [ms])
    (y,) = c.emit(O.Div(), [x, rms])
    return c.emit(O.Mul(), [y, scale])


@lower("InstanceNormalization")
def _l_instance_norm(c: _Ctx) -> list[Value]:
    """Normalise each (sample, channel) over the spatial axes, then scale and shift per channel.

    Lowered to ``layer_norm`` over axes ``2..`` (unit scale, zero shift) followed by a
    per-channel ``mul`` and ``add``; torch's GroupNorm exports as this op between reshapes.
    """
    x = c.need(0)
    if x.type.rank < 3:
        raise c.err(f"input {x.type} needs a channel axis and at least one spatial axis")
    ch, spatial = x.type.shape[1], x.type.shape[2:]
    dt = x.type.dtype.numpy
    eps = float(c.attr("epsilon", 1e-5))
    ones = make_const(np.ones(spatial, dt))
    zeros = make_const(np.zeros(spatial, dt))
    (y,) = c.emit(O.LayerNorm(axis=2, epsilon=eps), [x, ones, zeros], fold=False)
    per_channel = (ch,) + (1,) * len(spatial)
    for i, op in ((1, O.Mul()), (2, O.Add())):
        v = c.need(i)
        if v.type.shape != (ch,):
            raise c.err(f"input {i} has shape {list(v.type.shape)}, expected [{ch}]")
        if v.const is not None:
            v = make_const(np.asarray(v.const).reshape(per_channel), v.name, param=v.param)
        else:
            (v,) = c.emit(O.Reshape(shape=per_channel), [v])
        (y,) = c.emit(op, [y, v], fold=False)
    return [y]


@lower("Softmax", "LogSoftmax")
def _l_softmax(c: _Ctx) -> list[Value]:
    x = c.need(0)
    rank = x.type.rank
    cls = O.Softmax if c.node_op == "Softmax" else O.LogSoftmax
    if c.opset >= 13:
        return c.emit(cls(axis=_axis(c, int(c.attr("axis", -1)), rank)), [x])
    # Before opset 13 the input is coerced to 2-D at ``axis`` and normalised over the tail.
    axis = _axis(c, int(c.attr("axis", 1)), rank)
    if axis == rank - 1:
        return c.emit(cls(axis=axis), [x])
    head, tail = math.prod(x.type.shape[:axis]), math.prod(x.type.shape[axis:])
    (flat,) = c.emit(O.Reshape(shape=(head, tail)), [x])
    (y,) = c.emit(cls(axis=1), [flat])
    return c.emit(O.Reshape(shape=x.type.shape), [y])


# ----------------------------------------------------------------------------- reductions, pools


@lower("ReduceMean", "ReduceSum", "ReduceMax")
def _l_reduce(c: _Ctx) -> list[Value]:
    x = c.need(0)
    from_input = c.opset >= (13 if c.node_op == "ReduceSum" else 18)
    axes = c.ints(1, "axes") if from_input else c.attr("axes")
    if not axes:
        if from_input and int(c.attr("noop_with_empty_axes", 0)):
            return c.emit(O.Identity(), [x])
        axes = list(range(x.type.rank))
    cls = {"ReduceMean": O.ReduceMean, "ReduceSum": O.ReduceSum, "ReduceMax": O.ReduceMax}
    op = cls[c.node_op](axes=_axes(c, axes, x.type.rank), keepdims=bool(c.attr("keepdims", 1)))
    return c.emit(op, [x])


@lower("MaxPool", "AveragePool")
def _l_pool(c: _Ctx) -> list[Value | None]:
    x = c.need(0)
    ks, strides, pads, dil = _window_attrs(c, x, None)
    ceil = bool(c.attr("ceil_mode", 0))
    if c.node_op == "MaxPool" and int(c.attr("storage_order", 0)):
        raise c.err("attribute storage_order=1 is not supported")
    nsp = len(ks)
    if nsp > 2:
        raise c.err(f"{nsp}-D pooling is not supported (1-D and 2-D are)")
    op: O.Op
    if c.node_op == "MaxPool":
        op = O.MaxPool(kernel=ks, strides=strides, pads=pads, dilations=dil, ceil_mode=ceil)
    else:
        if any(d != 1 for d in dil):
            raise c.err(f"attribute dilations={list(dil)} is not supported for AveragePool")
        cip = bool(c.attr("count_include_pad", 0))
        op = O.AveragePool(
            kernel=ks, strides=strides, pads=pads, ceil_mode=ceil, count_include_pad=cip
        )
    return [*c.emit(op, [x]), None]


@lower("GlobalAveragePool", "GlobalMaxPool")
def _l_gpool(c: _Ctx) -> list[Value]:
    op = O.GlobalAveragePool() if c.node_op == "GlobalAveragePool" else O.GlobalMaxPool()
    return c.emit(op, [c.need(0)])


# ----------------------------------------------------------------------------- data movement


def _reshape_to(c: _Ctx, x: Value, shape: Sequence[int]) -> list[Value]:
    return c.emit(O.Reshape(shape=tuple(int(d) for d in shape)), [x])


@lower("Reshape")
def _l_reshape(c: _Ctx) -> list[Value]:
    x = c.need(0)
    if c.opset < 5:
        raise c.err("Reshape with a shape attribute (opset < 5) is not supported")
    target = c.ints(1, "shape")
    if target is None:
        raise c.err("input 1 (shape) is required")
    allowzero = int(c.attr("allowzero", 0))
    shape = list(target)
    for i, d in enumerate(shape):
        if d == 0 and not allowzero:
            if i >= x.type.rank:
                raise c.err(f"shape {list(target)} copies axis {i} that the input lacks")
            shape[i] = x.type.shape[i]
    if shape.count(-1) > 1 or any(d < -1 for d in shape):
        raise c.err(f"invalid target shape {list(target)}")
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        if known == 0 or x.type.size % known:
            raise c.err(f"cannot reshape {x.type} to {list(target)}")
        shape[shape.index(-1)] = x.type.size // known
    return _reshape_to(c, x, shape)


@lower("Flatten")
def _l_flatten(c: _Ctx) -> list[Value]:
    x = c.need(0)
    axis = int(c.attr("axis", 1))
    axis = axis + x.type.rank if axis < 0 else axis
    if not 0 <= axis <= x.type.rank:
        raise c.err(f"attribute axis={axis} out of range for rank {x.type.rank}")
    s = x.type.shape
    return _reshape_to(c, x, (math.prod(s[:axis]), math.prod(s[axis:])))


@lower("Squeeze", "Unsqueeze")
def _l_squeeze(c: _Ctx) -> list[Value]:
    x = c.need(0)
    axes = c.ints(1, "axes") if c.opset >= 13 else c.attr("axes")
    shape = list(x.type.shape)
    if c.node_op == "Squeeze":
        if not axes:
            return _reshape_to(c, x, [d for d in shape if d != 1])
        ax = _axes(c, axes, len(shape))
        if any(shape[a] != 1 for a in ax):
            raise c.err(f"cannot squeeze axes {list(axes)} of {x.type}")
        return _reshape_to(c, x, [d for i, d in enumerate(shape) if i not in ax])
    if not axes:
        raise c.err("Unsqueeze needs axes")
    rank = len(shape) + len(axes)
    for a in _axes(c, axes, rank):
        shape.insert(a, 1)
    return _reshape_to(c, x, shape)


@lower("Transpose")
def _l_transpose(c: _Ctx) -> list[Value]:
    x = c.need(0)
    perm = c.attr("perm")
    perm = tuple(range(x.type.rank))[::-1] if perm is None else tuple(int(p) for p in perm)
    return c.emit(O.Transpose(perm=perm), [x])


@lower("Concat")
def _l_concat(c: _Ctx) -> list[Value]:
    assert c.node is not None
    vals = [c.need(i) for i in range(len(c.node.input))]
    axis = _axis(c, int(c.attr("axis")), vals[0].type.rank)
    return c.emit(O.Concat(axis=axis), vals)


@lower("Gather")
def _l_gather(c: _Ctx) -> list[Value]:
    data, idx = c.need(0), c.need(1)
    return c.emit(O.Gather(axis=_axis(c, int(c.attr("axis", 0)), data.type.rank)), [data, idx])


@lower("Slice")
def _l_slice(c: _Ctx) -> list[Value]:
    x = c.need(0)
    if c.opset < 10:
        starts, ends, axes = c.attr("starts"), c.attr("ends"), c.attr("axes")
        steps = None
    else:
        starts, ends = c.ints(1, "starts"), c.ints(2, "ends")
        axes, steps = c.ints(3, "axes"), c.ints(4, "steps")
    if starts is None or ends is None or len(starts) != len(ends):
        raise c.err("starts and ends are required and must have equal length")
    n = len(starts)
    axes = tuple(range(n)) if axes is None else tuple(_axis(c, a, x.type.rank) for a in axes)
    steps = (1,) * n if steps is None else tuple(steps)
    if len(axes) != n or len(steps) != n or len(set(axes)) != n:
        raise c.err("starts, ends, axes and steps must match in length with unique axes")
    if 0 in steps:
        raise c.err("a slice step is 0")
    big = 2**62
    # onnxruntime reads an end of INT32_MAX or INT64_MAX as "to the end in the step's direction"
    # (NumPy's None), also for negative steps where the spec would clamp it to dim-1.
    ends = tuple(
        -big if int(e) in (2**31 - 1, 2**63 - 1) and st < 0 else e
        for e, st in zip(ends, steps, strict=True)
    )
    clamp = tuple(max(-big, min(big, int(v))) for v in starts)
    clampe = tuple(max(-big, min(big, int(v))) for v in ends)
    op = O.Slice(starts=clamp, ends=clampe, axes=axes, steps=tuple(int(s) for s in steps))
    return c.emit(op, [x])


@lower("Split")
def _l_split(c: _Ctx) -> list[Value]:
    x = c.need(0)
    assert c.node is not None
    axis = _axis(c, int(c.attr("axis", 0)), x.type.rank)
    sizes = c.ints(1, "split") if c.opset >= 13 else c.attr("split")
    n_out = len(c.node.output)
    dim = x.type.shape[axis]
    if not sizes:
        n = int(c.attr("num_outputs", n_out))
        step = -(-dim // n)
        sizes = [min(step, dim - i * step) for i in range(n)]
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) != n_out:
        raise c.err(f"split sizes {list(sizes)} do not match {n_out} outputs")
    return c.emit(O.Split(axis=axis, sizes=sizes), [x])


@lower("Expand")
def _l_expand(c: _Ctx) -> list[Value]:
    shape = c.ints(1, "shape")
    if shape is None:
        raise c.err("input 1 (shape) is required")
    return c.emit(O.Expand(shape=shape), [c.need(0)])


@lower("Tile")
def _l_tile(c: _Ctx) -> list[Value]:
    x = c.need(0)
    reps = c.ints(1, "repeats")
    if reps is None or len(reps) != x.type.rank:
        raise c.err(f"repeats must have {x.type.rank} entries")
    # Tile = insert a broadcast axis before every axis, expand, merge.
    s = x.type.shape
    inter = tuple(v for d in s for v in (1, d))
    (y,) = c.emit(O.Reshape(shape=inter), [x])
    target = tuple(v for r, d in zip(reps, s, strict=True) for v in (r, d))
    (y,) = c.emit(O.Expand(shape=target), [y])
    return _reshape_to(c, y, [r * d for r, d in zip(reps, s, strict=True)])


@lower("DepthToSpace", "SpaceToDepth")
def _l_depth_space(c: _Ctx) -> list[Value]:
    """Pixel (un)shuffle as Reshape → Transpose → Reshape (no op of its own to train)."""
    x = c.need(0)
    b = int(c.attr("blocksize", 0))
    if x.type.rank != 4:
        raise c.err(f"input {x.type} must be [N, C, H, W]")
    if b < 1:
        raise c.err(f"attribute blocksize={b} must be >= 1")
    n, ch, h, w = x.type.shape
    if c.node_op == "SpaceToDepth":
        if h % b or w % b:
            raise c.err(f"spatial size {h}x{w} is not a multiple of blocksize={b}")
        (y,) = c.emit(O.Reshape(shape=(n, ch, h // b, b, w // b, b)), [x])
        (y,) = c.emit(O.Transpose(perm=(0, 3, 5, 1, 2, 4)), [y])
        return _reshape_to(c, y, (n, ch * b * b, h // b, w // b))
    mode = c.attr("mode", b"DCR")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if ch % (b * b):
        raise c.err(f"{ch} channels are not a multiple of blocksize²={b * b}")
    cb = ch // (b * b)
    if mode == "DCR":
        (y,) = c.emit(O.Reshape(shape=(n, b, b, cb, h, w)), [x])
        (y,) = c.emit(O.Transpose(perm=(0, 3, 4, 1, 5, 2)), [y])
    elif mode == "CRD":
        (y,) = c.emit(O.Reshape(shape=(n, cb, b, b, h, w)), [x])
        (y,) = c.emit(O.Transpose(perm=(0, 1, 4, 2, 5, 3)), [y])
    else:
        raise c.err(f"attribute mode={mode!r} is not supported (DCR and CRD are)")
    return _reshape_to(c, y, (n, cb, h * b, w * b))


def _str_attr(c: _Ctx, name: str, default: str) -> str:
    v = c.attr(name, default)
    return v.decode() if isinstance(v, bytes) else str(v)


@lower("Resize")
def _l_resize(c: _Ctx) -> list[Value]:
    """Nearest or (bi/tri)linear resize with static output sizes (cubic is refused)."""
    x = c.need(0)
    rank = x.type.rank
    mode = _str_attr(c, "mode", "nearest")
    if mode == "cubic":
        raise c.err("mode='cubic' is not supported (nearest and linear are)")
    if mode not in ("nearest", "linear"):
        raise c.err(f"attribute mode={mode!r} is not supported (nearest and linear are)")
    coord = _str_attr(c, "coordinate_transformation_mode", "half_pixel")
    if coord not in O.RESIZE_COORDS:
        raise c.err(f"attribute coordinate_transformation_mode={coord!r} is not supported")
    nearest = _str_attr(c, "nearest_mode", "round_prefer_floor")
    if nearest not in O.NEAREST_MODES:
        raise c.err(f"attribute nearest_mode={nearest!r} is not supported")
    if int(c.attr("antialias", 0)):
        raise c.err("attribute antialias=1 is not supported")
    policy = _str_attr(c, "keep_aspect_ratio_policy", "stretch")
    if c.opset < 11:
        scales_in, sizes_in = c.const(1, "scales"), None
    else:
        scales_in, sizes_in = c.const(2, "scales"), c.const(3, "sizes")
    axes_attr = c.attr("axes")
    axes = tuple(range(rank)) if axes_attr is None else _axes(c, axes_attr, rank)
    if axes_attr is not None and len(axes) != len(axes_attr):
        raise c.err(f"repeated axes {list(axes_attr)}")
    if scales_in is not None and scales_in.size == 0:
        scales_in = None
    if sizes_in is not None and sizes_in.size == 0:
        sizes_in = None
    if (scales_in is None) == (sizes_in is None):
        raise c.err("exactly one of scales and sizes must be given")
    shape = list(x.type.shape)
    scales = [1.0] * rank
    if sizes_in is not None:
        if policy != "stretch":
            raise c.err(f"attribute keep_aspect_ratio_policy={policy!r} is not supported")
        want = [int(v) for v in np.asarray(sizes_in).reshape(-1)]
        if len(want) != len(axes):
            raise c.err(f"sizes {want} do not match {len(axes)} axes")
        for a, v in zip(axes, want, strict=True):
            if v < 1:
                raise c.err(f"sizes {want} has an extent < 1")
            scales[a] = float(np.float32(v) / np.float32(shape[a]))
            shape[a] = v
    else:
        assert scales_in is not None
        given = [float(v) for v in np.asarray(scales_in, np.float32).reshape(-1)]
        if len(given) != len(axes):
            raise c.err(f"scales {given} do not match {len(axes)} axes")
        for a, g in zip(axes, given, strict=True):
            if not g > 0:
                raise c.err(f"scales {given} must be > 0")
            scales[a] = g
            # onnxruntime computes the extent in float32.
            shape[a] = int(np.floor(np.float32(shape[a]) * np.float32(g)))
    op = O.Resize(
        sizes=tuple(shape), scales=tuple(scales), mode=mode, coord=coord, nearest_mode=nearest
    )
    return c.emit(op, [x])


@lower("Pad")
def _l_pad(c: _Ctx) -> list[Value]:
    x = c.need(0)
    mode = c.attr("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if c.opset < 11:
        pads, value = c.attr("pads"), float(c.attr("value", 0.0))
    else:
        pads = c.ints(1, "pads")
        cv = c.const(2, "constant_value")
        value = 0.0 if cv is None or cv.size == 0 else float(np.asarray(cv).reshape(-1)[0])
        axes = c.ints(3, "axes")
        if axes is not None and pads is not None:
            rank = x.type.rank
            full = [0] * (2 * rank)
            ax = [_axis(c, a, rank) for a in axes]
            for i, a in enumerate(ax):
                full[a], full[a + rank] = pads[i], pads[i + len(ax)]
            pads = tuple(full)
    if pads is None:
        raise c.err("pads are required")
    if mode not in ("constant", "reflect", "edge"):
        raise c.err(f"attribute mode={mode!r} is not supported")
    return c.emit(O.Pad(pads=tuple(int(p) for p in pads), mode=mode, value=value), [x])


# ----------------------------------------------------------------------------- shape ops (fold)


def _const(c: _Ctx, arr: np.ndarray, *, taint: bool = False) -> list[Value]:
    v = make_const(np.asarray(arr))
    if taint:
        c.tainted.add(id(v))
    return [v]


@lower("Constant")
def _l_constant(c: _Ctx) -> list[Value]:
    assert c.node is not None
    if not c.node.attribute:
        raise c.err("Constant has no value attribute")
    a = c.node.attribute[0]
    name = a.name
    if name == "value":
        t = a.t
        if t.data_type not in _ONNX_DTYPES:
            raise c.err(
                f"value of type {onnx.TensorProto.DataType.Name(t.data_type)} not supported"
            )
        return _const(c, numpy_helper.to_array(t))
    if name == "value_float":
        return _const(c, np.array(a.f, np.float32))
    if name == "value_floats":
        return _const(c, np.array(list(a.floats), np.float32))
    if name == "value_int":
        return _const(c, np.array(a.i, np.int64))
    if name == "value_ints":
        return _const(c, np.array(list(a.ints), np.int64))
    raise c.err(f"attribute {name} is not supported")


@lower("Shape")
def _l_shape(c: _Ctx) -> list[Value]:
    x = c.need(0)
    start = int(c.attr("start", 0))
    end = c.attr("end")
    sl = slice(start, None if end is None else int(end))
    return _const(c, np.array(x.type.shape[sl], np.int64), taint=not x.is_const)


@lower("Size")
def _l_size(c: _Ctx) -> list[Value]:
    x = c.need(0)
    return _const(c, np.array(x.type.size, np.int64), taint=not x.is_const)


@lower("ConstantOfShape")
def _l_const_of_shape(c: _Ctx) -> list[Value]:
    shape = c.ints(0, "input")
    assert shape is not None
    value = c.attr("value")
    arr = numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
    fill = arr.reshape(-1)[0]
    if id(c.inp(0)) in c.tainted and np.issubdtype(arr.dtype, np.floating):
        dtype = DType.from_numpy(arr.dtype).value
        return c.emit(O.Fill(shape=shape, value=float(fill), dtype=dtype), [])
    return _const(c, np.full(shape, fill, dtype=arr.dtype), taint=id(c.inp(0)) in c.tainted)


@lower("Range")
def _l_range(c: _Ctx) -> list[Value]:
    start, limit, delta = (c.const(i, n) for i, n in enumerate(("start", "limit", "delta")))
    assert start is not None and limit is not None and delta is not None
    dtype = np.asarray(start).dtype
    n = max(int(np.ceil((limit - start) / delta)), 0)
    return _const(c, (start + np.arange(n) * delta).astype(dtype))


# ----------------------------------------------------------------------------- driver


def _tensor_type(path: str, vi: onnx.ValueInfoProto, batch: int) -> tuple[TensorType, bool]:
    """Static type of a graph input; the first axis may be symbolic (the batch)."""
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise _fail(path, f"graph input {vi.name!r} is not a tensor")
    if tt.elem_type not in _ONNX_DTYPES:
        name = onnx.TensorProto.DataType.Name(tt.elem_type)
        raise _fail(path, f"graph input {vi.name!r} has unsupported element type {name}")
    if not tt.HasField("shape"):
        raise _fail(path, f"graph input {vi.name!r} has no shape")
    dims: list[int] = []
    symbolic = False
    for i, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif i == 0:
            dims.append(batch)
            symbolic = True
        else:
            label = d.dim_param or "?"
            raise _fail(
                path,
                f"graph input {vi.name!r} has symbolic dimension {label!r} at axis {i}; "
                "only the batch axis (0) may be symbolic",
            )
    return TensorType(tuple(dims), _ONNX_DTYPES[tt.elem_type]), symbolic


def _lower_graph(m: _Model, batch: int) -> tuple[Graph, bool]:
    gp = m.proto.graph
    g = Graph(Path(m.path).name.removesuffix(".onnx"))
    ctx = _Ctx(m, batch, g)
    symbolic = False
    fixed = False
    for name, arr in m.weights.items():
        ctx.env[name] = make_const(arr, name, param=True)
    for vi in gp.input:
        if vi.name in m.weights:
            continue
        t, sym = _tensor_type(m.path, vi, batch)
        symbolic |= sym
        fixed |= not sym
        ctx.env[vi.name] = g.add_input(t, vi.name)
    for i, node in enumerate(gp.node):
        ctx.node = node
        ctx.node_name = node.name or f"{node.op_type}_{i}"
        if node.domain not in ("", "ai.onnx"):
            raise ctx.err(f"op domain {node.domain!r} is not supported")
        fn = LOWER.get(node.op_type)
        outs = list(fn(ctx) if fn is not None else _fold_unknown(ctx))
        for j, name in enumerate(node.output):
            if not name:
                continue
            v = outs[j] if j < len(outs) else None
            if v is None:
                if _is_used(gp, name):
                    raise ctx.err(f"output {j} ({name!r}) is not supported")
                continue
            if not v.name:
                v.name = name
            ctx.env[name] = v
    for vo in gp.output:
        if vo.name not in ctx.env:
            raise _fail(m.path, f"graph output {vo.name!r} is not produced by any node")
        g.outputs.append(ctx.env[vo.name])
    g.remove_dead()
    # Graph.at_batch rebinds axis 0 of every input, so a graph that also has an input with a
    # fixed first axis is imported at ``batch`` but cannot be rebound.
    return g, symbolic and not fixed


def _fold_unknown(ctx: _Ctx) -> list[Value]:
    """An op without a lowering whose operands are all constants, evaluated at import.

    Exporters emit shape arithmetic with ops xbarc has no IR op for (``Mod``, ``Floor``,
    ``Ceil``...); on constants they are evaluated once with ONNX's reference evaluator, at
    the model's opset. Results that follow the batch size are folded only when they are
    integers (shape arithmetic, rebound through ``batch_coef`` like every folded shape).
    """
    node = ctx.node
    assert node is not None
    ins = [ctx.env.get(n) if n else None for n in node.input]
    if node.op_type in ("If", "Loop", "Scan") or any(v is None or v.const is None for v in ins):
        raise ctx.err("op type is not supported")
    from onnx.reference import ReferenceEvaluator

    try:
        ev = ReferenceEvaluator(node, opsets={"": ctx.opset})
        feeds = {n: np.asarray(v.const) for n, v in zip(node.input, ins, strict=True) if v}
        arrays = [np.asarray(a) for a in ev.run(None, feeds)]
    except Exception as e:  # any evaluator failure means "cannot fold"
        raise ctx.err(
            f"op type is not supported (folding its constant operands failed: {e})"
        ) from None
    if any(a.size > FOLD_LIMIT for a in arrays):
        raise ctx.err(f"op type is not supported (constant results over {FOLD_LIMIT} elements)")
    taint = any(id(v) in ctx.tainted for v in ins if v is not None)
    if taint and any(a.dtype.kind == "f" for a in arrays):
        raise ctx.err("op type is not supported (its float result follows the batch size)")
    try:
        outs = [make_const(a) for a in arrays]
    except (ValueError, KeyError, TypeError) as e:
        raise ctx.err(f"op type is not supported (result: {e})") from None
    if taint:
        ctx.tainted.update(id(v) for v in outs)
    return outs


def _is_used(gp: onnx.GraphProto, name: str) -> bool:
    return any(name in n.input for n in gp.node) or any(o.name == name for o in gp.output)


def _batch_coefficients(path: str, g0: Graph, g1: Graph) -> None:
    """Record in ``g0`` how integer attributes change from batch b to b+1 (see module doc)."""
    if len(g0.nodes) != len(g1.nodes):
        raise _fail(path, "the graph's structure depends on the batch size")
    for n0, n1 in zip(g0.nodes, g1.nodes, strict=True):
        if type(n0.op) is not type(n1.op) or n0.name != n1.name:
            raise _fail(path, f"node {n0.name!r} depends on the batch size in structure")
        for k, v0 in n0.op.attrs().items():
            v1 = getattr(n1.op, k)
            if v0 == v1:
                continue
            if not (
                isinstance(v0, tuple)
                and isinstance(v1, tuple)
                and len(v0) == len(v1)
                and all(isinstance(a, int) for a in (*v0, *v1))
            ):
                raise _fail(path, f"node {n0.name!r}: attribute {k} depends on the batch size")
            n0.batch_coef[k] = tuple(int(b) - int(a) for a, b in zip(v0, v1, strict=True))
        for a, b in zip(n0.inputs, n1.inputs, strict=True):
            if a.is_const != b.is_const:
                raise _fail(path, f"node {n0.name!r}: an operand depends on the batch size")
            if (
                a.const is not None
                and b.const is not None
                and a.const is not b.const
                and (a.type != b.type or not np.array_equal(a.const, b.const))
            ):
                raise _fail(path, f"node {n0.name!r}: a constant operand depends on the batch size")


def load_onnx(path: str | os.PathLike[str], *, batch: int = 1) -> Graph:
    """Import an ONNX model file as an xbarc graph with static shapes at ``batch``.

    Raises:
        FrontendError: unreadable or invalid file, unsupported op/attribute/type, dynamic shapes.
    """
    spath = str(path)
    if batch < 1:
        raise FrontendError(f"{spath}: batch size must be >= 1, got {batch}")
    m = _read(spath)
    g, symbolic = _lower_graph(m, batch)
    if symbolic:
        g1, _ = _lower_graph(m, batch + 1)
        _batch_coefficients(spath, g, g1)
        g.batch = batch
    try:
        g.verify()
    except VerifyError as e:
        raise _fail(spath, f"imported graph does not verify: {e}") from e
    return g


def supported_ops() -> list[str]:
    """ONNX op types the frontend lowers."""
    return sorted(LOWER)
