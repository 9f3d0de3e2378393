"""Reference interpreter: executes any xbarc graph with NumPy.

This is the oracle of every later stage: the frontend is checked against onnxruntime through
it, passes are checked by running the graph before and after, and the crossbar runtime is
checked against it with ideal device settings. ``XbarMVM`` runs as an exact float matmul.

Each op kind has one function in :data:`EVAL` taking the op and its input arrays and returning
the output arrays. Errors name the node: ``while executing node 'conv1' (conv): ...``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import special

from xbarc.errors import InterpError
from xbarc.ir import ops as O
from xbarc.ir.core import Graph, Node, Value
from xbarc.ir.types import DType, TensorType

Array = np.ndarray[Any, Any]
Kernel = Callable[[Any, list[Array]], tuple[Array, ...]]

EVAL: dict[type[O.Op], Kernel] = {}
"""Forward function of every op kind."""


def kernel(*kinds: type[O.Op]) -> Callable[[Kernel], Kernel]:
    """Register ``fn`` as the forward function of ``kinds``."""

    def deco(fn: Kernel) -> Kernel:
        for k in kinds:
            EVAL[k] = fn
        return fn

    return deco


# ----------------------------------------------------------------------------- windows


def pad_spatial(x: Array, pads: Sequence[int], value: float = 0.0) -> Array:
    """Pad the spatial axes (2..) of ``x`` with begin pads then end pads."""
    nsp = x.ndim - 2
    if not any(pads):
        return x
    widths = [(0, 0), (0, 0)] + [(pads[i], pads[i + nsp]) for i in range(nsp)]
    return np.pad(x, widths, constant_values=value)


def windows(
    x: Array, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]
) -> Array:
    """View of all sliding windows of an already padded ``x``: ``[N, C, *out, *kernel]``."""
    nsp = len(kernel)
    spans = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilations, strict=True))
    w = sliding_window_view(x, spans, axis=tuple(range(2, 2 + nsp)))
    idx = (
        slice(None),
        slice(None),
        *(slice(None, None, s) for s in strides),
        *(slice(None, None, d) for d in dilations),
    )
    return w[idx]


def im2col(
    x: Array,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
) -> Array:
    """Patches of ``x[N, C, *spatial]`` as ``[N, P, C*prod(kernel)]``, rows ordered (c, k).

    ``P`` is the number of output positions (row-major over the output spatial axes).
    """
    nsp = len(kernel)
    w = windows(pad_spatial(x, pads), kernel, strides, dilations)
    n, c = w.shape[:2]
    out_sp = w.shape[2 : 2 + nsp]
    # [N, C, *out, *k] -> [N, *out, C, *k]
    perm = (0, *range(2, 2 + nsp), 1, *range(2 + nsp, 2 + 2 * nsp))
    cols = np.ascontiguousarray(w.transpose(perm))
    return cols.reshape(n, math.prod(out_sp), c * math.prod(kernel))


def conv_out_shape(
    x_shape: Sequence[int], op: O.Conv | O.XbarMVM, kernel: Sequence[int]
) -> list[int]:
    """Spatial output extents of a convolution."""
    nsp = len(kernel)
    return [
        O.window_out(
            x_shape[2 + i],
            kernel[i],
            op.strides[i],
            op.pads[i],
            op.pads[i + nsp],
            op.dilations[i],
            False,
        )
        for i in range(nsp)
    ]


def grouped_conv(x: Array, wmat: Array, kernel: Sequence[int], op: O.Conv | O.XbarMVM) -> Array:
    """Convolution through im2col with logical weights ``wmat[G, R, C]``: ``[N, G*C, *out]``."""
    groups, rows, cols_per = wmat.shape
    cols = im2col(x, kernel, op.strides, op.pads, op.dilations)
    out_sp = conv_out_shape(x.shape, op, kernel)
    n, p = cols.shape[:2]
    y = np.empty((n, p, groups * cols_per), dtype=np.result_type(x, wmat))
    for g in range(groups):
        np.matmul(
            cols[:, :, g * rows : (g + 1) * rows],
            wmat[g],
            out=y[:, :, g * cols_per : (g + 1) * cols_per],
        )
    return np.ascontiguousarray(y.transpose(0, 2, 1)).reshape(n, groups * cols_per, *out_sp)


def conv_weight_matrix(w: Array, group: int) -> Array:
    """ONNX conv weight ``[Cout, Cin/g, *k]`` as logical matrices ``[g, Cin/g*prod(k), Cout/g]``."""
    cout = w.shape[0]
    return np.ascontiguousarray(w.reshape(group, cout // group, -1).transpose(0, 2, 1))


# ----------------------------------------------------------------------------- elementwise


_UNARY: dict[type[O.Op], Callable[[Array], Array]] = {
    O.Relu: lambda x: np.maximum(x, 0),
    O.Sigmoid: lambda x: special.expit(x),
    O.Tanh: np.tanh,
    O.Erf: lambda x: special.erf(x),
    O.Sqrt: np.sqrt,
    O.Exp: np.exp,
    O.Log: np.log,
    O.Neg: np.negative,
    O.Abs: np.abs,
    O.Reciprocal: np.reciprocal,
    O.Softplus: lambda x: np.logaddexp(x, 0),
    O.HardSwish: lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
    O.Identity: lambda x: x,
    O.Dropout: lambda x: x,
    O.Not: np.logical_not,
}


def _unary(op: O.Op, a: list[Array]) -> tuple[Array, ...]:
    x = a[0]
    y = np.asarray(_UNARY[type(op)](x))
    return (y.astype(x.dtype, copy=False),)


for _k in _UNARY:
    EVAL[_k] = _unary


@kernel(O.LeakyRelu)
def _leaky(op: O.LeakyRelu, a: list[Array]) -> tuple[Array, ...]:
    x = a[0]
    return (np.where(x >= 0, x, x * x.dtype.type(op.alpha)),)


@kernel(O.HardSigmoid)
def _hsig(op: O.HardSigmoid, a: list[Array]) -> tuple[Array, ...]:
    x = a[0]
    return (np.clip(x * x.dtype.type(op.alpha) + x.dtype.type(op.beta), 0, 1).astype(x.dtype),)


@kernel(O.Gelu)
def _gelu(op: O.Gelu, a: list[Array]) -> tuple[Array, ...]:
    x = a[0]
    if op.approximate == "tanh":
        c = math.sqrt(2 / math.pi)
        y = 0.5 * x * (1 + np.tanh(c * (x + 0.044715 * (x * x * x))))
    else:
        y = 0.5 * x * (1 + special.erf(x / math.sqrt(2)))
    return (y.astype(x.dtype, copy=False),)


@kernel(O.Clip)
def _clip(op: O.Clip, a: list[Array]) -> tuple[Array, ...]:
    x = a[0]
    lo = -np.inf if op.min is None else op.min
    hi = np.inf if op.max is None else op.max
    return (np.clip(x, lo, hi).astype(x.dtype, copy=False),)


@kernel(O.Cast)
def _cast(op: O.Cast, a: list[Array]) -> tuple[Array, ...]:
    return (a[0].astype(DType(op.to).numpy),)


def _int_div(a: Array, b: Array) -> Array:
    q = np.abs(a) // np.abs(b)
    return np.where((a < 0) ^ (b < 0), -q, q).astype(np.result_type(a, b))


_BINARY: dict[type[O.Op], Callable[[Array, Array], Array]] = {
    O.Add: np.add,
    O.Sub: np.subtract,
    O.Mul: np.multiply,
    O.Max: np.maximum,
    O.Min: np.minimum,
    O.Equal: np.equal,
    O.Less: np.less,
    O.Greater: np.greater,
}


def _binary(op: O.Op, a: list[Array]) -> tuple[Array, ...]:
    return (np.asarray(_BINARY[type(op)](a[0], a[1])),)


for _k in _BINARY:
    EVAL[_k] = _binary


@kernel(O.Div)
def _div(op: O.Div, a: list[Array]) -> tuple[Array, ...]:
    x, y = a
    if np.issubdtype(x.dtype, np.integer):
        return (_int_div(x, y),)
    return (np.divide(x, y),)


@kernel(O.Pow)
def _pow(op: O.Pow, a: list[Array]) -> tuple[Array, ...]:
    x, y = a
    return (np.power(x, y.astype(x.dtype, copy=False)).astype(x.dtype, copy=False),)


@kernel(O.Where)
def _where(op: O.Where, a: list[Array]) -> tuple[Array, ...]:
    return (np.where(a[0], a[1], a[2]),)


# ----------------------------------------------------------------------------- linear algebra


@kernel(O.MatMul)
def _matmul(op: O.MatMul, a: list[Array]) -> tuple[Array, ...]:
    return (np.matmul(a[0], a[1]),)


@kernel(O.Gemm)
def _gemm(op: O.Gemm, a: list[Array]) -> tuple[Array, ...]:
    x = a[0].T if op.trans_a else a[0]
    w = a[1].T if op.trans_b else a[1]
    y = x @ w
    if op.alpha != 1.0:
        y = y * y.dtype.type(op.alpha)
    if len(a) == 3:
        c = a[2] if op.beta == 1.0 else a[2] * a[2].dtype.type(op.beta)
        y = y + c
    return (y,)


@kernel(O.Linear)
def _linear(op: O.Linear, a: list[Array]) -> tuple[Array, ...]:
    y = a[0] @ a[1]
    if len(a) == 3:
        y = y + a[2]
    return (y,)


@kernel(O.Conv)
def _conv(op: O.Conv, a: list[Array]) -> tuple[Array, ...]:
    x, w = a[0], a[1]
    y = grouped_conv(x, conv_weight_matrix(w, op.group), w.shape[2:], op)
    if len(a) == 3:
        y += a[2].reshape(1, -1, *(1,) * (x.ndim - 2))
    return (y,)


@kernel(O.XbarMVM)
def _xbar(op: O.XbarMVM, a: list[Array]) -> tuple[Array, ...]:
    x, w = a[0], a[1]
    if op.kind == "linear":
        y = x @ w[0]
        if len(a) == 3:
            y = y + a[2]
        return (y,)
    y = grouped_conv(x, w, op.kernel, op)
    if len(a) == 3:
        y += a[2].reshape(1, -1, *(1,) * (x.ndim - 2))
    return (y,)


@kernel(O.BatchNorm)
def _bn(op: O.BatchNorm, a: list[Array]) -> tuple[Array, ...]:
    x, scale, bias, mean, var = a
    shape = (1, -1) + (1,) * (x.ndim - 2)
    k = scale / np.sqrt(var + x.dtype.type(op.epsilon))
    y = (x - mean.reshape(shape)) * k.reshape(shape) + bias.reshape(shape)
    return (y.astype(x.dtype, copy=False),)


@kernel(O.LayerNorm)
def _ln(op: O.LayerNorm, a: list[Array]) -> tuple[Array, ...]:
    x = a[0]
    axes = tuple(range(op.axis % x.ndim, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    d = x - mean
    var = (d * d).mean(axis=axes, keepdims=True)
    y = d / np.sqrt(var + x.dtype.type(op.epsilon)) * a[1]
    if len(a) == 3:
        y = y + a[2]
    return (y.astype(x.dtype, copy=False),)


@kernel(O.Softmax)
def _softmax(op: O.Softmax, a: list[Array]) -> tuple[Array, ...]:
    x = a[0]
    e = np.exp(x - x.max(axis=op.axis, keepdims=True))
    return (e / e.sum(axis=op.axis, keepdims=True),)


@kernel(O.LogSoftmax)
def _logsoftmax(op: O.LogSoftmax, a: list[Array]) -> tuple[Array, ...]:
    x = a[0]
    s = x - x.max(axis=op.axis, keepdims=True)
    return (s - np.log(np.exp(s).sum(axis=op.axis, keepdims=True)),)


# ----------------------------------------------------------------------------- reductions, pools


@kernel(O.ReduceMean, O.ReduceSum, O.ReduceMax)
def _reduce(op: O.Reduce, a: list[Array]) -> tuple[Array, ...]:
    fns: dict[type[O.Op], Callable[..., Any]] = {
        O.ReduceMean: np.mean,
        O.ReduceSum: np.sum,
        O.ReduceMax: np.max,
    }
    fn = fns[type(op)]
    x = a[0]
    return (np.asarray(fn(x, axis=op.axes, keepdims=op.keepdims)).astype(x.dtype, copy=False),)


@kernel(O.MaxPool)
def _maxpool(op: O.MaxPool, a: list[Array]) -> tuple[Array, ...]:
    x = a[0]
    out_sp = O.MaxPool.infer(op, [TensorType(x.shape)])[0].shape[2:]
    xp = _pool_pad(x, op.kernel, op.strides, op.pads, op.dilations, out_sp, -np.inf)
    y = _tap_reduce(xp, op.kernel, op.strides, op.dilations, out_sp, np.maximum)
    return (y.astype(x.dtype, copy=False),)


def _tap_reduce(
    xp: Array,
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    out_sp: Sequence[int],
    ufunc: np.ufunc,
) -> Array:
    """``ufunc``-reduce the windows of a padded ``xp`` tap by tap: ``[N, C, *out_sp]``.

    Each kernel tap is one strided slice of ``xp``, combined elementwise in tap order
    (row-major over the kernel); much faster than reducing the short window axes of a
    sliding-window view.
    """
    acc: Array | None = None
    for tap in itertools.product(*(range(k) for k in kernel)):
        spatial = [
            slice(t * d, t * d + (o - 1) * s + 1, s)
            for t, d, o, s in zip(tap, dilations, out_sp, strides, strict=True)
        ]
        sel = (slice(None), slice(None), *spatial)
        if acc is None:
            acc = np.array(xp[sel])
        else:
            ufunc(acc, xp[sel], out=acc)
    assert acc is not None
    return acc


def _pool_pad(
    x: Array,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    out_sp: Sequence[int],
    value: float,
) -> Array:
    """Pad for pooling, adding the extra end padding ceil_mode needs."""
    nsp = len(kernel)
    ends = list(pads[nsp:])
    for i in range(nsp):
        need = (out_sp[i] - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1
        have = x.shape[2 + i] + pads[i] + ends[i]
        ends[i] += max(0, need - have)
    return pad_spatial(x, (*pads[:nsp], *ends), value)


@kernel(O.AveragePool)
def _avgpool(op: O.AveragePool, a: list[Array]) -> tuple[Array, ...]:
    x = a[0]
    nsp = len(op.kernel)
    ones = (1,) * nsp
    out_sp = O.AveragePool.infer(op, [TensorType(x.shape)])[0].shape[2:]
    axes = tuple(range(-nsp, 0))
    sel = (slice(None), slice(None), *(slice(0, o) for o in out_sp))
    xp = _pool_pad(x, op.kernel, op.strides, op.pads, ones, out_sp, 0.0)
    total = _tap_reduce(xp, op.kernel, op.strides, ones, out_sp, np.add)
    # Divisor: cells of the input, plus the explicit pads if count_include_pad (never the
    # extra ceil_mode padding).
    mask = np.zeros((1, 1, *x.shape[2:]), dtype=x.dtype)
    mask[...] = 1
    if op.count_include_pad:
        mask = pad_spatial(mask, op.pads, 1.0)
        mpad = _pool_pad(mask, op.kernel, op.strides, (0,) * (2 * nsp), ones, out_sp, 0.0)
    else:
        mpad = _pool_pad(mask, op.kernel, op.strides, op.pads, ones, out_sp, 0.0)
    count = windows(mpad, op.kernel, op.strides, ones)[sel].sum(axis=axes)
    return ((total / count).astype(x.dtype, copy=False),)


@kernel(O.GlobalAveragePool, O.GlobalMaxPool)
def _gpool(op: O.Op, a: list[Array]) -> tuple[Array, ...]:
    x = a[0]
    axes = tuple(range(2, x.ndim))
    fn = np.max if isinstance(op, O.GlobalMaxPool) else np.mean
    return (np.asarray(fn(x, axis=axes, keepdims=True)).astype(x.dtype, copy=False),)


# ----------------------------------------------------------------------------- data movement


@kernel(O.Reshape)
def _reshape(op: O.Reshape, a: list[Array]) -> tuple[Array, ...]:
    return (a[0].reshape(op.shape),)


@kernel(O.Transpose)
def _transpose(op: O.Transpose, a: list[Array]) -> tuple[Array, ...]:
    return (a[0].transpose(op.perm).copy(),)


@kernel(O.Concat)
def _concat(op: O.Concat, a: list[Array]) -> tuple[Array, ...]:
    return (np.concatenate(a, axis=op.axis),)


@kernel(O.Gather)
def _gather(op: O.Gather, a: list[Array]) -> tuple[Array, ...]:
    data, idx = a
    dim = data.shape[op.axis]
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        raise IndexError(f"gather index out of range for axis of {dim}")
    return (np.take(data, np.where(idx < 0, idx + dim, idx), axis=op.axis),)


@kernel(O.Slice)
def _slice(op: O.Slice, a: list[Array]) -> tuple[Array, ...]:
    x = a[0]
    sel: list[slice] = [slice(None)] * x.ndim
    for s, e, ax, st in zip(op.starts, op.ends, op.axes, op.steps, strict=True):
        r = O.slice_range(x.shape[ax], s, e, st)
        sel[ax] = slice(r.start, r.stop if r.stop >= 0 else None, r.step) if r else slice(0, 0)
    return (np.ascontiguousarray(x[tuple(sel)]),)


@kernel(O.Split)
def _split(op: O.Split, a: list[Array]) -> tuple[Array, ...]:
    cuts = np.cumsum(op.sizes)[:-1]
    return tuple(np.ascontiguousarray(p) for p in np.split(a[0], cuts, axis=op.axis))


@kernel(O.Expand)
def _expand(op: O.Expand, a: list[Array]) -> tuple[Array, ...]:
    shape = O.broadcast_shapes(op, a[0].shape, op.shape)
    return (np.array(np.broadcast_to(a[0], shape)),)


@kernel(O.Pad)
def _pad(op: O.Pad, a: list[Array]) -> tuple[Array, ...]:
    x = a[0]
    r = x.ndim
    crop = tuple(slice(max(0, -op.pads[i]), x.shape[i] - max(0, -op.pads[i + r])) for i in range(r))
    x = x[crop]
    widths = [(max(0, op.pads[i]), max(0, op.pads[i + r])) for i in range(r)]
    if op.mode == "constant":
        return (np.pad(x, widths, constant_values=op.value),)
    mode: Any = op.mode
    return (np.pad(x, widths, mode=mode),)


def _source_coords(op: O.Resize, axis: int, size: int) -> Array:
    """Input coordinate of every output index along ``axis``, in float32 as onnxruntime."""
    f = np.float32
    out = op.sizes[axis]
    scale = f(op.scales[axis])
    i = np.arange(out, dtype=f)
    half = f(0.5)
    if op.coord == "asymmetric":
        return i / scale
    if op.coord == "half_pixel":
        return (i + half) / scale - half
    if op.coord == "pytorch_half_pixel":
        return (i + half) / scale - half if out > 1 else np.zeros(out, f)
    if op.coord == "align_corners":
        return np.zeros(out, f) if out == 1 else i * f(size - 1) / f(out - 1)
    assert op.coord == "half_pixel_symmetric"
    adjust = f(out) / (scale * f(size))
    offset = f(size) / f(2) * (f(1) - adjust)
    return offset + (i + half) / scale - half


def resize_taps(op: O.Resize, axis: int, size: int) -> tuple[Array, Array, Array | None]:
    """The two input indices and the weight of the second one for every output index.

    ``Resize`` along ``axis`` is ``y[i] = x[i0[i]] · (1 - w[i]) + x[i1[i]] · w[i]``; ``w`` is
    None for ``nearest`` (``y[i] = x[i0[i]]``). The autodiff rule scatters through the same taps.
    """
    x = _source_coords(op, axis, size)
    if op.mode == "nearest":
        x64 = x.astype(np.float64)
        fl = np.floor(x64)
        tie = x64 == fl + 0.5
        if op.nearest_mode == "floor":
            idx = fl
        elif op.nearest_mode == "ceil":
            idx = np.ceil(x64)
        else:
            up = 1.0 if op.nearest_mode == "round_prefer_ceil" else 0.0
            idx = np.where(tie, fl + up, np.floor(x64 + 0.5))
        i0 = np.clip(idx, 0, size - 1).astype(np.intp)
        return i0, i0, None
    xc = np.clip(x, np.float32(0), np.float32(size - 1))
    i0 = np.minimum(np.floor(xc).astype(np.intp), size - 1)
    i1 = np.minimum(i0 + 1, size - 1)
    return i0, i1, xc - i0.astype(np.float32)


def resize_axes(op: O.Resize, shape: Sequence[int]) -> list[int]:
    """The axes a ``Resize`` changes (an axis mapped onto itself one to one is skipped)."""
    moved = []
    for ax, size in enumerate(shape):
        i0, _, w = resize_taps(op, ax, size)
        if (
            size != op.sizes[ax]
            or not np.array_equal(i0, np.arange(size))
            or (w is not None and np.any(w))
        ):
            moved.append(ax)
    return moved


@kernel(O.Resize)
def _resize(op: O.Resize, a: list[Array]) -> tuple[Array, ...]:
    y = a[0]
    for ax in resize_axes(op, y.shape):
        i0, i1, w = resize_taps(op, ax, y.shape[ax])
        lo = np.take(y, i0, axis=ax)
        if w is None:
            y = lo
            continue
        wb = w.astype(y.dtype).reshape((-1,) + (1,) * (y.ndim - ax - 1))
        y = lo * (1 - wb) + np.take(y, i1, axis=ax) * wb
    return (np.array(y, copy=y is a[0]),)


@kernel(O.Fill)
def _fill(op: O.Fill, a: list[Array]) -> tuple[Array, ...]:
    return (np.full(op.shape, op.value, dtype=DType(op.dtype).numpy),)


# ----------------------------------------------------------------------------- driver


def eval_node(node: Node, args: list[Array]) -> tuple[Array, ...]:
    """Run one node; errors name it."""
    try:
        fn = EVAL[type(node.op)]
    except KeyError:
        raise InterpError(
            f"while executing node {node.name!r}: no reference kernel for op {node.op.NAME!r}"
        ) from None
    try:
        with np.errstate(all="ignore"):
            outs = fn(node.op, args)
    except Exception as e:
        raise InterpError(f"while executing node {node.name!r} ({node.op.NAME}): {e}") from e
    for v, y in zip(node.outputs, outs, strict=True):
        if y.shape != v.type.shape:
            raise InterpError(
                f"while executing node {node.name!r} ({node.op.NAME}): produced shape "
                f"{list(y.shape)}, type says {v.type}"
            )
    return tuple(
        y.astype(v.type.dtype.numpy, copy=False) for v, y in zip(node.outputs, outs, strict=True)
    )


def run(
    g: Graph,
    inputs: Sequence[Array] | Mapping[str, Array],
    *,
    keep: bool = False,
) -> list[Array]:
    """Execute ``g`` on ``inputs`` (positional or by input name); return the outputs.

    With ``keep=True`` the intermediate values are retained (debugging); otherwise each value is
    freed after its last use.
    """
    if isinstance(inputs, Mapping):
        try:
            arrays = [inputs[v.name] for v in g.inputs]
        except KeyError as e:
            raise InterpError(f"missing graph input {e.args[0]!r}") from None
    else:
        arrays = list(inputs)
    if len(arrays) != len(g.inputs):
        raise InterpError(f"graph {g.name!r} takes {len(g.inputs)} inputs, got {len(arrays)}")
    env: dict[int, Array] = {}
    for v, x in zip(g.inputs, arrays, strict=True):
        x = np.asarray(x)
        if x.shape != v.type.shape:
            raise InterpError(f"input {v.name!r} has shape {list(x.shape)}, expected {v.type}")
        env[id(v)] = x.astype(v.type.dtype.numpy, copy=False)
    remaining = _use_counts(g)
    outputs = {id(v) for v in g.outputs}

    def fetch(v: Value) -> Array:
        if v.const is not None:
            return v.const
        return env[id(v)]

    for node in g.nodes:
        outs = eval_node(node, [fetch(v) for v in node.inputs])
        for v, y in zip(node.outputs, outs, strict=True):
            env[id(v)] = y
        if not keep:
            for v in node.inputs:
                remaining[id(v)] -= 1
                if remaining[id(v)] == 0 and id(v) not in outputs and v.const is None:
                    env.pop(id(v), None)
    return [fetch(v) for v in g.outputs]


def _use_counts(g: Graph) -> dict[int, int]:
    counts: dict[int, int] = {}
    for node in g.nodes:
        for v in node.inputs:
            counts[id(v)] = counts.get(id(v), 0) + 1
    return counts
