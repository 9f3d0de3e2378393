"""Values, nodes and graphs with use lists.

``Value`` and ``Node`` compare by identity. A graph keeps its nodes in topological order; every
mutation goes through :meth:`Graph.add`, :meth:`Graph.set_input`, :meth:`Graph.replace_all_uses`
and :meth:`Graph.remove`, which keep the use lists consistent. ``uses`` returns snapshots, so a
pass may mutate while it iterates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import networkx as nx
import numpy as np

from xbarc.errors import VerifyError
from xbarc.ir.ops import Op
from xbarc.ir.types import TensorType, Tile


class Use(NamedTuple):
    """Operand ``index`` of ``node`` reads the value."""

    node: Node
    index: int  # type: ignore[assignment]  # the operand index, shadowing tuple.index


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a node runs and what it costs per inference (set by ``lower-to-mvm``)."""

    unit: str
    """``xbar`` (crossbar tiles) or ``digital`` (digital unit)."""
    macs: int = 0
    """Multiply-accumulates per inference (crossbar: MVM MACs; digital: e.g. attention)."""
    elem_ops: int = 0
    """Other arithmetic element operations per inference (adds, exp, compare, ...)."""


@dataclass(eq=False, slots=True)
class Value:
    """An SSA value: a graph input, a constant, or an output of a node."""

    type: TensorType
    name: str = ""
    producer: Node | None = None
    index: int = 0
    """Output index in the producer."""
    const: np.ndarray | None = None
    """The data of a constant (read-only); ``None`` for computed values and inputs."""
    param: bool = False
    """A constant that is a model parameter (from an ONNX initializer), i.e. trainable."""
    _uses: list[Use] = field(default_factory=list, repr=False)

    @property
    def uses(self) -> list[Use]:
        """A snapshot of the operands that read this value."""
        return list(self._uses)

    @property
    def is_const(self) -> bool:
        """True for constants."""
        return self.const is not None

    def __repr__(self) -> str:
        return f"Value({self.name or hex(id(self))}: {self.type})"


@dataclass(eq=False, slots=True)
class Node:
    """One operation: an op (attributes), input values and the output values it defines."""

    op: Op
    inputs: list[Value]
    outputs: list[Value]
    name: str = ""
    graph: Graph | None = None
    placement: Placement | None = None
    batch_coef: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Per integer-tuple attribute, how each entry grows with the batch size: at batch ``B``
    the attribute is ``value + coef * (B - graph.batch)``. Empty for batch-independent nodes."""

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.op.NAME})"


def op_at_batch(op: Op, coef: dict[str, tuple[int, ...]], delta: int) -> Op:
    """``op`` with its batch-dependent integer attributes moved by ``delta`` batch entries."""
    changes = {}
    for attr, c in coef.items():
        base = getattr(op, attr)
        changes[attr] = tuple(int(b) + int(k) * delta for b, k in zip(base, c, strict=True))
    return dataclasses.replace(op, **changes)


def make_const(array: np.ndarray, name: str = "", *, param: bool = False) -> Value:
    """A constant value owning a read-only copy-free view of ``array``."""
    arr = np.asarray(array)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    if arr.flags.writeable:
        arr = arr.view()
        arr.flags.writeable = False
    return Value(TensorType.of(arr), name=name, const=arr, param=param)


class Graph:
    """A dataflow graph with static types, kept in topological order.

    Attributes:
        name: Model name.
        inputs: Graph inputs (non-constant values with no producer).
        outputs: Values the graph returns.
        nodes: Nodes in topological order.
        tiles: Tile placement of crossbar layers (filled by ``partition-tiles``).
        tile_shape: Rows and columns of one physical tile, once partitioned.
        batch: The batch size the static shapes are instantiated at, or ``None`` when the model
            fixes its batch size (then axis 0 of the inputs is not rebindable).
    """

    def __init__(self, name: str = "graph") -> None:
        self.name = name
        self.batch: int | None = None
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self.tiles: list[Tile] = []
        self.tile_shape: tuple[int, int] | None = None

    # ------------------------------------------------------------------ building

    def add_input(self, type: TensorType, name: str = "") -> Value:
        """Append a graph input."""
        v = Value(type, name=name)
        self.inputs.append(v)
        return v

    def add(
        self,
        op: Op,
        inputs: Sequence[Value],
        name: str = "",
        *,
        before: Node | None = None,
        after: Node | None = None,
        out_names: Sequence[str] = (),
    ) -> Node:
        """Create a node, infer its output types and insert it (at the end by default)."""
        types = op.infer([v.type for v in inputs])
        outs = [
            Value(t, name=out_names[i] if i < len(out_names) else "", index=i)
            for i, t in enumerate(types)
        ]
        node = Node(op, list(inputs), outs, name=name or op.NAME, graph=self)
        for v in outs:
            v.producer = node
        for i, v in enumerate(node.inputs):
            v._uses.append(Use(node, i))
        if before is not None:
            self.nodes.insert(self._index(before), node)
        elif after is not None:
            self.nodes.insert(self._index(after) + 1, node)
        else:
            self.nodes.append(node)
        return node

    def _index(self, node: Node) -> int:
        if node.graph is not self:
            raise VerifyError(f"node {node.name!r} is not in graph {self.name!r}")
        for i, n in enumerate(self.nodes):
            if n is node:
                return i
        raise VerifyError(f"node {node.name!r} claims graph {self.name!r} but is not listed")

    # ------------------------------------------------------------------ mutation

    def set_input(self, node: Node, index: int, value: Value) -> None:
        """Make operand ``index`` of ``node`` read ``value``."""
        old = node.inputs[index]
        old._uses.remove(Use(node, index))
        node.inputs[index] = value
        value._uses.append(Use(node, index))

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Redirect every reader of ``old`` (and the graph outputs) to ``new``."""
        if old is new:
            return
        for use in old.uses:
            self.set_input(use.node, use.index, new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def replace_op(self, node: Node, op: Op) -> None:
        """Swap a node's op for one with the same output types."""
        types = op.infer([v.type for v in node.inputs])
        if tuple(v.type for v in node.outputs) != types:
            raise VerifyError(f"replacing op of {node.name!r} would change its types to {types}")
        node.op = op

    def remove(self, node: Node) -> None:
        """Delete a node whose outputs are unused; its operands lose the use."""
        for v in node.outputs:
            if v._uses or any(v is o for o in self.outputs):
                raise VerifyError(f"cannot remove {node.name!r}: output {v.name!r} is still used")
        del self.nodes[self._index(node)]
        for i, v in enumerate(node.inputs):
            v._uses.remove(Use(node, i))
        node.graph = None

    def remove_dead(self) -> int:
        """Remove nodes whose outputs nobody reads; return how many were removed."""
        removed = 0
        live = {id(v) for v in self.outputs}
        for node in reversed(self.nodes):
            if any(v._uses or id(v) in live for v in node.outputs):
                continue
            self.remove(node)
            removed += 1
        return removed

    def sort(self) -> None:
        """Reorder nodes topologically (stable: ties keep their current order)."""
        order = {id(n): i for i, n in enumerate(self.nodes)}
        dag = nx.DiGraph()
        dag.add_nodes_from(range(len(self.nodes)))
        for i, n in enumerate(self.nodes):
            for v in n.inputs:
                if v.producer is not None and id(v.producer) in order:
                    dag.add_edge(order[id(v.producer)], i)
        try:
            idx = list(nx.lexicographical_topological_sort(dag))
        except nx.NetworkXUnfeasible:
            cycle = nx.find_cycle(dag)
            names = [self.nodes[a].name for a, _ in cycle]
            raise VerifyError(f"graph {self.name!r} has a cycle through {names}") from None
        self.nodes = [self.nodes[i] for i in idx]

    # ------------------------------------------------------------------ queries

    def constants(self) -> list[Value]:
        """Constant operands in order of first use."""
        seen: dict[int, Value] = {}
        for n in self.nodes:
            for v in n.inputs:
                if v.is_const and id(v) not in seen:
                    seen[id(v)] = v
        for v in self.outputs:
            if v.is_const and id(v) not in seen:
                seen[id(v)] = v
        return list(seen.values())

    def values(self) -> Iterator[Value]:
        """Inputs, then constants, then node outputs in order."""
        yield from self.inputs
        yield from self.constants()
        for n in self.nodes:
            yield from n.outputs

    def find(self, name: str) -> Node:
        """The node called ``name``."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def clone(self) -> Graph:
        """A deep copy of the structure; constant arrays are shared (they are read-only)."""
        g = Graph(self.name)
        g.tiles = list(self.tiles)
        g.tile_shape = self.tile_shape
        g.batch = self.batch
        vmap: dict[int, Value] = {}

        def get(v: Value) -> Value:
            if id(v) not in vmap:
                if v.producer is not None:
                    raise VerifyError(f"value {v.name!r} used before its producer")
                vmap[id(v)] = Value(v.type, name=v.name, const=v.const, param=v.param)
            return vmap[id(v)]

        g.inputs = [get(v) for v in self.inputs]
        for n in self.nodes:
            new = Node(n.op, [get(v) for v in n.inputs], [], n.name, g, n.placement)
            new.batch_coef = dict(n.batch_coef)
            for i, v in enumerate(new.inputs):
                v._uses.append(Use(new, i))
            for v in n.outputs:
                nv = Value(v.type, name=v.name, producer=new, index=v.index)
                vmap[id(v)] = nv
                new.outputs.append(nv)
            g.nodes.append(new)
        g.outputs = [get(v) for v in self.outputs]
        return g

    def at_batch(self, batch: int) -> Graph:
        """A clone whose shapes and batch-dependent attributes are instantiated at ``batch``."""
        if self.batch is None:
            raise VerifyError(f"graph {self.name!r} has a fixed batch size; it cannot be rebound")
        if batch < 1:
            raise VerifyError(f"batch size must be >= 1, got {batch}")
        g = self.clone()
        delta = batch - self.batch
        for v in g.inputs:
            v.type = v.type.with_shape((batch, *v.type.shape[1:]))
        for n in g.nodes:
            if n.batch_coef:
                n.op = op_at_batch(n.op, n.batch_coef, delta)
            types = n.op.infer([v.type for v in n.inputs])
            for v, t in zip(n.outputs, types, strict=True):
                v.type = t
        g.batch = batch
        return g

    def verify(self) -> None:
        """Check ownership, topological order, use lists and every op's type rule."""
        from xbarc.ir.verify import verify

        verify(self)

    def __str__(self) -> str:
        from xbarc.ir.printer import print_graph

        return print_graph(self)
