"""The backward pass over a forward tape: crossbar layers on their tiles, digital ops by VJP."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from xbarc.ir import ops as O
from xbarc.runtime.train import autodiff

if TYPE_CHECKING:
    from xbarc.runtime.engine import Engine

Array = np.ndarray[Any, Any]


def backward(
    eng: Engine, tape: list[Any], gout: Array, params: dict[int, Array]
) -> tuple[dict[str, Array], dict[int, Array]]:
    """Walk ``tape`` (``Engine.forward(..., tape=)``) in reverse from the output gradient.

    Crossbar layers run the transposed MVM on the same tiles (``Engine.backward_xbar``) and
    form their weight gradient digitally; every other node uses its VJP. Returns the weight
    gradient of every crossbar layer (by layer name) and the gradient of every trainable
    digital parameter in ``params`` (by ``id`` of its array).
    """
    grads: dict[int, Array] = {}
    graph = tape[-1][0].graph
    assert graph is not None
    grads[id(graph.outputs[0])] = gout
    wgrads: dict[str, Array] = {}
    pgrads: dict[int, Array] = {}
    for node, args, outs, aux in reversed(tape):
        gys = [grads.pop(id(v), None) for v in node.outputs]
        if all(gy is None for gy in gys):
            continue
        if isinstance(node.op, O.XbarMVM):
            gy = gys[0]
            assert gy is not None
            x0 = node.inputs[0]
            need_dx = not (x0.producer is None and x0.const is None)
            gx, gw, gb = eng.backward_xbar(node, args, gy, aux, need_dx=need_dx)
            wgrads[node.op.layer] = gw
            gins: list[Array | None] = [gx, None, gb]
        else:
            gins = autodiff.vjp(node.op, args, outs, gys)
            eng.digital.elem_ops += 2 * sum(o.size for o in outs)
        for v, gi in zip(node.inputs, gins, strict=False):
            if gi is None:
                continue
            if v.const is not None:
                if id(v.const) in params:
                    key = id(v.const)
                    pgrads[key] = pgrads[key] + gi if key in pgrads else gi
                continue
            if v.producer is None and v in graph.inputs:
                continue
            k = id(v)
            grads[k] = grads[k] + gi if k in grads else gi
    return wgrads, pgrads
