"""Backward rules of data movement: reshape, transpose, concat, gather, slice, split, pad."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xbarc.ir import ops as O
from xbarc.runtime.train.autodiff.core import (
    Array,
    Grads,
    _norm_axis,
    _register,
    _register_multi,
    unbroadcast,
)


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
