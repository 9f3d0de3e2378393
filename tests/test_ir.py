"""The IR core: rewrites through the public API keep the invariants, verify catches breakage,
clone is deep, the printer is exact, and every op's ``infer`` rejects what does not fit."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, mutually_broadcastable_shapes

from xbarc.errors import VerifyError
from xbarc.ir import (
    DType,
    Graph,
    Node,
    Placement,
    TensorType,
    Tile,
    Use,
    Value,
    interp,
    make_const,
    ops,
)
from xbarc.ir import ops as O
from xbarc.ir.printer import format_attr

F32 = DType.F32
SHAPE = (2, 3)


def t(*shape: int, dtype: DType = F32) -> TensorType:
    return TensorType(tuple(shape), dtype)


# ----------------------------------------------------------------------------- random graphs

UNARY_OPS: list[Callable[[], O.Op]] = [O.Relu, O.Neg, O.Tanh, O.Sigmoid, O.Abs]
BINARY_OPS: list[Callable[[], O.Op]] = [O.Add, O.Sub, O.Mul, O.Max, O.Min]
COMMUTATIVE = (O.Add, O.Mul, O.Max, O.Min)


@st.composite
def graphs(draw: st.DrawFn) -> tuple[Graph, list[np.ndarray]]:
    """Chains and diamonds of elementwise ops over f32[2,3] inputs and [3]/[2,3] constants."""
    g = Graph("random")
    n_in = draw(st.integers(1, 3))
    vals: list[Value] = [g.add_input(t(*SHAPE), f"x{i}") for i in range(n_in)]
    n_const = draw(st.integers(0, 2))
    for i in range(n_const):
        shape = draw(st.sampled_from([SHAPE, SHAPE[1:], ()]))
        arr = np.random.default_rng(i).standard_normal(shape).astype(np.float32)
        vals.append(make_const(arr, f"c{i}"))
    n_nodes = draw(st.integers(1, 8))
    for i in range(n_nodes):
        pick = st.sampled_from(vals)
        if draw(st.booleans()):
            op = draw(st.sampled_from(UNARY_OPS))()
            ins = [draw(pick)]
        else:
            op = draw(st.sampled_from(BINARY_OPS))()
            ins = [draw(pick), draw(pick)]
        if all(v.is_const for v in ins):
            ins[0] = vals[0]
        vals.append(g.add(op, ins, f"n{i}").outputs[0])
    computed = [v for v in vals if not v.is_const]
    outs = draw(st.lists(st.sampled_from(computed), min_size=0, max_size=2))
    g.outputs = [vals[-1], *outs]
    feeds = [
        np.random.default_rng(100 + i).standard_normal(SHAPE).astype(np.float32)
        for i in range(n_in)
    ]
    g.verify()
    return g, feeds


def _producer_anchor(g: Graph, v: Value) -> dict[str, Node]:
    """Where a node reading ``v`` may go: right after its producer, or first."""
    if v.producer is not None:
        return {"after": v.producer}
    return {"before": g.nodes[0]} if g.nodes else {}


def _computed_values(g: Graph) -> list[Value]:
    return [*g.inputs, *(v for n in g.nodes for v in n.outputs)]


def mut_insert_identity(g: Graph, data: st.DataObject) -> None:
    v = data.draw(st.sampled_from(_computed_values(g)))
    node = g.add(O.Identity(), [v], "ident", **_producer_anchor(g, v))
    y = node.outputs[0]
    g.replace_all_uses(v, y)  # also redirects the identity itself ...
    g.set_input(node, 0, v)  # ... so point it back at v


def mut_insert_add_zero(g: Graph, data: st.DataObject) -> None:
    v = data.draw(st.sampled_from(_computed_values(g)))
    shape = data.draw(st.sampled_from([v.type.shape, v.type.shape[1:], ()]))
    zero = make_const(np.zeros(shape, np.float32), "zero")
    swap = data.draw(st.booleans())
    node = g.add(O.Add(), [zero, v] if swap else [v, zero], "add0", **_producer_anchor(g, v))
    g.replace_all_uses(v, node.outputs[0])
    g.set_input(node, 1 if swap else 0, v)


def _is_noop(n: Node) -> int | None:
    """Operand index that a no-op node passes through, else None."""
    if isinstance(n.op, O.Identity):
        return 0
    if isinstance(n.op, O.Add):
        for i, c in enumerate(n.inputs):
            other = n.inputs[1 - i]
            if c.const is not None and not np.any(c.const) and other.type == n.outputs[0].type:
                return 1 - i
    return None


def mut_remove_noop(g: Graph, data: st.DataObject) -> None:
    cands = [n for n in g.nodes if _is_noop(n) is not None]
    if not cands:
        return
    n = data.draw(st.sampled_from(cands))
    keep = _is_noop(n)
    assert keep is not None
    g.replace_all_uses(n.outputs[0], n.inputs[keep])
    g.remove(n)


def mut_swap_commutative(g: Graph, data: st.DataObject) -> None:
    cands = [n for n in g.nodes if isinstance(n.op, COMMUTATIVE)]
    if not cands:
        return
    n = data.draw(st.sampled_from(cands))
    a, b = n.inputs
    g.set_input(n, 0, b)
    g.set_input(n, 1, a)


def mut_dead_node(g: Graph, data: st.DataObject) -> None:
    v = data.draw(st.sampled_from(_computed_values(g)))
    g.add(O.Relu(), [v], "dead")


def mut_remove_dead(g: Graph, data: st.DataObject) -> None:
    g.remove_dead()
    live = {id(v) for v in g.outputs}
    for n in g.nodes:
        assert any(v.uses or id(v) in live for v in n.outputs)


def mut_forward_ref_then_sort(g: Graph, data: st.DataObject) -> None:
    """Append an Identity, let an earlier node read it (out of order), then ``sort``."""
    v = data.draw(st.sampled_from(_computed_values(g)))
    if not v.uses:
        return
    use = data.draw(st.sampled_from(v.uses))
    node = g.add(O.Identity(), [v], "late")
    g.set_input(use.node, use.index, node.outputs[0])
    with pytest.raises(VerifyError, match="before defined"):
        g.verify()
    g.sort()


MUTATIONS = [
    mut_insert_identity,
    mut_insert_add_zero,
    mut_remove_noop,
    mut_swap_commutative,
    mut_dead_node,
    mut_remove_dead,
    mut_forward_ref_then_sort,
]


@given(case=graphs(), data=st.data())
@settings(max_examples=60)
def test_random_rewrites_keep_invariants_and_semantics(
    case: tuple[Graph, list[np.ndarray]], data: st.DataObject
) -> None:
    g, feeds = case
    want = interp.run(g, feeds)
    steps = data.draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=12))
    for mut in steps:
        mut(g, data)
        g.verify()
        got = interp.run(g, feeds)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=mut.__name__)
    # Clean-up: every no-op can be removed again, leaving no identity behind.
    while any(isinstance(n.op, O.Identity) for n in g.nodes):
        n = next(n for n in g.nodes if isinstance(n.op, O.Identity))
        g.replace_all_uses(n.outputs[0], n.inputs[0])
        g.remove(n)
        g.verify()
    for a, b in zip(interp.run(g, feeds), want, strict=True):
        np.testing.assert_array_equal(a, b)


@given(case=graphs())
def test_clone_prints_equal_and_is_independent(case: tuple[Graph, list[np.ndarray]]) -> None:
    g, feeds = case
    before = str(g)
    c = g.clone()
    c.verify()
    assert str(c) == before
    # No object is shared except the constant arrays.
    orig_ids = {id(v) for v in g.values()} | {id(n) for n in g.nodes}
    assert not orig_ids & ({id(v) for v in c.values()} | {id(n) for n in c.nodes})
    for a, b in zip(g.constants(), c.constants(), strict=True):
        assert a.const is b.const
    # Mutating the clone leaves the original alone.
    c.add(O.Relu(), [c.inputs[0]], "extra")
    c.outputs.append(c.nodes[-1].outputs[0])
    c.replace_all_uses(c.inputs[0], c.nodes[-1].outputs[0])
    c.set_input(c.nodes[-1], 0, c.inputs[0])
    c.sort()
    c.verify()
    assert str(g) == before
    g.verify()
    np.testing.assert_array_equal(interp.run(g, feeds)[0], interp.run(g.clone(), feeds)[0])


def test_constants_are_read_only_and_shared() -> None:
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    c = make_const(arr, "w")
    assert c.const is not None and not c.const.flags.writeable
    with pytest.raises(ValueError):
        c.const[0, 0] = 1.0
    assert np.shares_memory(c.const, arr)  # a view, not a copy
    arr[0, 0] = 5.0  # the caller's array stays writable
    g = Graph()
    x = g.add_input(t(2, 3), "x")
    g.outputs = [g.add(O.Add(), [x, c]).outputs[0]]
    cl = g.clone()
    (cc,) = cl.constants()
    assert cc.const is c.const
    with pytest.raises(ValueError):
        cc.const[1, 1] = 0.0  # type: ignore[index]
    # Non-contiguous input becomes a contiguous read-only copy.
    nc = make_const(np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2])
    assert nc.const is not None and nc.const.flags.c_contiguous and not nc.const.flags.writeable


def test_uses_is_a_snapshot() -> None:
    g = Graph()
    x = g.add_input(t(2), "x")
    n = g.add(O.Relu(), [x])
    uses = x.uses
    uses.clear()
    assert x.uses == [Use(n, 0)]


# ----------------------------------------------------------------------------- API errors


def _small() -> tuple[Graph, Value, Node, Node]:
    g = Graph("small")
    x = g.add_input(t(2, 3), "x")
    a = g.add(O.Relu(), [x], "a")
    b = g.add(O.Neg(), [a.outputs[0]], "b")
    g.outputs = [b.outputs[0]]
    return g, x, a, b


def test_remove_used_node_raises() -> None:
    g, _, a, b = _small()
    with pytest.raises(VerifyError, match="still used"):
        g.remove(a)
    with pytest.raises(VerifyError, match="still used"):
        g.remove(b)  # a graph output
    g.verify()


def test_add_relative_to_foreign_node_raises() -> None:
    g, x, *_ = _small()
    _, _, a2, *_ = _small()
    with pytest.raises(VerifyError):
        g.add(O.Relu(), [x], before=a2)


def test_add_before_and_after_positions() -> None:
    g, x, a, *_ = _small()
    n1 = g.add(O.Relu(), [x], "first", before=a)
    n2 = g.add(O.Relu(), [x], "mid", after=a)
    assert [n.name for n in g.nodes] == ["first", "a", "mid", "b"]
    assert n1.graph is g and n2.graph is g
    g.verify()


def test_sort_reports_cycles() -> None:
    g, _, a, b = _small()
    g.set_input(a, 0, b.outputs[0])
    with pytest.raises(VerifyError, match="cycle"):
        g.sort()


def test_replace_all_uses_updates_outputs() -> None:
    g, _, a, b = _small()
    g.replace_all_uses(b.outputs[0], a.outputs[0])
    assert g.outputs == [a.outputs[0]]
    assert g.remove_dead() == 1
    assert [n.name for n in g.nodes] == ["a"]
    g.verify()


def test_replace_op_keeps_types() -> None:
    g, _, a, *_ = _small()
    g.replace_op(a, O.Sigmoid())
    assert isinstance(a.op, O.Sigmoid)
    with pytest.raises(VerifyError):
        g.replace_op(a, O.Cast(to="i64"))


def test_at_batch_errors() -> None:
    g, *_ = _small()
    with pytest.raises(VerifyError, match="fixed batch"):
        g.at_batch(2)
    g.batch = 2
    with pytest.raises(VerifyError, match=">= 1"):
        g.at_batch(0)
    g4 = g.at_batch(4)
    assert g4.inputs[0].type == t(4, 3) and g4.outputs[0].type == t(4, 3)
    assert g.inputs[0].type == t(2, 3)


# ----------------------------------------------------------------------------- verify catches


def test_verify_stale_use() -> None:
    g, x, _, b = _small()
    x._uses.append(Use(b, 0))  # b reads a's output, not x
    with pytest.raises(VerifyError, match="stale use"):
        g.verify()


def test_verify_use_with_bad_index() -> None:
    g, x, a, *_ = _small()
    x._uses.append(Use(a, 5))
    with pytest.raises(VerifyError):
        g.verify()


def test_verify_missing_use() -> None:
    g, x, *_ = _small()
    x._uses.clear()
    with pytest.raises(VerifyError, match="missing"):
        g.verify()


def test_verify_duplicate_use() -> None:
    g, x, a, *_ = _small()
    x._uses.append(Use(a, 0))
    with pytest.raises(VerifyError):
        g.verify()


def test_verify_use_outside_graph() -> None:
    g, x, *_ = _small()
    stray = Node(O.Relu(), [x], [Value(t(2, 3))], "stray")
    x._uses.append(Use(stray, 0))
    with pytest.raises(VerifyError, match="outside the graph"):
        g.verify()


def test_verify_order() -> None:
    g, *_ = _small()
    g.nodes.reverse()
    with pytest.raises(VerifyError, match="before defined"):
        g.verify()
    g.sort()
    g.verify()


def test_verify_wrong_output_type() -> None:
    g, _, a, *_ = _small()
    a.outputs[0].type = t(3, 2)
    with pytest.raises(VerifyError, match="output types"):
        g.verify()


def test_verify_node_of_other_graph() -> None:
    g, _, a, *_ = _small()
    a.graph = Graph("other")
    with pytest.raises(VerifyError, match="not owned"):
        g.verify()


def test_verify_node_listed_twice() -> None:
    g, _, a, *_ = _small()
    g.nodes.append(a)
    with pytest.raises(VerifyError):
        g.verify()


def test_verify_undefined_output() -> None:
    g, *_ = _small()
    g.outputs.append(Value(t(2, 3), "ghost"))
    with pytest.raises(VerifyError, match="not defined"):
        g.verify()


def test_verify_output_from_removed_node() -> None:
    g, _, a, b = _small()
    g.outputs = [a.outputs[0]]
    g.remove(b)
    g.outputs = [b.outputs[0]]
    with pytest.raises(VerifyError, match="not defined"):
        g.verify()


def test_verify_input_with_data_or_producer() -> None:
    g, *_ = _small()
    g.inputs.append(make_const(np.zeros(3, np.float32)))
    with pytest.raises(VerifyError, match="graph input"):
        g.verify()
    g, _, a, *_ = _small()
    g.inputs.append(a.outputs[0])
    with pytest.raises(VerifyError):
        g.verify()


def test_verify_output_back_pointer() -> None:
    g, _, a, b = _small()
    a.outputs[0].producer = b
    with pytest.raises(VerifyError, match="point back"):
        g.verify()


def test_verify_bad_op_types() -> None:
    g = Graph()
    x = g.add_input(t(2, 3), "x")
    n = g.add(O.Relu(), [x])
    g.outputs = [n.outputs[0]]
    n.op = O.Transpose(perm=(0,))
    with pytest.raises(VerifyError, match="transpose"):
        g.verify()


def test_verify_tiles_name_layers() -> None:
    g, *_ = _small()
    g.tiles = [Tile(0, "nope", 0, 0, 0, 0, 1, 1)]
    with pytest.raises(VerifyError, match="unknown layer"):
        g.verify()


# ----------------------------------------------------------------------------- printer


def _conv_graph() -> Graph:
    g = Graph("net")
    x = g.add_input(t(1, 3, 32, 32), "input")
    w = make_const(np.zeros((16, 3, 3, 3), np.float32), "w")
    b = make_const(np.arange(16, dtype=np.float32), "b")
    conv = g.add(O.Conv(pads=(1, 1, 1, 1)), [x, w, b], "conv")
    two = make_const(np.array([2.0, -0.5], np.float32))
    r = g.add(O.Relu(), conv.outputs, "relu")
    flat = g.add(O.Reshape(shape=(1, 8192, 2)), r.outputs, "flat")
    g.add(O.Mul(), [flat.outputs[0], two], "scale")
    g.outputs = [g.nodes[-1].outputs[0]]
    return g


def test_printer_exact() -> None:
    g = _conv_graph()
    g.verify()
    assert str(g) == (
        'graph "net" (%0: f32[1,3,32,32]) batch=fixed {\n'
        '  %1 = const "w" : f32[16,3,3,3]\n'
        '  %2 = const "b" : f32[16]\n'
        "  %3 = const dense<[2.0,-0.5]> : f32[2]\n"
        "  %4 = conv(%0, %1, %2) {dilations=[1,1], group=1, pads=[1,1,1,1], strides=[1,1]}"
        " : f32[1,16,32,32]  # conv\n"
        "  %5 = relu(%4) : f32[1,16,32,32]  # relu\n"
        "  %6 = reshape(%5) {shape=[1,8192,2]} : f32[1,8192,2]  # flat\n"
        "  %7 = mul(%6, %3) : f32[1,8192,2]  # scale\n"
        "  return %7\n"
        "}\n"
    )


def test_printer_names_sequential_and_attrs_sorted() -> None:
    g = _conv_graph()
    text = str(g)
    names = [int(m) for m in re.findall(r"^\s+%(\d+) =", text, flags=re.M)]
    assert names == list(range(1, len(names) + 1))
    for line in text.splitlines():
        m = re.search(r"\{(.*)\}", line)
        if m and "=" in m.group(1) and "graph" not in line:
            keys = [kv.split("=")[0].strip() for kv in re.split(r", (?=\w+=)", m.group(1))]
            assert keys == sorted(keys), line


def test_printer_batch_and_attr_formats() -> None:
    assert format_attr(True) == "true"
    assert format_attr(None) == "none"
    assert format_attr('a"b') == '"a\\"b"'
    assert format_attr((1, 2)) == "[1,2]"
    assert format_attr(0.1) == "0.1"
    g = Graph("b")
    x = g.add_input(t(4, 6), "x")
    n = g.add(O.Reshape(shape=(4, 2, 3)), [x], "r")
    n.batch_coef = {"shape": (1, 0, 0)}
    g.batch = 4
    g.outputs = [n.outputs[0]]
    assert "batch=4" in str(g)
    assert "{shape=[4,2,3]} batch{shape=[1,0,0]} : f32[4,2,3]  # r" in str(g)
    g2 = g.at_batch(3)
    assert g2.nodes[0].op.shape == (3, 2, 3)
    assert "batch=3" in str(g2)


def test_printer_placement_and_tiles() -> None:
    g = Graph("x")
    x = g.add_input(t(2, 4), "x")
    w = make_const(np.ones((1, 4, 3), np.float32), "w")
    n = g.add(O.XbarMVM(layer="fc"), [x, w], "fc")
    n.placement = Placement("xbar", macs=24)
    g.outputs = [n.outputs[0]]
    g.tiles = [Tile(0, "fc", 0, 0, 0, 0, 4, 3)]
    g.tile_shape = (8, 8)
    g.verify()
    text = str(g)
    assert "xbar.mvm(%0, %1) {" in text
    assert ": f32[2,3] @xbar(macs=24, ops=0)  # fc\n" in text
    assert text.endswith("}\ntiles 8x8:\n  tile 0: fc g0 rep0 rows[0:4] cols[0:3] at (0,0)\n")
    assert str(g.clone()) == text


# ----------------------------------------------------------------------------- op type rules


BAD_INFER: list[tuple[O.Op, list[TensorType]]] = [
    (O.Add(), [t(2, 3), t(4)]),
    (O.Add(), [t(2, 3), t(2, 3, dtype=DType.I64)]),
    (O.Add(), [t(2, 3)]),
    (O.Relu(), [t(2, dtype=DType.I64)]),
    (O.Not(), [t(2)]),
    (O.Where(), [t(2), t(2), t(2)]),
    (O.Where(), [t(2, dtype=DType.BOOL), t(2), t(3)]),
    (O.MatMul(), [t(2, 3), t(4, 5)]),
    (O.MatMul(), [t(), t(3)]),
    (O.MatMul(), [t(2, 2, 3), t(3, 3, 4)]),
    (O.Gemm(), [t(2, 3), t(4, 5)]),
    (O.Gemm(), [t(2, 3, 1), t(3, 5)]),
    (O.Gemm(trans_b=True), [t(2, 3), t(3, 5)]),
    (O.Gemm(), [t(2, 3), t(3, 5), t(3, 5)]),
    (O.Linear(), [t(2, 3), t(4, 5)]),
    (O.Linear(), [t(2, 4), t(4, 5), t(4)]),
    (O.Conv(), [t(1, 3, 8, 8), t(4, 2, 3, 3)]),
    (O.Conv(group=2), [t(1, 4, 8, 8), t(3, 2, 3, 3)]),
    (O.Conv(), [t(1, 3, 8, 8), t(4, 3, 3)]),
    (O.Conv(), [t(1, 3, 2, 2), t(4, 3, 3, 3)]),
    (O.Conv(), [t(1, 3, 8, 8), t(4, 3, 3, 3), t(3)]),
    (O.Conv(), [t(3), t(3)]),
    (O.Conv(strides=(0, 1)), [t(1, 3, 8, 8), t(4, 3, 3, 3)]),
    (O.BatchNorm(), [t(2, 3, 4), t(3), t(3), t(3), t(4)]),
    (O.BatchNorm(), [t(3), t(3), t(3), t(3), t(3)]),
    (O.LayerNorm(axis=3), [t(2, 3, 4), t(4)]),
    (O.LayerNorm(axis=2), [t(2, 3, 4), t(3)]),
    (O.Softmax(axis=2), [t(2, 3)]),
    (O.Softmax(axis=-3), [t(2, 3)]),
    (O.ReduceMean(axes=(3,)), [t(2, 3)]),
    (O.ReduceSum(axes=(1, 0)), [t(2, 3)]),
    (O.MaxPool(kernel=(3, 3), strides=(1, 1)), [t(1, 1, 2, 2)]),
    (O.MaxPool(kernel=(2,), strides=(1,), pads=(0, 0), dilations=(1,)), [t(1, 1, 4, 4)]),
    (O.AveragePool(), [t(1, 1, 4, 4, dtype=DType.I64)]),
    (O.GlobalAveragePool(), [t(2, 3)]),
    (O.Reshape(shape=(5,)), [t(2, 3)]),
    (O.Reshape(shape=(-1, 3)), [t(2, 3)]),
    (O.Transpose(perm=(0, 0)), [t(2, 3)]),
    (O.Transpose(perm=(0,)), [t(2, 3)]),
    (O.Concat(axis=1), [t(2, 3), t(3, 3)]),
    (O.Concat(axis=2), [t(2, 3), t(2, 3)]),
    (O.Concat(axis=0), [t(2, 3), t(2, 3, 1)]),
    (O.Concat(axis=0), []),
    (O.Gather(axis=0), [t(2, 3), t(2)]),
    (O.Gather(axis=2), [t(2, 3), t(2, dtype=DType.I64)]),
    (O.Slice(starts=(0,), ends=(1,), axes=(2,), steps=(1,)), [t(2, 3)]),
    (O.Slice(starts=(0,), ends=(1,), axes=(0,), steps=(0,)), [t(2, 3)]),
    (O.Slice(starts=(0, 1), ends=(1,), axes=(0,), steps=(1,)), [t(2, 3)]),
    (O.Split(axis=1, sizes=(1, 1)), [t(2, 3)]),
    (O.Split(axis=1, sizes=(4, -1)), [t(2, 3)]),
    (O.Expand(shape=(4, 4)), [t(2, 3)]),
    (O.Expand(shape=(-1, 3)), [t(2, 3)]),
    (O.Expand(shape=(-1,)), [t(1)]),
    (O.Pad(pads=(1, 1)), [t(2, 3)]),
    (O.Pad(pads=(0, -4, 0, 0)), [t(2, 3)]),
    (O.Pad(pads=(0, 0, 0, 0), mode="wrap"), [t(2, 3)]),
    (O.Cast(to="f128"), [t(2)]),
    (O.Fill(shape=(2,), dtype="x"), []),
    (O.Fill(shape=(-2,)), []),
    (O.XbarMVM(kind="linear"), [t(2, 3), t(1, 4, 5)]),
    (O.XbarMVM(kind="linear"), [t(2, 3), t(3, 5)]),
    (O.XbarMVM(kind="conv", kernel=(3, 3)), [t(1, 3, 8, 8), t(0, 27, 4)]),
    (O.XbarMVM(kind="bogus"), [t(2, 3), t(2, 3, 5)]),
]


@pytest.mark.parametrize(
    ("op", "ins"), BAD_INFER, ids=[f"{op.NAME}-{i}" for i, (op, _) in enumerate(BAD_INFER)]
)
def test_infer_rejects(op: O.Op, ins: list[TensorType]) -> None:
    with pytest.raises(VerifyError, match=op.NAME):
        op.infer(ins)


def test_every_op_registered_once() -> None:
    assert len(ops.OPS) == len({id(c) for c in ops.OPS.values()})
    for name, cls in ops.OPS.items():
        assert name == cls.NAME


@given(shapes=mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=3))
def test_broadcast_matches_numpy_ok(shapes: object) -> None:
    sa, sb = shapes.input_shapes  # type: ignore[attr-defined]
    assert O.broadcast_shapes(O.Add(), sa, sb) == np.broadcast_shapes(sa, sb)


@given(sa=array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3),
       sb=array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3))  # fmt: skip
def test_broadcast_matches_numpy_any(sa: tuple[int, ...], sb: tuple[int, ...]) -> None:
    try:
        want: tuple[int, ...] | None = np.broadcast_shapes(sa, sb)
    except ValueError:
        want = None
    if want is None:
        with pytest.raises(VerifyError):
            O.Add().infer([t(*sa), t(*sb)])
    else:
        assert O.Add().infer([t(*sa), t(*sb)]) == (t(*want),)


@given(sa=array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=3),
       sb=array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=3))  # fmt: skip
def test_matmul_shape_matches_numpy(sa: tuple[int, ...], sb: tuple[int, ...]) -> None:
    try:
        want: tuple[int, ...] | None = np.matmul(np.zeros(sa), np.zeros(sb)).shape
    except ValueError:
        want = None
    if want is None:
        with pytest.raises(VerifyError):
            O.MatMul().infer([t(*sa), t(*sb)])
    else:
        assert O.MatMul().infer([t(*sa), t(*sb)]) == (t(*want),)


@given(
    size=st.integers(1, 12),
    k=st.integers(1, 4),
    s=st.integers(1, 3),
    p0=st.integers(0, 2),
    p1=st.integers(0, 2),
    d=st.integers(1, 2),
    ceil=st.booleans(),
)
def test_window_out_matches_pytorch_rule(
    size: int, k: int, s: int, p0: int, p1: int, d: int, ceil: bool
) -> None:
    span = size + p0 + p1 - d * (k - 1) - 1
    if span < 0:
        return
    rnd = math.ceil if ceil else math.floor
    want = rnd(span / s) + 1
    if ceil and (want - 1) * s >= size + p0:
        want -= 1
    assert O.window_out(size, k, s, p0, p1, d, ceil) == want


@given(
    dim=st.integers(0, 6),
    start=st.integers(-9, 9),
    end=st.integers(-9, 9),
    step=st.sampled_from([-3, -2, -1, 1, 2, 3]),
)
def test_slice_range_follows_onnx_clamping(dim: int, start: int, end: int, step: int) -> None:
    # The ONNX Slice rule, written out: negative indices count from the end; then clamp start
    # to [0, dim] (step > 0) or [0, dim-1] (step < 0), end to [0, dim] or [-1, dim-1].
    s = start + dim if start < 0 else start
    e = end + dim if end < 0 else end
    if step > 0:
        s, e = min(max(s, 0), dim), min(max(e, 0), dim)
    else:
        s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
    want = list(range(s, e, step))
    assert list(O.slice_range(dim, start, end, step)) == want
    x = np.arange(dim, dtype=np.float32)
    op = O.Slice(starts=(start,), ends=(end,), axes=(0,), steps=(step,))
    g = Graph()
    v = g.add_input(t(dim), "x")
    n = g.add(op, [v])
    g.outputs = [n.outputs[0]]
    (got,) = interp.run(g, [x])
    np.testing.assert_array_equal(got, x[want] if want else np.zeros(0, np.float32))
