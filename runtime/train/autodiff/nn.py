"""Backward rules of normalisation, softmax, reductions and pools."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from xbarc.ir import interp
from xbarc.ir import ops as O
from xbarc.runtime.train.autodiff.core import Array, Grads, _filled, _norm_axis, _register, _times
from xbarc.runtime.train.autodiff.linalg import _crop, _fold, _taps


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
