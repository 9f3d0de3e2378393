"""The VJP registry and the helpers every backward rule uses (see the package docstring)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xbarc.errors import XbarcError
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
