"""canonicalize: put imported graphs into the form the crossbar lowering expects."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xbarc.errors import VerifyError
from xbarc.ir import interp
from xbarc.ir import ops as O
from xbarc.ir.core import Graph, Node, Value, make_const
from xbarc.passes.base import Pass, apply_rules


def _replace(g: Graph, node: Node, new: Value) -> None:
    g.replace_all_uses(node.outputs[0], new)
    g.remove(node)


def drop_identity(g: Graph, node: Node) -> bool:
    """``identity(x)`` and inference ``dropout(x)`` → ``x``."""
    if not isinstance(node.op, (O.Identity, O.Dropout)):
        return False
    _replace(g, node, node.inputs[0])
    return True


def fold_constants(g: Graph, node: Node) -> bool:
    """A node whose operands are all constants → a constant (unless it follows the batch)."""
    if node.batch_coef and g.batch is not None:
        return False
    if not node.inputs or not all(v.is_const for v in node.inputs):
        return False
    arrays = interp.eval_node(node, [v.const for v in node.inputs])  # type: ignore[misc]
    param = any(v.param for v in node.inputs)
    for v, a in zip(node.outputs, arrays, strict=True):
        g.replace_all_uses(v, make_const(a, v.name or node.name, param=param))
    g.remove(node)
    return True


def _single_use(v: Value, g: Graph) -> bool:
    return len(v.uses) == 1 and not any(o is v for o in g.outputs)


def _bn_scale_shift(bn: Node) -> tuple[np.ndarray, np.ndarray] | None:
    params = [v.const for v in bn.inputs[1:]]
    if any(p is None for p in params):
        return None
    scale, beta, mean, var = (np.asarray(p, np.float64) for p in params)
    assert isinstance(bn.op, O.BatchNorm)
    k = scale / np.sqrt(var + bn.op.epsilon)
    return k, beta - mean * k


def fold_batch_norm(g: Graph, node: Node) -> bool:
    """``batch_norm(conv(x, W, b))`` → ``conv(x, W·k, (b - mean)·k + beta)``; same for linear.

    Needs constant BN parameters, a constant weight and the conv/linear result used only by the
    BN. For ``linear`` the BN must normalise the last axis of a 2-D output (BatchNorm1d).
    """
    if not isinstance(node.op, O.BatchNorm):
        return False
    prod = node.inputs[0].producer
    if prod is None or not isinstance(prod.op, (O.Conv, O.Linear)):
        return False
    if not _single_use(prod.outputs[0], g) or prod.inputs[1].const is None:
        return False
    ks = _bn_scale_shift(node)
    if ks is None:
        return False
    k, shift = ks
    w = np.asarray(prod.inputs[1].const, np.float64)
    bias = prod.inputs[2].const if len(prod.inputs) == 3 else None
    if len(prod.inputs) == 3 and bias is None:
        return False
    b = np.zeros(k.shape) if bias is None else np.asarray(bias, np.float64)
    if isinstance(prod.op, O.Conv):
        w2 = w * k.reshape(-1, *(1,) * (w.ndim - 1))
    else:
        if prod.outputs[0].type.rank != 2:
            return False
        w2 = w * k.reshape(1, -1)
    dtype = prod.inputs[1].type.dtype.numpy
    wv = make_const(w2.astype(dtype), prod.inputs[1].name, param=True)
    bv = make_const((b * k + shift).astype(dtype), f"{node.name}.folded_bias", param=True)
    new = g.add(prod.op, [prod.inputs[0], wv, bv], prod.name, before=node)
    _replace(g, node, new.outputs[0])
    g.remove(prod)
    return True


def gemm_to_linear(g: Graph, node: Node) -> bool:
    """``gemm(A, B, C)`` with constant ``B`` → ``linear(A, alpha·op(B), beta·C)``.

    ``trans_a`` becomes a transpose of ``A``; a ``C`` that is not a row vector becomes an add.
    """
    if not isinstance(node.op, O.Gemm) or node.inputs[1].const is None:
        return False
    op = node.op
    b = np.asarray(node.inputs[1].const)
    w = (b.T if op.trans_b else b) * b.dtype.type(op.alpha)
    x = node.inputs[0]
    if op.trans_a:
        x = g.add(O.Transpose(perm=(1, 0)), [x], f"{node.name}.trans_a", before=node).outputs[0]
    ins = [x, make_const(np.ascontiguousarray(w), node.inputs[1].name, param=node.inputs[1].param)]
    extra: Value | None = None
    if len(node.inputs) == 3:
        c = node.inputs[2]
        n = w.shape[1]
        if c.const is not None and c.const.size == n and c.type.shape[-1:] == (n,):
            ins.append(
                make_const(c.const.reshape(n) * c.const.dtype.type(op.beta), c.name, param=c.param)
            )
        else:
            extra = c
            if op.beta != 1.0:
                beta = make_const(np.array(op.beta, dtype=c.type.dtype.numpy))
                extra = g.add(O.Mul(), [c, beta], f"{node.name}.beta", before=node).outputs[0]
    new = g.add(O.Linear(), ins, node.name, before=node)
    out = new.outputs[0]
    if extra is not None:
        out = g.add(O.Add(), [out, extra], f"{node.name}.c", before=node).outputs[0]
    _replace(g, node, out)
    return True


def matmul_to_linear(g: Graph, node: Node) -> bool:
    """``matmul(x, W)`` with a constant 2-D ``W`` → ``linear(x, W)``."""
    if not isinstance(node.op, O.MatMul):
        return False
    w = node.inputs[1]
    if w.const is None or w.type.rank != 2 or node.inputs[0].is_const:
        return False
    new = g.add(O.Linear(), [node.inputs[0], w], node.name, before=node)
    _replace(g, node, new.outputs[0])
    return True


def linear_bias(g: Graph, node: Node) -> bool:
    """``add(linear(x, W), b)`` with ``b`` a constant row vector → ``linear(x, W, b)``."""
    if not isinstance(node.op, O.Add):
        return False
    for i in (0, 1):
        lin, b = node.inputs[i], node.inputs[1 - i]
        p = lin.producer
        if p is None or not isinstance(p.op, O.Linear) or len(p.inputs) != 2 or b.const is None:
            continue
        n = p.inputs[1].type.shape[1]
        if b.const.size != n or b.type.shape[-1:] != (n,) or b.type.dtype != lin.type.dtype:
            continue
        if node.outputs[0].type != lin.type or not _single_use(lin, g):
            continue
        new = g.add(
            O.Linear(),
            [p.inputs[0], p.inputs[1], make_const(b.const.reshape(n), b.name, param=b.param)],
            p.name,
            before=node,
        )
        _replace(g, node, new.outputs[0])
        g.remove(p)
        return True
    return False


RULES = (
    drop_identity,
    fold_constants,
    fold_batch_norm,
    gemm_to_linear,
    matmul_to_linear,
    linear_bias,
)


@dataclass(frozen=True)
class Canonicalize(Pass):
    """Normalises imported graphs for the crossbar lowering.

    Folds BatchNorm into the preceding Conv/Linear, folds constants, drops Identity/Dropout,
    and turns Gemm and MatMul(+Add) with constant weights into ``linear`` ops.
    """

    name = "canonicalize"

    def run(self, g: Graph) -> bool:
        changed = apply_rules(g, RULES)
        changed |= g.remove_dead() > 0
        return changed

    def ensures(self, g: Graph) -> None:
        for n in g.nodes:
            if isinstance(n.op, (O.Identity, O.Dropout)):
                raise VerifyError(f"node {n.name!r} ({n.op.NAME}) survived canonicalize")
