"""Backward rules of the resampling ops (``Resize``).

``DepthToSpace``/``SpaceToDepth`` and ``ConvTranspose`` need no rule of their own: the frontend
lowers them onto ``reshape``/``transpose``/``pad``/``conv``, whose rules live in
the sibling modules.
"""

from __future__ import annotations

import numpy as np

from xbarc.ir import interp
from xbarc.ir import ops as O
from xbarc.runtime.train.autodiff.core import Array, Grads, _register


def _scatter(g: Array, idx: Array, axis: int, size: int) -> Array:
    """The transpose of ``np.take(x, idx, axis)``: sum ``g``'s slices onto ``size`` positions."""
    moved = np.moveaxis(g, axis, 0)
    out = np.zeros((size, *moved.shape[1:]), dtype=g.dtype)
    np.add.at(out, idx, moved)
    return np.moveaxis(out, 0, axis)


@_register(O.Resize)
def _resize(op: O.Resize, a: list[Array], y: tuple[Array, ...], g: Array) -> Grads:
    """Scatter the gradient back through the interpreter's taps, last resized axis first.

    ``Resize`` is linear in its input: per axis ``y = x[i0]·(1-w) + x[i1]·w``, so the VJP sends
    ``g·(1-w)`` to ``i0`` and ``g·w`` to ``i1`` (``nearest``: all of ``g`` to ``i0``). An input
    position no output reads gets exactly 0.
    """
    shape = list(a[0].shape)
    axes = interp.resize_axes(op, shape)
    for ax in reversed(axes):
        size = shape[ax]
        i0, i1, w = interp.resize_taps(op, ax, size)
        if w is None:
            g = _scatter(g, i0, ax, size)
            continue
        wb = w.astype(g.dtype).reshape((-1,) + (1,) * (g.ndim - ax - 1))
        # Exact zero weights stay exact zeros against a non-finite gradient.
        lo = np.where(wb == 1, g.dtype.type(0), g * (1 - wb))
        hi = np.where(wb == 0, g.dtype.type(0), g * wb)
        g = _scatter(lo, i0, ax, size) + _scatter(hi, i1, ax, size)
    return [np.array(g, copy=True) if not axes else g]
