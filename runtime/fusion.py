"""Output epilogues of ideal convolutions: a residual ``Add`` and a ``Relu`` fused into the write.

An ideal, untaped conv (``CrossbarReads._conv_ideal``) can add a residual and apply a ReLU while
it writes its output planes; the fused nodes then pass the conv's output through (their digital
work is still counted). :func:`fusions_for` finds those patterns in a graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from xbarc.ir import ops as O
from xbarc.ir.core import Graph, Node, Value


@dataclass(frozen=True, slots=True)
class Epilogue:
    """What an ideal conv applies while writing its output (see :func:`fusions_for`)."""

    residual: Value | None
    """Added to the output (an ``Add`` operand of the same shape), or None."""
    relu: bool
    """Then ``max(·, 0)``."""
    passed: dict[int, int]
    """``id(node) → operand index`` of the fused nodes: each passes that operand through."""


def fusions_for(g: Graph, runs_conv_ideal: Callable[[Node], bool]) -> dict[int, Epilogue]:
    """Output epilogues of the ideal convs of ``g`` (``id(conv node) → Epilogue``).

    An ideal conv (``runs_conv_ideal(node)``) whose only use is ``Add(conv, r)`` with an ``r`` of
    the same shape that is already computed (a residual) adds ``r`` while writing its output,
    and applies the ReLU that is the add's (or else the conv's) only use. Inference forwards
    only.
    """
    users: dict[int, list[Node]] = {}
    made: dict[int, int] = {}  # id(value) → index of the node that computes it
    for i, node in enumerate(g.nodes):
        for v in node.inputs:
            users.setdefault(id(v), []).append(node)
        for v in node.outputs:
            made[id(v)] = i
    outputs = {id(v) for v in g.outputs}

    def only_use(v: Value) -> Node | None:
        use = users.get(id(v), [])
        return use[0] if id(v) not in outputs and len(use) == 1 else None

    fusions: dict[int, Epilogue] = {}
    for i, node in enumerate(g.nodes):
        if not isinstance(node.op, O.XbarMVM) or not runs_conv_ideal(node):
            continue
        y = node.outputs[0]
        residual, passed = None, {}
        nxt = only_use(y)
        if nxt is not None and isinstance(nxt.op, O.Add) and len(nxt.inputs) == 2:
            k = 0 if nxt.inputs[0] is y else 1
            r = nxt.inputs[1 - k]
            ready = made.get(id(r), -1) < i  # computed before the conv (or an input)
            if r is not y and r.type == y.type and ready:
                residual, passed[id(nxt)] = r, k
                y = nxt.outputs[0]
                nxt = only_use(y)
        relu = nxt is not None and isinstance(nxt.op, O.Relu)
        if relu:
            assert nxt is not None
            passed[id(nxt)] = 0
        if passed:
            fusions[id(node)] = Epilogue(residual, relu, passed)
    return fusions
