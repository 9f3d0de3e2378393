"""Backward rules of products: MatMul, Gemm, linear layers, convolutions, crossbar MVMs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xbarc.ir import interp
from xbarc.ir import ops as O
from xbarc.runtime.train.autodiff.core import (
    Array,
    Grads,
    _norm_axis,
    _register,
    _rows,
    unbroadcast,
)


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
