"""Backward rules of elementwise ops: activations, unary math, binary arithmetic, selection."""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from xbarc.ir import ops as O
from xbarc.runtime.train.autodiff.core import (
    Array,
    Grads,
    _is_float,
    _register,
    _times,
    unbroadcast,
)


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
