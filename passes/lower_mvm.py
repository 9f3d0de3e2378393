"""lower-to-mvm: constant-weight products onto crossbars, everything else onto digital units."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from xbarc.errors import VerifyError
from xbarc.ir import ops as O
from xbarc.ir.core import Graph, Node, Placement, Value, make_const
from xbarc.ir.interp import conv_weight_matrix
from xbarc.passes.base import Pass

# Element operations per output element of the digital ops (a simple, stated cost model:
# one op per add/compare/select, a transcendental counts as 4 [inferred]).
_ELEM_COST: dict[type[O.Op], int] = {
    O.Relu: 1,
    O.LeakyRelu: 2,
    O.Clip: 2,
    O.Abs: 1,
    O.Neg: 1,
    O.Not: 1,
    O.Add: 1,
    O.Sub: 1,
    O.Mul: 1,
    O.Div: 1,
    O.Max: 1,
    O.Min: 1,
    O.Equal: 1,
    O.Less: 1,
    O.Greater: 1,
    O.Where: 1,
    O.Cast: 1,
    O.Reciprocal: 1,
    O.Sqrt: 4,
    O.Exp: 4,
    O.Log: 4,
    O.Pow: 4,
    O.Erf: 4,
    O.Tanh: 4,
    O.Sigmoid: 4,
    O.Softplus: 8,
    O.HardSigmoid: 3,
    O.HardSwish: 4,
    O.Gelu: 8,
    O.Softmax: 5,
    O.LogSoftmax: 5,
    O.BatchNorm: 2,
    O.LayerNorm: 8,
    O.Resize: 3,
}
_MOVES = (
    O.Reshape,
    O.Transpose,
    O.Concat,
    O.Gather,
    O.Slice,
    O.Split,
    O.Expand,
    O.Pad,
    O.Fill,
    O.Identity,
    O.Dropout,
)


def batch_of(g: Graph) -> int:
    """Samples per graph execution (the batch the shapes are instantiated at)."""
    if g.batch is not None:
        return g.batch
    return g.inputs[0].type.shape[0] if g.inputs and g.inputs[0].type.rank else 1


def mvm_positions(node: Node) -> int:
    """Input vectors one execution applies to each group of an ``XbarMVM``."""
    op = node.op
    assert isinstance(op, O.XbarMVM)
    y = node.outputs[0].type.shape
    if op.kind == "linear":
        return math.prod(y[:-1])
    return y[0] * math.prod(y[2:])


def cost(node: Node, batch: int) -> Placement:
    """Per-sample cost of a node and where it runs."""
    op = node.op
    out = sum(v.type.size for v in node.outputs)
    if isinstance(op, O.XbarMVM):
        g, r, c = node.inputs[1].type.shape
        pos = mvm_positions(node)
        bias = out if len(node.inputs) == 3 else 0
        return Placement("xbar", macs=pos * g * r * c // batch, elem_ops=bias // batch)
    macs = 0
    elem = 0
    if isinstance(op, (O.MatMul, O.Gemm, O.Linear)):
        a = node.inputs[0].type.shape
        k = a[-1] if not (isinstance(op, O.Gemm) and op.trans_a) else a[0]
        macs = out * k
        elem = out if len(node.inputs) == 3 else 0
    elif isinstance(op, O.Conv):
        w = node.inputs[1].type.shape
        macs = out * math.prod(w[1:])
        elem = out if len(node.inputs) == 3 else 0
    elif isinstance(op, (O.MaxPool, O.AveragePool)):
        elem = out * math.prod(op.kernel)
    elif isinstance(op, (O.GlobalAveragePool, O.GlobalMaxPool, O.Reduce)):
        elem = node.inputs[0].type.size
    elif isinstance(op, _MOVES):
        elem = 0
    else:
        elem = out * _ELEM_COST.get(type(op), 1)
    return Placement("digital", macs=macs // batch, elem_ops=elem // batch)


def _layer_name(node: Node, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.]+", "_", node.name).strip("_.") or "layer"
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


@dataclass(frozen=True)
class LowerToMVM(Pass):
    """Maps constant-weight products onto crossbars and places everything else digitally.

    Replaces ``linear``/``conv`` (2-D) with constant weights, and ``matmul(W, x)`` with a
    constant 2-D ``W``, by ``xbar.mvm`` on a logical matrix of ``R = kh·kw·Cin/group`` rows and
    ``C = Cout/group`` columns per group (im2col); biases stay digital. Every other node is
    placed on the digital unit with a per-sample cost (MACs, element ops).
    """

    name = "lower-to-mvm"

    def run(self, g: Graph) -> bool:
        taken = {n.op.layer for n in g.nodes if isinstance(n.op, O.XbarMVM)}
        changed = False
        for node in list(g.nodes):
            new = self._lower(g, node, taken)
            changed |= new
        batch = batch_of(g)
        for node in g.nodes:
            node.placement = cost(node, batch)
        return changed

    def _lower(self, g: Graph, node: Node, taken: set[str]) -> bool:
        op = node.op
        if isinstance(op, O.Linear) and node.inputs[1].const is not None:
            w = node.inputs[1].const
            wv = node.inputs[1]
            ins = [node.inputs[0], make_const(w.reshape(1, *w.shape), wv.name, param=wv.param)]
            ins += node.inputs[2:]
            mvm = O.XbarMVM(layer=_layer_name(node, taken), kind="linear")
            self._swap(g, node, mvm, ins)
            return True
        if isinstance(op, O.Conv) and node.inputs[1].const is not None and len(op.strides) == 2:
            w = node.inputs[1].const
            if len(node.inputs) == 3 and node.inputs[2].const is None:
                return False
            wm = conv_weight_matrix(np.asarray(w), op.group)
            wv = node.inputs[1]
            ins = [node.inputs[0], make_const(wm, wv.name, param=wv.param), *node.inputs[2:]]
            mvm = O.XbarMVM(
                layer=_layer_name(node, taken),
                kind="conv",
                kernel=tuple(w.shape[2:]),
                strides=op.strides,
                pads=op.pads,
                dilations=op.dilations,
            )
            self._swap(g, node, mvm, ins)
            return True
        if (
            isinstance(op, O.MatMul)
            and node.inputs[0].const is not None
            and node.inputs[0].type.rank == 2
            and node.inputs[1].type.rank >= 2
            and not node.inputs[1].is_const
        ):
            return self._lower_left(g, node, taken)
        return False

    @staticmethod
    def _swap(g: Graph, node: Node, mvm: O.XbarMVM, ins: list[Value]) -> None:
        new = g.add(mvm, ins, node.name, before=node)
        new.batch_coef = dict(node.batch_coef)
        g.replace_all_uses(node.outputs[0], new.outputs[0])
        g.remove(node)

    def _lower_left(self, g: Graph, node: Node, taken: set[str]) -> bool:
        """``W @ x`` = ``(xᵀ @ Wᵀ)ᵀ`` over the last two axes of ``x``."""
        w, x = node.inputs
        assert w.const is not None
        rank = x.type.rank
        perm = (*range(rank - 2), rank - 1, rank - 2)
        xt = g.add(O.Transpose(perm=perm), [x], f"{node.name}.xT", before=node).outputs[0]
        wt = make_const(np.ascontiguousarray(w.const.T)[None], w.name, param=w.param)
        mvm = O.XbarMVM(layer=_layer_name(node, taken), kind="linear")
        y = g.add(mvm, [xt, wt], node.name, before=node).outputs[0]
        back = g.add(O.Transpose(perm=perm), [y], f"{node.name}.yT", before=node).outputs[0]
        g.replace_all_uses(node.outputs[0], back)
        g.remove(node)
        return True

    def ensures(self, g: Graph) -> None:
        layers = [n.op.layer for n in g.nodes if isinstance(n.op, O.XbarMVM)]
        if len(layers) != len(set(layers)):
            raise VerifyError("crossbar layer names are not unique")
        for n in g.nodes:
            if n.placement is None:
                raise VerifyError(f"node {n.name!r} has no placement")
