"""Backward rules: the vector-Jacobian product (VJP) of every IR op.

``vjp(op, inputs, outputs, grad_outputs)`` takes the forward inputs and outputs of one node (as
the reference interpreter :data:`xbarc.ir.interp.EVAL` computes them) and the gradient of the
loss with respect to each output, and returns the gradient with respect to each input. It is
the building block of on-chip training: the engine runs the forward, keeps what the backward
needs, and walks the graph in reverse calling :func:`vjp` per node.

Contract of every rule (enforced centrally, so it holds for :data:`BACKWARD` entries too):

* One result per input, with the input's shape and dtype (float32 in, float32 out; float16 is
  computed in float32 and cast back). ``None`` where no gradient exists: integer and bool
  tensors (``Gather`` indices, ``Where``'s condition, an integer ``Pow`` exponent, ``Cast``
  from or to an integer type), every input of an op with a non-float output (``Equal``,
  ``Less``, ``Greater``, ``Not``), and every input when all ``grad_outputs`` are ``None``.
  ``Fill`` has no inputs and returns ``[]``.
* Results are fresh, writable arrays: they never share memory with the arguments or with each
  other, so a caller may accumulate into them in place.
* Masked-out positions (``Relu``'s dead units, ``Clip``'s saturated side, the operand
  ``Where``/``Max``/``Min`` did not select, cells a pool did not pick) get exactly 0, even
  where the output gradient is inf or nan.
* Broadcasting ops reduce the gradient to each operand's shape with :func:`unbroadcast`.
* ``outputs`` must be the forward outputs of ``inputs``; several rules read them (``Sigmoid``,
  ``Tanh``, ``Exp``, ``Sqrt``, ``Reciprocal``, ``Div``, ``Pow``, ``Softmax``, ``LogSoftmax``).
* ``XbarMVM`` is differentiated with the exact float semantics of the interpreter (the
  logical weight ``w[G, R, C]``, no device effects): the weight gradient is what an on-chip
  update rule consumes.

Conventions at non-differentiable points (each value is a valid one-sided derivative or a
convex combination of them):

* ``Relu``: 0 at ``x == 0``. ``LeakyRelu``: 1 at ``x == 0`` (the forward's ``x >= 0`` branch).
  ``Abs``: 0 at 0 (``sign``).
* ``Clip``: the gradient passes strictly inside ``(min, max)`` and is 0 at ``x == min``,
  ``x == max`` and outside (the saturated side's derivative, as ``Relu`` at 0).
  ``HardSigmoid``: likewise, 0 where ``alpha * x + beta`` is exactly 0 or 1. ``HardSwish``:
  0 at ``x == -3`` and 1 at ``x == 3`` (again the saturated side).
* ``Max``/``Min`` (elementwise): ties split the gradient evenly, half to each operand.
  ``ReduceMax``: ties split evenly among all maximal elements of the reduced slice.
* ``MaxPool``/``GlobalMaxPool``: the whole gradient of a window goes to its first maximum in
  row-major window order (the first tap of the kernel that attains the maximum); padding
  cells never receive gradient.
* ``Pow``: ``d/da = b * a**(b-1)``, defined as 0 where ``b == 0``; ``d/db = y * log(a)`` where
  ``a > 0``, 0 elsewhere.
* ``Sqrt``, ``Log``, ``Reciprocal``, ``Div`` at singular points follow IEEE arithmetic (inf or
  nan), as the forward does; floating-point warnings are suppressed as in the interpreter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import special

from xbarc.errors import XbarcError
from xbarc.ir import interp
from xbarc.ir import ops as O

Array = np.ndarray[Any, Any]
Grads = list[Array | None]
VJP = Callable[[O.Op, list[Array], tuple[Array, ...], list[Array | None]], list[Array | None]]
"""``(op, inputs, outputs, grad_outputs) -> grad_inputs``."""
Rule = Callable[[Any, list[Array], tuple[Array, ...], Array], Grads]
MultiRule = Callable[[Any, list[Array], tuple[Array, ...], list[Array | None]], Grads]

BACKWARD: dict[type[O.Op], VJP] = {}
"""Backward rule (VJP) of every op kind."""


class NoBackwardError(XbarcError, KeyError):
    """An op kind has no backward rule (a ``KeyError`` whose message names the op)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# ----------------------------------------------------------------------------- public helpers


def unbroadcast(g: Array, shape: Sequence[int]) -> Array:
    """Sum ``g`` over the axes along which an operand of ``shape`` was broadcast.

    Args:
        g: Gradient with respect to a broadcast result.
        shape: Shape of the operand before broadcasting (right-aligned NumPy rules).

    Returns:
        An array of exactly ``shape``: ``g`` itself when nothing was broadcast, otherwise the
        sum over the leading axes ``g`` has in excess and over the axes where ``shape`` is 1.

    Raises:
        ValueError: If ``shape`` does not broadcast to ``g.shape``.
    """
    shape = tuple(int(d) for d in shape)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    if lead < 0:
        raise ValueError(f"cannot unbroadcast {list(g.shape)} to the larger rank {list(shape)}")
    axes = list(range(lead))
    for i, d in enumerate(shape):
        have = g.shape[lead + i]
        if d == 1 and have != 1:
            axes.append(lead + i)
        elif d != have:
            raise ValueError(f"shape {list(shape)} does not broadcast to {list(g.shape)}")
    r = g.sum(axis=tuple(axes), keepdims=True) if axes else g
    return np.asarray(r).reshape(shape)


def vjp(
    op: O.Op,
    inputs: Sequence[Array],
    outputs: Sequence[Array],
    grad_outputs: Sequence[Array | None],
) -> list[Array | None]:
    """Gradients of a loss with respect to the inputs of one node.

    Args:
        op: The node's op (attributes).
        inputs: The forward input arrays.
        outputs: The forward output arrays (``interp.EVAL[type(op)](op, inputs)``).
        grad_outputs: Gradient of the loss with respect to each output, of the output's shape,
            or ``None`` where no gradient flows.

    Returns:
        One entry per input: a fresh array of the input's shape and dtype, or ``None`` for
        inputs without a gradient (see the module docstring).

    Raises:
        NoBackwardError: If ``op``'s kind has no backward rule (a ``KeyError``).
        ValueError: If the number or shapes of ``grad_outputs`` do not match ``outputs``.
    """
    try:
        fn = BACKWARD[type(op)]
    except KeyError:
        raise NoBackwardError(
            f"no backward rule for op {getattr(op, 'NAME', '?')!r} ({type(op).__name__})"
        ) from None
    return fn(op, list(inputs), tuple(outputs), list(grad_outputs))


# ----------------------------------------------------------------------------- registration


def _is_float(a: Array) -> bool:
    return bool(np.issubdtype(a.dtype, np.floating))


def _work(a: Array) -> Array:
    """The array rules compute with: float16 is widened to float32."""
    return a.astype(np.float32) if a.dtype == np.float16 else a


def _check_grads(op: O.Op, outputs: tuple[Array, ...], grads: list[Array | None]) -> list[Any]:
    if len(grads) != len(outputs):
        raise ValueError(f"{op.NAME}: {len(outputs)} outputs but {len(grads)} output gradients")
    out: list[Any] = []
    for i, (y, g) in enumerate(zip(outputs, grads, strict=True)):
        if g is None:
            out.append(None)
            continue
        g = np.asarray(g)
        if g.shape != y.shape:
            raise ValueError(
                f"{op.NAME}: gradient of output {i} has shape {list(g.shape)}, "
                f"output has {list(y.shape)}"
            )
        out.append(_work(g) if _is_float(g) else g.astype(np.result_type(y.dtype, np.float32)))
    return out


def _finish(op: O.Op, res: Grads, inputs: list[Array], avoid: list[Array]) -> Grads:
    """Enforce the contract: None for non-float inputs, input shape and dtype, fresh arrays."""
    if len(res) != len(inputs):
        raise RuntimeError(
            f"{op.NAME}: backward returned {len(res)} gradients, {len(inputs)} inputs"
        )
    out: Grads = []
    for i, (r, x) in enumerate(zip(res, inputs, strict=True)):
        if r is None or not _is_float(x):
            out.append(None)
            continue
        r = np.asarray(r)
        if r.shape != x.shape:
            raise RuntimeError(
                f"{op.NAME}: backward gave shape {list(r.shape)} for input {i} of {list(x.shape)}"
            )
        if r.dtype != x.dtype:
            r = r.astype(x.dtype)
        elif not r.flags.writeable or any(
            np.may_share_memory(r, a) for a in (*avoid, *(p for p in out if p is not None))
        ):
            r = r.copy()
        out.append(r)
    return out


def _install(kinds: Sequence[type[O.Op]], fn: MultiRule) -> None:
    """Wrap ``fn`` with the checks and conversions of the contract; register it for ``kinds``."""

    def backward(
        op: O.Op, inputs: list[Array], outputs: tuple[Array, ...], grad_outputs: Grads
    ) -> Grads:
        gs = _check_grads(op, outputs, grad_outputs)
        if all(g is None for g in gs) or not inputs or not _is_float(outputs[0]):
            return [None] * len(inputs)
        with np.errstate(all="ignore"):
            res = fn(op, [_work(a) for a in inputs], tuple(_work(y) for y in outputs), gs)
        avoid = [*inputs, *outputs, *(g for g in grad_outputs if g is not None)]
        return _finish(op, res, inputs, avoid)

    backward.__name__ = backward.__qualname__ = f"backward{fn.__name__}"
    backward.__doc__ = fn.__doc__
    for k in kinds:
        BACKWARD[k] = backward


def _register(*kinds: type[O.Op]) -> Callable[[Rule], Rule]:
    """Register a single-output rule ``fn(op, inputs, outputs, g)`` for ``kinds``."""

    def deco(fn: Rule) -> Rule:
        def multi(op: Any, a: list[Array], y: tuple[Array, ...], gs: list[Array | None]) -> Grads:
            g = gs[0]
            assert g is not None  # _install returns early when every gradient is None
            return fn(op, a, y, g)

        multi.__name__, multi.__doc__ = fn.__name__, fn.__doc__
        _install(kinds, multi)
        return fn

    return deco


def _register_multi(*kinds: type[O.Op]) -> Callable[[MultiRule], MultiRule]:
    """Register a rule ``fn(op, inputs, outputs, grad_outputs)`` of a multi-output op."""

    def deco(fn: MultiRule) -> MultiRule:
        _install(kinds, fn)
        return fn

    return deco


def _filled(g: Array, shape: Sequence[int], dtype: Any = None) -> Array:
    """A fresh array of ``shape`` holding ``g`` broadcast to it."""
    out = np.empty(tuple(shape), dtype=g.dtype if dtype is None else dtype)
    out[...] = g
    return out


def _times(g: Array, w: Array) -> Array:
    """``g * w`` where an exact zero of ``w`` gives 0 even against an inf/nan of ``g``.

    Masks are applied by multiplication: ``np.where`` on a data-dependent mask is several
    times slower (branch mispredictions). The rare non-finite ``g`` takes the slow exact path.
    """
    out = np.asarray(g * w)
    if not np.isfinite(g).all():
        out = np.where(w == 0, out.dtype.type(0), out)
    return out


def _rows(a: Array) -> Array:
    """``a`` as a matrix ``[prod(leading axes), last axis]`` (safe for empty arrays)."""
    return a.reshape(math.prod(a.shape[:-1]), a.shape[-1])


def _norm_axis(axis: int, ndim: int) -> int:
    return axis + ndim if axis < 0 else axis


# ----------------------------------------------------------------------------- elementwise


@_register(O.Relu)
def _relu(op: O.Relu, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    return [_times(g, a[0] > 0)]


@_register(O.LeakyRelu)
def _leaky(op: O.LeakyRelu, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x = a[0]
    alpha = x.dtype.type(op.alpha)
    return [_times(g, (x >= 0) * (1 - alpha) + alpha)]


@_register(O.Sigmoid)
def _sigmoid(op: O.Sigmoid, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    s = y[0]
    return [g * (s * (1 - s))]


@_register(O.HardSigmoid)
def _hsig(op: O.HardSigmoid, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x = a[0]
    alpha = x.dtype.type(op.alpha)
    t = x * alpha + x.dtype.type(op.beta)
    return [_times(g, ((t > 0) & (t < 1)) * alpha)]


@_register(O.HardSwish)
def _hswish(op: O.HardSwish, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x = a[0]
    # 0 for x <= -3, x/3 + 1/2 inside, 1 for x >= 3.
    slope = (x > -3) * ((x < 3) * (x / 3 + x.dtype.type(0.5)) + (x >= 3))
    return [_times(g, slope)]


@_register(O.Tanh)
def _tanh(op: O.Tanh, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    t = y[0]
    return [g * (1 - t * t)]


@_register(O.Gelu)
def _gelu(op: O.Gelu, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x = a[0]
    f = x.dtype.type
    # h = y / x is Phi(x) (exact form) or (1 + tanh(u)) / 2 (tanh form): as accurate as
    # recomputing it in this precision (the forward rounded the same terms), without a second
    # erf/tanh pass, which dominates the cost.
    h = np.divide(y[0], x, out=np.full(x.shape, 0.5, dtype=x.dtype), where=x != 0)
    if op.approximate == "tanh":
        # u = c (x + k x^3); 1 - tanh(u)^2 = 4 h (1 - h).
        c = f(math.sqrt(2 / math.pi))
        k = f(0.044715)
        d = h + (2 * c) * x * h * (1 - h) * (1 + (3 * k) * (x * x))
    else:
        d = h + x * np.exp(f(-0.5) * x * x) * f(1 / math.sqrt(2 * math.pi))
    return [g * d]


@_register(O.Erf)
def _erf(op: O.Erf, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x = a[0]
    return [g * (np.exp(-x * x) * x.dtype.type(2 / math.sqrt(math.pi)))]


@_register(O.Sqrt)
def _sqrt(op: O.Sqrt, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    return [g / (2 * y[0])]


@_register(O.Exp)
def _exp(op: O.Exp, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    return [g * y[0]]


@_register(O.Log)
def _log(op: O.Log, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    return [g / a[0]]


@_register(O.Neg)
def _neg(op: O.Neg, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    return [np.negative(g)]


@_register(O.Abs)
def _abs(op: O.Abs, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    return [_times(g, np.sign(a[0]))]


@_register(O.Reciprocal)
def _recip(op: O.Reciprocal, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    r = y[0]
    return [-g * (r * r)]


@_register(O.Softplus)
def _softplus(op: O.Softplus, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    return [g * special.expit(a[0])]


@_register(O.Clip)
def _clip(op: O.Clip, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x = a[0]
    inside = np.ones(x.shape, dtype=bool)
    if op.min is not None:
        inside &= x > x.dtype.type(op.min)
    if op.max is not None:
        inside &= x < x.dtype.type(op.max)
    return [_times(g, inside)]


@_register(O.Identity, O.Dropout, O.Cast)
def _passthrough(op: O.Op, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    # Cast: None for integer/bool inputs comes from _finish; float -> float casts back.
    return [g]


@_register(O.Not, O.Equal, O.Less, O.Greater)
def _nondiff(op: O.Op, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    return [None] * len(a)


# ----------------------------------------------------------------------------- binary


@_register(O.Add)
def _add(op: O.Add, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    return [unbroadcast(g, a[0].shape), unbroadcast(g, a[1].shape)]


@_register(O.Sub)
def _sub(op: O.Sub, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    return [unbroadcast(g, a[0].shape), np.negative(unbroadcast(g, a[1].shape))]


@_register(O.Mul)
def _mul(op: O.Mul, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x, w = a
    return [unbroadcast(g * w, x.shape), unbroadcast(g * x, w.shape)]


@_register(O.Div)
def _div(op: O.Div, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x, w = a
    ga = g / w
    return [unbroadcast(ga, x.shape), unbroadcast(-ga * y[0], w.shape)]


@_register(O.Pow)
def _pow(op: O.Pow, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x, e = a
    ex = e.astype(x.dtype, copy=False)
    dx = np.where(ex == 0, 0, g * ex * np.power(x, ex - 1))
    res: Grads = [unbroadcast(dx, x.shape), None]
    if _is_float(e):
        de = np.where(x > 0, g * y[0] * np.log(np.where(x > 0, x, 1)), 0)
        res[1] = unbroadcast(de, e.shape)
    return res


def _select(g: Array, first: Array, tie: Array, second: Array) -> tuple[Array, Array]:
    half = g.dtype.type(0.5) * tie
    return _times(g, first + half), _times(g, second + half)


@_register(O.Max)
def _max(op: O.Max, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x, w = a
    ga, gb = _select(g, x > w, x == w, x < w)
    return [unbroadcast(ga, x.shape), unbroadcast(gb, w.shape)]


@_register(O.Min)
def _min(op: O.Min, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x, w = a
    ga, gb = _select(g, x < w, x == w, x > w)
    return [unbroadcast(ga, x.shape), unbroadcast(gb, w.shape)]


@_register(O.Where)
def _where(op: O.Where, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    cond, x, w = a
    return [None, unbroadcast(_times(g, cond), x.shape), unbroadcast(_times(g, ~cond), w.shape)]


# ----------------------------------------------------------------------------- linear algebra


@_register(O.MatMul)
def _matmul(op: O.MatMul, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x, w = a
    x2 = x[None, :] if x.ndim == 1 else x
    w2 = w[:, None] if w.ndim == 1 else w
    g2 = g[..., None] if w.ndim == 1 else g
    g2 = g2[..., None, :] if x.ndim == 1 else g2
    if w2.ndim == 2:
        # Batch dims come from x only: one 2-D product for the weight gradient.
        gx = g2 @ w2.T
        gw = _rows(x2).T @ _rows(g2)
    elif x2.ndim == 2:
        gw = x2.T @ g2
        gx = _rows(np.moveaxis(g2, -2, -1)).T @ _rows(np.moveaxis(w2, -2, -1))
    else:
        gx = unbroadcast(g2 @ np.swapaxes(w2, -1, -2), x2.shape)
        gw = unbroadcast(np.swapaxes(x2, -1, -2) @ g2, w2.shape)
    return [gx.reshape(x.shape), gw.reshape(w.shape)]


@_register(O.Gemm)
def _gemm(op: O.Gemm, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x, w = a[0], a[1]
    gs = g * g.dtype.type(op.alpha) if op.alpha != 1.0 else g
    xp = x.T if op.trans_a else x
    wp = w.T if op.trans_b else w
    gx = wp @ gs.T if op.trans_a else gs @ wp.T
    gw = gs.T @ xp if op.trans_b else xp.T @ gs
    res: Grads = [gx, gw]
    if len(a) == 3:
        gc = unbroadcast(g, a[2].shape)
        res.append(gc * gc.dtype.type(op.beta) if op.beta != 1.0 else gc)
    return res


def _dense(x: Array, w: Array, g: Array, with_bias: bool) -> Grads:
    """Gradients of ``x[..., K] @ w[K, N] (+ b[N])``."""
    g2 = _rows(g)
    res: Grads = [g @ w.T, _rows(x).T @ g2]
    if with_bias:
        res.append(g2.sum(axis=0))
    return res


@_register(O.Linear)
def _linear(op: O.Linear, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    return _dense(a[0], a[1], g, len(a) == 3)


def _taps(
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    out_sp: Sequence[int],
) -> list[tuple[slice, ...]]:
    """For each kernel tap (row-major), the index of its inputs in a padded ``[N, C, ...]`` grid.

    Tap ``t`` of the window at output position ``o`` reads padded position ``t*dil + o*stride``.
    """
    return [
        (
            slice(None),
            slice(None),
            *(
                slice(t * d, t * d + s * (o - 1) + 1, s)
                for t, d, s, o in zip(tap, dilations, strides, out_sp, strict=True)
            ),
        )
        for tap in np.ndindex(*kernel)
    ]


def _fold(
    lead: Sequence[int],
    padded: Sequence[int],
    taps: list[tuple[slice, ...]],
    part: Callable[[int], Array],
    dtype: Any,
) -> Array:
    """Adjoint of taking sliding windows: sum per-tap contributions onto the padded grid.

    ``part(flat_tap)`` gives the gradient ``[N, C, *out]`` of that kernel tap of every window.
    """
    out = np.zeros((*lead, *padded), dtype=dtype)
    for flat, sel in enumerate(taps):
        out[sel] += part(flat)
    return out


def _crop(xp: Array, begins: Sequence[int], sizes: Sequence[int]) -> Array:
    """The interior ``[N, C, *sizes]`` of a padded grid (a fresh array if anything is cut)."""
    if tuple(xp.shape[2:]) == tuple(sizes):
        return xp
    sel = tuple(slice(b, b + s) for b, s in zip(begins, sizes, strict=True))
    return np.ascontiguousarray(xp[(slice(None), slice(None), *sel)])


def _conv_grads(
    x: Array, wmat: Array, kernel: Sequence[int], op: O.Conv | O.XbarMVM, g: Array
) -> tuple[Array, Array]:
    """Input and logical-weight gradients of ``interp.grouped_conv(x, wmat, kernel, op)``.

    Works in the transposed column layout ``[Cin, prod(kernel), N, *out]`` (rows ordered
    ``(c, k)`` as in ``interp.im2col``), which is gathered and scattered one kernel tap at a
    time with contiguous inner blocks, and which turns both products into one batched GEMM
    over the groups with ``N * P`` as the long dimension.

    Args:
        x: Input ``[N, Cin, *spatial]``.
        wmat: Logical weights ``[G, R, Cp]`` with ``R = Cin/G * prod(kernel)``.
        kernel: Kernel extents.
        op: Supplies strides, pads and dilations.
        g: Output gradient ``[N, G*Cp, *out]``.

    Returns:
        ``(dx, dwmat)`` of the shapes of ``x`` and ``wmat``.
    """
    n, cin = x.shape[:2]
    groups, rows, cp = wmat.shape
    nsp = len(kernel)
    out_sp = tuple(g.shape[2:])
    npix = n * math.prod(out_sp)
    kk = math.prod(kernel)
    taps = _taps(kernel, op.strides, op.dilations, out_sp)
    # Output gradient as [G, Cp, N*P].
    gy = np.ascontiguousarray(g.reshape(n, groups * cp, math.prod(out_sp)).swapaxes(0, 1))
    gy = gy.reshape(groups, cp, npix)
    # Weight: dW[g] = cols_g @ gy_g^T with cols [Cin*K, N*P].
    xp = interp.pad_spatial(x, op.pads)
    cols = np.empty((cin, kk, n, *out_sp), dtype=x.dtype)
    for flat, sel in enumerate(taps):
        cols[:, flat] = xp[sel].swapaxes(0, 1)
    del xp
    dw = np.matmul(cols.reshape(groups, rows, npix), gy.swapaxes(1, 2))
    del cols
    # Input: column gradients [Cin, K, N, *out], folded back tap by tap.
    dcols = np.matmul(wmat, gy).reshape(cin, kk, n, *out_sp)
    padded = [x.shape[2 + i] + op.pads[i] + op.pads[i + nsp] for i in range(nsp)]
    dxp = _fold((n, cin), padded, taps, lambda flat: dcols[:, flat].swapaxes(0, 1), dcols.dtype)
    return _crop(dxp, op.pads[:nsp], x.shape[2:]), dw


def _bias_grad(g: Array) -> Array:
    return np.asarray(g.sum(axis=(0, *range(2, g.ndim))))


@_register(O.Conv)
def _conv(op: O.Conv, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x, w = a[0], a[1]
    dx, dwmat = _conv_grads(x, interp.conv_weight_matrix(w, op.group), w.shape[2:], op, g)
    res: Grads = [dx, dwmat.transpose(0, 2, 1).reshape(w.shape)]
    if len(a) == 3:
        res.append(_bias_grad(g))
    return res


@_register(O.XbarMVM)
def _xbar(op: O.XbarMVM, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x, w = a[0], a[1]
    if op.kind == "linear":
        dx, dw2, *db = _dense(x, w[0], g, len(a) == 3)
        assert dw2 is not None
        return [dx, dw2[None], *db]
    if op.kind != "conv":
        raise ValueError(f"{op.NAME}: unknown kind {op.kind!r}")
    dx, dw = _conv_grads(x, w, op.kernel, op, g)
    res: Grads = [dx, dw]
    if len(a) == 3:
        res.append(_bias_grad(g))
    return res


@_register(O.BatchNorm)
def _bn(op: O.BatchNorm, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x, scale, _bias, mean, var = a
    shape = (1, -1) + (1,) * (x.ndim - 2)
    axes = (0, *range(2, x.ndim))
    inv = 1 / np.sqrt(var + x.dtype.type(op.epsilon))
    k = scale * inv
    gsum = g.sum(axis=axes)
    gxc = (g * (x - mean.reshape(shape))).sum(axis=axes)
    return [
        g * k.reshape(shape),
        gxc * inv,
        gsum,
        -gsum * k,
        gxc * scale * (-0.5 * inv**3),
    ]


@_register(O.LayerNorm)
def _ln(op: O.LayerNorm, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x, scale = a[0], a[1]
    ax = _norm_axis(op.axis, x.ndim)
    norm = x.shape[ax:]
    m = math.prod(norm)
    # The normalised axes are trailing: work on [rows, m].
    x2 = x.reshape(math.prod(x.shape[:ax]), m)
    g2 = g.reshape(x2.shape)
    xhat = x2 - x2.mean(axis=1, keepdims=True)
    var = np.einsum("ij,ij->i", xhat, xhat)[:, None] / m
    r = 1 / np.sqrt(var + x.dtype.type(op.epsilon))
    xhat *= r
    gh = g2 * np.broadcast_to(scale, norm).reshape(m)
    # dx = r * (gh - mean(gh) - xhat * mean(gh * xhat))
    m2 = np.einsum("ij,ij->i", gh, xhat)[:, None] / m
    gh -= gh.mean(axis=1, keepdims=True)
    gh -= xhat * m2
    gh *= r
    dscale = (g2 * xhat).sum(axis=0).reshape(norm)
    res: Grads = [gh.reshape(x.shape), unbroadcast(dscale, scale.shape)]
    if len(a) == 3:
        res.append(unbroadcast(g2.sum(axis=0).reshape(norm), a[2].shape))
    return res


@_register(O.Softmax)
def _softmax(op: O.Softmax, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    s = y[0]
    gs = g * s
    return [gs - s * gs.sum(axis=op.axis, keepdims=True)]


@_register(O.LogSoftmax)
def _logsoftmax(op: O.LogSoftmax, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    return [g - np.exp(y[0]) * g.sum(axis=op.axis, keepdims=True)]


# ----------------------------------------------------------------------------- reductions, pools


def _reduced(op: O.Reduce, x: Array, g: Array) -> tuple[tuple[int, ...], Array]:
    """The reduced axes (non-negative) and ``g`` reshaped to keepdims form."""
    axes = tuple(sorted({_norm_axis(ax, x.ndim) for ax in op.axes}))
    keep = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    return axes, g.reshape(keep)


@_register(O.ReduceSum)
def _rsum(op: O.ReduceSum, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    _, gk = _reduced(op, a[0], g)
    return [_filled(gk, a[0].shape)]


@_register(O.ReduceMean)
def _rmean(op: O.ReduceMean, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x = a[0]
    axes, gk = _reduced(op, x, g)
    count = max(1, math.prod(x.shape[i] for i in axes))
    return [_filled(gk / gk.dtype.type(count), x.shape)]


@_register(O.ReduceMax)
def _rmax(op: O.ReduceMax, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x = a[0]
    axes, gk = _reduced(op, x, g)
    mask = x == x.max(axis=axes, keepdims=True)
    count = np.maximum(mask.sum(axis=axes, keepdims=True), 1)
    return [_times(gk / count.astype(gk.dtype), mask)]


def _pool_padded(
    x_sp: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    out_sp: Sequence[int],
) -> list[int]:
    """Spatial extents of ``interp._pool_pad``'s result (pads plus the ceil_mode extra)."""
    nsp = len(kernel)
    ext = []
    for i in range(nsp):
        need = (out_sp[i] - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1
        ext.append(max(x_sp[i] + pads[i] + pads[i + nsp], need))
    return ext


@_register(O.MaxPool)
def _maxpool(op: O.MaxPool, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x = a[0]
    nsp = len(op.kernel)
    out_sp = g.shape[2:]
    xp = interp._pool_pad(x, op.kernel, op.strides, op.pads, op.dilations, out_sp, -np.inf)
    # Running argmax over the kernel taps; strict ">" keeps the first maximum.
    best = np.full(g.shape, -np.inf, dtype=x.dtype)
    arg = np.zeros(g.shape, dtype=np.intp)
    taps = _taps(op.kernel, op.strides, op.dilations, out_sp)
    for flat, sel in enumerate(taps):
        v = xp[sel]
        arg += (v > best) * (flat - arg)
        best = np.maximum(best, v)
    dxp = _fold(x.shape[:2], xp.shape[2:], taps, lambda flat: _times(g, arg == flat), g.dtype)
    return [_crop(dxp, op.pads[:nsp], x.shape[2:])]


@_register(O.AveragePool)
def _avgpool(op: O.AveragePool, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x = a[0]
    nsp = len(op.kernel)
    ones = (1,) * nsp
    out_sp = g.shape[2:]
    # Divisor per output position, exactly as the interpreter counts it.
    mask = np.ones((1, 1, *x.shape[2:]), dtype=g.dtype)
    if op.count_include_pad:
        mask = interp.pad_spatial(mask, op.pads, 1.0)
        mpad = interp._pool_pad(mask, op.kernel, op.strides, (0,) * (2 * nsp), ones, out_sp, 0.0)
    else:
        mpad = interp._pool_pad(mask, op.kernel, op.strides, op.pads, ones, out_sp, 0.0)
    sel = (slice(None), slice(None), *(slice(0, o) for o in out_sp))
    count = interp.windows(mpad, op.kernel, op.strides, ones)[sel].sum(axis=tuple(range(-nsp, 0)))
    share = g / count
    padded = _pool_padded(x.shape[2:], op.kernel, op.strides, op.pads, ones, out_sp)
    taps = _taps(op.kernel, op.strides, ones, out_sp)
    dxp = _fold(x.shape[:2], padded, taps, lambda _flat: share, g.dtype)
    return [_crop(dxp, op.pads[:nsp], x.shape[2:])]


@_register(O.GlobalAveragePool)
def _gavg(op: O.GlobalAveragePool, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x = a[0]
    count = max(1, math.prod(x.shape[2:]))
    return [_filled(g / g.dtype.type(count), x.shape)]


@_register(O.GlobalMaxPool)
def _gmax(op: O.GlobalMaxPool, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x = a[0]
    n, c = x.shape[:2]
    flat = x.reshape(n, c, math.prod(x.shape[2:]))
    out = np.zeros(flat.shape, dtype=g.dtype)
    if flat.shape[-1]:
        idx = flat.argmax(axis=-1)[..., None]
        np.put_along_axis(out, idx, g.reshape(n, c, 1), axis=-1)
    return [out.reshape(x.shape)]


# ----------------------------------------------------------------------------- data movement


@_register(O.Reshape)
def _reshape(op: O.Reshape, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    return [g.reshape(a[0].shape)]


@_register(O.Transpose)
def _transpose(op: O.Transpose, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    inv = tuple(int(i) for i in np.argsort(op.perm))
    return [np.array(g.transpose(inv), order="C")]


@_register(O.Concat)
def _concat(op: O.Concat, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    axis = _norm_axis(op.axis, g.ndim)
    cuts = np.cumsum([x.shape[axis] for x in a])[:-1]
    res: Grads = list(np.split(g, cuts, axis=axis))
    return res


@_register(O.Gather)
def _gather(op: O.Gather, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    data, idx = a
    axis = _norm_axis(op.axis, data.ndim)
    dim = data.shape[axis]
    flat = np.where(idx < 0, idx + dim, idx).reshape(-1)
    rest = data.shape[:axis] + data.shape[axis + 1 :]
    out = np.zeros(data.shape, dtype=g.dtype)
    # g is [*data[:axis], *idx.shape, *data[axis+1:]]: bring the index axes to the front.
    gi = np.moveaxis(g, tuple(range(axis, axis + idx.ndim)), tuple(range(idx.ndim)))
    np.add.at(np.moveaxis(out, axis, 0), flat, gi.reshape(flat.size, *rest))
    return [out, None]


def _slice_sel(op: O.Slice, shape: Sequence[int]) -> tuple[slice, ...]:
    """The basic index the interpreter's ``Slice`` applies."""
    sel: list[slice] = [slice(None)] * len(shape)
    for s, e, ax, st in zip(op.starts, op.ends, op.axes, op.steps, strict=True):
        r = O.slice_range(shape[ax], s, e, st)
        sel[ax] = slice(r.start, r.stop if r.stop >= 0 else None, r.step)
    return tuple(sel)


@_register(O.Slice)
def _slice(op: O.Slice, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    out = np.zeros(a[0].shape, dtype=g.dtype)
    out[_slice_sel(op, a[0].shape)] = g
    return [out]


@_register_multi(O.Split)
def _split(op: O.Split, a: list[Array], y: tuple[Array, ...], gs: list[Array | None]) -> Grads:
    dtype = np.result_type(*(g.dtype for g in gs if g is not None))
    parts = [
        np.zeros(yi.shape, dtype=dtype) if g is None else g for yi, g in zip(y, gs, strict=True)
    ]
    return [np.concatenate(parts, axis=op.axis)]


@_register(O.Expand)
def _expand(op: O.Expand, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    return [unbroadcast(g, a[0].shape)]


@_register(O.Pad)
def _pad(op: O.Pad, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    x = a[0]
    r = x.ndim
    begin = [max(0, op.pads[i]) for i in range(r)]
    end = [max(0, op.pads[i + r]) for i in range(r)]
    crop = tuple(slice(max(0, -op.pads[i]), x.shape[i] - max(0, -op.pads[i + r])) for i in range(r))
    inner = [len(range(*c.indices(x.shape[i]))) for i, c in enumerate(crop)]
    if op.mode == "constant":
        gi = g[tuple(slice(b, b + n) for b, n in zip(begin, inner, strict=True))]
    else:
        # reflect/edge index each axis independently: fold every padded hyperplane of an axis
        # back onto the input position the index map of np.pad itself gives it.
        gi = g
        for ax in range(r):
            if not begin[ax] and not end[ax]:
                continue
            src = np.pad(np.arange(inner[ax]), (begin[ax], end[ax]), mode=op.mode)
            pre: tuple[Any, ...] = (slice(None),) * ax
            acc = gi[(*pre, slice(begin[ax], begin[ax] + inner[ax]))].copy()
            for i in (*range(begin[ax]), *range(begin[ax] + inner[ax], gi.shape[ax])):
                dst: tuple[Any, ...] = (*pre, int(src[i]))
                acc[dst] += gi[(*pre, i)]
            gi = acc
    if tuple(inner) == x.shape:
        return [gi]
    out = np.zeros(x.shape, dtype=g.dtype)
    out[crop] = gi
    return [out]


@_register(O.Fill)
def _fill(op: O.Fill, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    return []
