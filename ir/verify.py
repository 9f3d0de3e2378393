"""``Graph.verify``: the invariants every pass must keep."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xbarc.errors import VerifyError
from xbarc.ir.core import Use
from xbarc.ir.ops import XbarMVM

if TYPE_CHECKING:
    from xbarc.ir.core import Graph, Node, Value


def _where(node: Node) -> str:
    return f"node {node.name!r} ({node.op.NAME})"


def verify(g: Graph) -> None:
    """Raise ``VerifyError`` naming the first broken invariant.

    Checks: graph inputs are plain values; each node belongs to ``g`` once; operands are defined
    before use (topological order); use lists match operands exactly; output values point back to
    their producer; each op's ``infer`` reproduces the recorded output types; tiles name layers.
    """
    defined: set[int] = set()
    for v in g.inputs:
        if v.producer is not None or v.is_const:
            raise VerifyError(f"graph input {v.name!r} has a producer or data")
        defined.add(id(v))
    seen_nodes: set[int] = set()
    all_values: dict[int, Value] = {id(v): v for v in g.inputs}
    for node in g.nodes:
        if node.graph is not g or id(node) in seen_nodes:
            raise VerifyError(f"{_where(node)} is not owned by graph {g.name!r} exactly once")
        seen_nodes.add(id(node))
        for i, v in enumerate(node.inputs):
            if not v.is_const and id(v) not in defined:
                raise VerifyError(
                    f"{_where(node)}: operand {i} ({v.name!r}) is used before defined"
                )
            all_values[id(v)] = v
        try:
            types = node.op.infer([v.type for v in node.inputs])
        except VerifyError as e:
            raise VerifyError(f"{_where(node)}: {e}") from e
        if types != tuple(v.type for v in node.outputs):
            got = ", ".join(str(v.type) for v in node.outputs)
            want = ", ".join(str(t) for t in types)
            raise VerifyError(f"{_where(node)}: output types {got} but the op infers {want}")
        for i, v in enumerate(node.outputs):
            if v.producer is not node or v.index != i or v.is_const:
                raise VerifyError(f"{_where(node)}: output {i} does not point back to its node")
            if id(v) in defined:
                raise VerifyError(f"{_where(node)}: output {i} is defined twice")
            defined.add(id(v))
            all_values[id(v)] = v
    for v in g.outputs:
        if not v.is_const and id(v) not in defined:
            raise VerifyError(f"graph output {v.name!r} is not defined in the graph")
    for v in all_values.values():
        for use in v.uses:
            if id(use.node) not in seen_nodes:
                raise VerifyError(f"value {v.name!r} lists a use by a node outside the graph")
            if use.index >= len(use.node.inputs) or use.node.inputs[use.index] is not v:
                raise VerifyError(f"value {v.name!r}: stale use by {_where(use.node)}")
    for node in g.nodes:
        for i, v in enumerate(node.inputs):
            if v.uses.count(Use(node, i)) != 1:
                raise VerifyError(f"{_where(node)}: operand {i} missing from {v.name!r}'s uses")
    if g.tiles:
        layers = {n.op.layer for n in g.nodes if isinstance(n.op, XbarMVM)}
        for t in g.tiles:
            if t.layer not in layers:
                raise VerifyError(f"tile {t.tile} names unknown layer {t.layer!r}")
