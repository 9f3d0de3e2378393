"""The typed graph IR: types, ops, graphs, verifier, printer and the reference interpreter."""

from __future__ import annotations

from xbarc.ir import ops
from xbarc.ir.core import Graph, Node, Placement, Use, Value, make_const
from xbarc.ir.printer import print_graph
from xbarc.ir.types import DType, TensorType, Tile

__all__ = [
    "DType",
    "Graph",
    "Node",
    "Placement",
    "TensorType",
    "Tile",
    "Use",
    "Value",
    "make_const",
    "ops",
    "print_graph",
]
