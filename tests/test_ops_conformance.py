"""Per-op conformance: one- or few-node ONNX models, imported and interpreted, against onnxruntime.

Data operands are graph inputs (so the interpreter kernel runs, not the import-time folder);
shape-like operands are initializers (xbarc needs them constant). Where onnxruntime and the
ONNX spec disagree in a corner case the test follows onnxruntime and says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import (
    assert_close,
    check_model,
    import_model,
    make_model,
    node_check,
    ort_run,
    randn,
    rng,
)

from xbarc.errors import FrontendError
from xbarc.frontend import supported_ops
from xbarc.ir import interp

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


def _tensor(v: np.generic) -> object:
    """A one-element tensor attribute (ConstantOfShape's ``value``)."""
    return numpy_helper.from_array(np.array([v]))


def i64(*v: int) -> np.ndarray:
    return np.array(v, np.int64)


def ints(shape: tuple[int, ...], lo: int = -9, hi: int = 10, seed: int = 0) -> np.ndarray:
    return rng(seed).integers(lo, hi, size=shape).astype(np.int64)


small_shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple)


def test_every_supported_op_is_covered() -> None:
    # Keep this list in step with the tests below when the frontend learns a new op.
    covered = {
        "Abs", "Add", "Attention", "AveragePool", "BatchNormalization", "Cast", "CastLike",
        "Celu", "Clip", "Concat", "Elu", "Mish", "PRelu", "Selu", "Softsign",
        "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "DepthToSpace", "Div", "Dropout",
        "Equal", "Erf", "Exp", "Expand",
        "Flatten", "Gather", "Gelu", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater",
        "GreaterOrEqual", "HardSigmoid", "HardSwish", "Identity", "InstanceNormalization",
        "LayerNormalization",
        "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "MatMul", "Max", "MaxPool",
        "Min", "Mul", "Neg", "Not", "Pad", "Pow", "Range", "Reciprocal", "ReduceMax",
        "ReduceMean", "ReduceSum", "Relu", "RMSNormalization", "Reshape", "Resize", "Shape",
        "Sigmoid",
        "Size", "Slice", "SpaceToDepth",
        "Softmax", "Softplus", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Tile",
        "Transpose", "Unsqueeze", "Where",
    }  # fmt: skip
    assert set(supported_ops()) <= covered, sorted(set(supported_ops()) - covered)


# ----------------------------------------------------------------------------- elementwise

UNARY = ["Relu", "Sigmoid", "Tanh", "Erf", "Exp", "Neg", "Abs", "Reciprocal", "Softplus",
         "HardSwish", "Identity"]  # fmt: skip


@pytest.mark.parametrize("op", UNARY)
def test_unary(op: str) -> None:
    x = randn(3, 4, 5) * 3
    node_check(op, {"x": x})


@pytest.mark.parametrize("op", ["Sqrt", "Log"])
def test_unary_positive(op: str) -> None:
    x = np.abs(randn(3, 4, 5)) + 0.01
    node_check(op, {"x": x})


@pytest.mark.parametrize("alpha", [0.01, 0.2, -0.5])
def test_leaky_relu(alpha: float) -> None:
    node_check("LeakyRelu", {"x": randn(2, 3, 4)}, alpha=alpha)


@pytest.mark.parametrize(
    ("op", "attrs", "opset"),
    [
        ("Elu", {}, 17),
        ("Elu", {"alpha": 0.3}, 17),
        ("Selu", {}, 17),
        ("Selu", {"alpha": 1.5, "gamma": 0.8}, 17),
        ("Celu", {}, 17),
        ("Celu", {"alpha": 2.5}, 17),
        ("Mish", {}, 18),
        ("Softsign", {}, 17),
    ],
)
def test_composed_activations(op: str, attrs: dict[str, object], opset: int) -> None:
    x = randn(3, 4, 5) * 4
    x[0, 0, :3] = [0.0, 60.0, -60.0]  # exp(60) overflows float32: the lowering must not
    node_check(op, {"x": x}, opset=opset, **attrs)


@pytest.mark.parametrize("slope_shape", [(1,), (3, 1, 1), (5,)])
def test_prelu(slope_shape: tuple[int, ...]) -> None:
    node_check("PRelu", {"x": randn(2, 3, 4, 5)}, consts={"s": randn(*slope_shape, seed=3)})
    node_check("PRelu", {"x": randn(2, 3, 4, 5), "s": randn(*slope_shape, seed=4)})


def test_hard_sigmoid() -> None:
    node_check("HardSigmoid", {"x": randn(4, 5) * 4})
    node_check("HardSigmoid", {"x": randn(4, 5) * 4}, alpha=0.3, beta=0.4)


@pytest.mark.parametrize("approximate", [None, "none", "tanh"])
def test_gelu(approximate: str | None) -> None:
    attrs = {} if approximate is None else {"approximate": approximate}
    node_check("Gelu", {"x": randn(3, 7) * 3}, opset=20, **attrs)


DTYPE_CASES = [
    ("Relu", {}),
    ("Sigmoid", {}),
    ("Tanh", {}),
    ("Exp", {}),
    ("LeakyRelu", {"alpha": 0.1}),
    ("Softmax", {"axis": 0}),
    ("LogSoftmax", {}),
    ("Identity", {}),
]


@pytest.mark.parametrize(("op", "attrs"), DTYPE_CASES, ids=[c[0] for c in DTYPE_CASES])
@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_unary_other_float_types(op: str, attrs: dict[str, object], dtype: type) -> None:
    tol = 1e-2 if dtype is np.float16 else 1e-4
    g = node_check(op, {"x": (randn(3, 4) * 2).astype(dtype)}, tol=tol, **attrs)
    assert g.outputs[0].type.dtype.numpy == np.dtype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_linear_other_float_types(dtype: type) -> None:
    tol = 1e-2 if dtype is np.float16 else 1e-4
    x = randn(2, 3).astype(dtype)
    consts = {"w": randn(3, 4, seed=1).astype(dtype), "c": randn(4, seed=2).astype(dtype)}
    node_check("Gemm", {"x": x}, consts=consts, alpha=0.5, beta=2.0, tol=tol)
    node_check("MatMul", {"x": x, "w": consts["w"]}, tol=tol)
    node_check("Add", {"x": x, "c": consts["c"][:3]}, tol=tol)
    ln = {"s": np.ones(3, dtype), "b": np.zeros(3, dtype)}
    node_check("LayerNormalization", {"x": x}, consts=ln, tol=tol)
    node_check("Clip", {"x": x}, consts={"lo": np.array(-0.5, dtype)}, tol=tol)


def test_not() -> None:
    node_check("Not", {"x": randn(3, 4) > 0})


def test_identity_int() -> None:
    node_check("Identity", {"x": ints((3, 4))})


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=3))
@settings(max_examples=15)
def test_binary_float_broadcast(op: str, shapes: object) -> None:
    sa, sb = shapes.input_shapes  # type: ignore[attr-defined]
    a, b = randn(*sa, seed=1), randn(*sb, seed=2)
    if op == "Div":
        b = np.where(np.abs(b) < 0.1, np.float32(0.5), b)
    node_check(op, {"a": a, "b": b})


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_binary_int64(op: str) -> None:
    a = ints((4, 5), -20, 21, seed=3)
    b = ints((5,), -7, 8, seed=4)
    b[b == 0] = 3
    node_check(op, {"a": a, "b": b})


def test_integer_division_truncates_toward_zero() -> None:
    a = i64(7, -7, 7, -7, 0, 1, -1)
    b = i64(2, 2, -2, -2, 5, -3, 3)
    g = node_check("Div", {"a": a, "b": b})
    assert g.nodes[0].op.NAME == "div"


def test_binary_const_operand() -> None:
    node_check("Add", {"a": randn(2, 3)}, consts={"b": randn(3, seed=5)})


@pytest.mark.parametrize(
    ("exp", "dtype"), [(np.array(2.0, np.float32), None), (None, np.float32), (None, np.int64)]
)
def test_pow(exp: np.ndarray | None, dtype: type | None) -> None:
    x = np.abs(randn(3, 4)) + 0.1
    if exp is not None:
        node_check("Pow", {"x": x}, consts={"y": exp})
    elif dtype is np.int64:
        node_check("Pow", {"x": randn(3, 4), "y": i64(0, 1, 2, 3)})
    else:
        node_check("Pow", {"x": x, "y": randn(4, seed=3)})


CLIP_CASES = [(-0.5, 0.7), (None, 0.7), (-0.5, None), (None, None)]


@pytest.mark.parametrize(("lo", "hi"), CLIP_CASES)
def test_clip_inputs(lo: float | None, hi: float | None) -> None:
    consts: dict[str, np.ndarray] = {}
    if lo is not None or hi is not None:
        consts["lo" if lo is not None else "-lo"] = np.array(lo or 0, np.float32)
    if hi is not None:
        consts["hi"] = np.array(hi, np.float32)
    node_check("Clip", {"x": randn(4, 5)}, consts=consts, opset=13)


@pytest.mark.parametrize(("lo", "hi"), CLIP_CASES)
def test_clip_attrs_opset10(lo: float | None, hi: float | None) -> None:
    # Clip-6 (min/max attributes) is current up to opset 10; the model is upgraded on import.
    attrs = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
    node_check("Clip", {"x": randn(4, 5)}, opset=10, **attrs)


@pytest.mark.parametrize("op", ["Max", "Min", "Sum"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_variadic(op: str, n: int) -> None:
    shapes = [(2, 3, 4), (3, 1), (4,)][:n]
    node_check(op, {f"x{i}": randn(*s, seed=i) for i, s in enumerate(shapes)})


@pytest.mark.parametrize("op", ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_compare(op: str, dtype: type) -> None:
    # Small integers make ties likely (where <= and < differ).
    a = ints((3, 4), -2, 3, seed=1).astype(dtype)
    b = ints((4,), -2, 3, seed=2).astype(dtype)
    node_check(op, {"a": a, "b": b})


@given(shapes=mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=3))
@settings(max_examples=20)
def test_where(shapes: object) -> None:
    sc, sa, sb = shapes.input_shapes  # type: ignore[attr-defined]
    c = randn(*sc, seed=1) > 0
    node_check("Where", {"c": c, "a": randn(*sa, seed=2), "b": randn(*sb, seed=3)})


def test_where_int() -> None:
    node_check("Where", {"c": randn(3, 4) > 0, "a": ints((3, 4)), "b": ints((4,), seed=2)})


# ----------------------------------------------------------------------------- linear algebra


@given(
    m=st.integers(1, 4),
    k=st.integers(1, 4),
    n=st.integers(1, 4),
    trans_a=st.booleans(),
    trans_b=st.booleans(),
    alpha=st.sampled_from([1.0, 0.5, -2.0]),
    beta=st.sampled_from([1.0, 0.0, 3.0]),
    c_kind=st.sampled_from(["none", "scalar", "n", "1n", "m1", "mn"]),
    b_const=st.booleans(),
)
@settings(max_examples=30)
def test_gemm(
    m: int,
    k: int,
    n: int,
    trans_a: bool,
    trans_b: bool,
    alpha: float,
    beta: float,
    c_kind: str,
    b_const: bool,
) -> None:
    a = randn(*((k, m) if trans_a else (m, k)), seed=1)
    b = randn(*((n, k) if trans_b else (k, n)), seed=2)
    c_shape = {"scalar": (), "n": (n,), "1n": (1, n), "m1": (m, 1), "mn": (m, n)}.get(c_kind)
    inputs = {"a": a} if b_const else {"a": a, "b": b}
    consts = {"b": b} if b_const else {}
    if c_shape is not None:
        consts["c"] = randn(*c_shape, seed=3)
    node_check(
        "Gemm",
        inputs,
        consts=consts,
        alpha=alpha,
        beta=beta,
        transA=int(trans_a),
        transB=int(trans_b),
    )


MATMUL_SHAPES = [
    ((4,), (4,)),
    ((4,), (4, 3)),
    ((2, 4), (4,)),
    ((2, 4), (4, 3)),
    ((5, 2, 4), (4, 3)),
    ((4,), (5, 4, 3)),
    ((5, 2, 4), (4,)),
    ((5, 2, 4), (5, 4, 3)),
    ((1, 2, 4), (5, 4, 3)),
    ((2, 1, 2, 4), (3, 4, 3)),
]


@pytest.mark.parametrize(("sa", "sb"), MATMUL_SHAPES, ids=str)
def test_matmul(sa: tuple[int, ...], sb: tuple[int, ...]) -> None:
    node_check("MatMul", {"a": randn(*sa, seed=1), "b": randn(*sb, seed=2)})


def test_matmul_const_weight() -> None:
    node_check("MatMul", {"a": randn(2, 3, 4)}, consts={"w": randn(4, 6, seed=1)})


@st.composite
def conv_case(draw: st.DrawFn) -> dict[str, object]:
    nsp = draw(st.sampled_from([1, 2]))
    group = draw(st.sampled_from([1, 1, 2, 3]))
    cin_g = draw(st.integers(1, 2))
    cout_g = draw(st.integers(1, 2))
    depthwise = draw(st.booleans()) and group > 1
    if depthwise:
        cin_g = 1
    k = tuple(draw(st.integers(1, 3)) for _ in range(nsp))
    s = tuple(draw(st.integers(1, 3)) for _ in range(nsp))
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    # onnxruntime rejects dilations with SAME_* auto padding.
    if auto_pad.startswith("SAME"):
        d = (1,) * nsp
    else:
        d = tuple(draw(st.integers(1, 2)) for _ in range(nsp))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(2 * nsp))
    size = tuple(draw(st.integers(1, 7)) for _ in range(nsp))
    for i in range(nsp):
        span = d[i] * (k[i] - 1) + 1
        extra = pads[i] + pads[i + nsp] if auto_pad == "NOTSET" else 0
        assume(size[i] + extra >= span or auto_pad.startswith("SAME"))
    return {
        "x": (draw(st.integers(1, 2)), group * cin_g, *size),
        "w": (group * cout_g, cin_g, *k),
        "group": group,
        "strides": s,
        "dilations": d,
        "pads": pads,
        "auto_pad": auto_pad,
        "bias": draw(st.booleans()),
        "kernel_attr": draw(st.booleans()),
    }


@given(case=conv_case())
@settings(max_examples=60)
def test_conv(case: dict[str, object]) -> None:
    x = randn(*case["x"], seed=1)  # type: ignore[misc]
    w = randn(*case["w"], seed=2)  # type: ignore[misc]
    attrs: dict[str, object] = {
        "group": case["group"],
        "strides": list(case["strides"]),  # type: ignore[call-overload]
        "dilations": list(case["dilations"]),  # type: ignore[call-overload]
    }
    if case["auto_pad"] == "NOTSET":
        attrs["pads"] = list(case["pads"])  # type: ignore[call-overload]
    else:
        attrs["auto_pad"] = case["auto_pad"]
    if case["kernel_attr"]:
        attrs["kernel_shape"] = list(w.shape[2:])
    consts = {"w": w}
    if case["bias"]:
        consts["b"] = randn(w.shape[0], seed=3)
    node_check("Conv", {"x": x}, consts=consts, **attrs)


def test_conv_depthwise_and_runtime_weight() -> None:
    x, w = randn(2, 4, 6, 6, seed=1), randn(4, 1, 3, 3, seed=2)
    node_check("Conv", {"x": x, "w": w}, group=4, pads=[1, 1, 1, 1])


@pytest.mark.parametrize("rank", [2, 3, 4])
def test_batch_norm(rank: int) -> None:
    shape = (2, 3, 4, 5)[:rank]
    consts = {
        "s": randn(3, seed=1),
        "b": randn(3, seed=2),
        "m": randn(3, seed=3),
        "v": np.abs(randn(3, seed=4)) + 0.1,
    }
    node_check("BatchNormalization", {"x": randn(*shape)}, consts=consts, epsilon=1e-3)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1, -3])
def test_softmax(op: str, opset: int, axis: int | None) -> None:
    # Before opset 13 the input is coerced to 2-D at ``axis`` (default 1): the normalisation
    # runs over all axes from ``axis`` on.
    attrs = {} if axis is None else {"axis": axis}
    node_check(op, {"x": randn(2, 3, 4) * 3}, opset=opset, **attrs)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2, -3])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm(axis: int, bias: bool) -> None:
    shape = (2, 3, 4)
    norm = shape[axis:]
    consts = {"s": randn(*norm, seed=1)}
    if bias:
        consts["b"] = randn(*norm, seed=2)
    node_check("LayerNormalization", {"x": randn(*shape) * 2 + 1}, consts=consts, axis=axis)


def test_layer_norm_broadcast_scale_and_epsilon() -> None:
    consts = {"s": randn(4, seed=1), "b": randn(1, seed=2)}
    node_check("LayerNormalization", {"x": randn(2, 3, 4)}, consts=consts, axis=1, epsilon=0.1)


ATTENTION_CASES = {
    "4d": ({"q": (2, 3, 4, 8), "k": (2, 3, 5, 8), "v": (2, 3, 5, 6)}, {}),
    "4d-scale-softcap": ({"q": (1, 2, 3, 4), "k": (1, 2, 3, 4), "v": (1, 2, 3, 4)},
                         {"scale": 0.3, "softcap": 2.0}),
    "4d-causal": ({"q": (2, 2, 4, 4), "k": (2, 2, 4, 4), "v": (2, 2, 4, 4)}, {"is_causal": 1}),
    "4d-gqa": ({"q": (1, 4, 3, 4), "k": (1, 2, 5, 4), "v": (1, 2, 5, 4)}, {}),
    "3d-heads": ({"q": (2, 3, 12), "k": (2, 5, 12), "v": (2, 5, 12)},
                 {"q_num_heads": 3, "kv_num_heads": 3}),
    "3d-gqa": ({"q": (2, 3, 16), "k": (2, 3, 8), "v": (2, 3, 8)},
               {"q_num_heads": 4, "kv_num_heads": 2}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
@pytest.mark.parametrize("mask", ["none", "bool", "float"])
def test_attention(case: str, mask: str) -> None:
    shapes, attrs = ATTENTION_CASES[case]
    ins = {name: randn(*shape, seed=i) for i, (name, shape) in enumerate(shapes.items())}
    sq, skv = (
        shapes["q"][-2 if len(shapes["q"]) == 4 else 1],
        shapes["k"][-2 if len(shapes["k"]) == 4 else 1],
    )
    if mask == "bool":
        keep = rng(7).random((sq, skv)) < 0.7
        keep[:, 0] = True  # no fully masked row (the spec's zero-row rule is not modelled)
        ins["m"] = keep
    elif mask == "float":
        ins["m"] = randn(sq, skv, seed=8)
    node_check("Attention", ins, opset=23, **attrs)


def test_attention_kv_cache_is_refused(tmp_path: Path) -> None:
    ins = {"q": randn(1, 1, 2, 4), "k": randn(1, 1, 2, 4), "v": randn(1, 1, 2, 4)}
    ins |= {"m": randn(2, 4), "pk": randn(1, 1, 2, 4), "pv": randn(1, 1, 2, 4)}
    with pytest.raises(FrontendError, match="past_key"):
        node_check("Attention", ins, opset=23, n_out=3)


@pytest.mark.parametrize("axis", [-1, -2, 1])
def test_rms_norm(axis: int) -> None:
    shape = (2, 3, 4)
    consts = {"s": randn(*shape[axis:], seed=1)}
    node_check("RMSNormalization", {"x": randn(*shape) * 2}, consts=consts, opset=23, axis=axis)
    node_check("RMSNormalization", {"x": randn(*shape)}, consts=consts, opset=23, epsilon=0.5)


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 2, 2)])
def test_instance_norm(shape: tuple[int, ...]) -> None:
    consts = {"s": randn(shape[1], seed=1), "b": randn(shape[1], seed=2)}
    node_check("InstanceNormalization", {"x": randn(*shape) * 2 + 1}, consts=consts)
    node_check("InstanceNormalization", {"x": randn(*shape)}, consts=consts, epsilon=0.3)


def test_instance_norm_with_runtime_scale() -> None:
    node_check("InstanceNormalization", {"x": randn(2, 3, 4, 4), "s": randn(3), "b": randn(3)})


# ----------------------------------------------------------------------------- reductions


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum", "ReduceMax"])
@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("axes", [None, (1,), (-1,), (0, 2), (-3, -1)])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce(op: str, opset: int, axes: tuple[int, ...] | None, keepdims: int) -> None:
    x = randn(2, 3, 4)
    # Axes move from an attribute to an input at opset 18 (ReduceSum: at opset 13).
    as_input = opset >= (13 if op == "ReduceSum" else 18)
    consts: dict[str, np.ndarray] = {}
    attrs: dict[str, object] = {"keepdims": keepdims}
    if axes is not None:
        if as_input:
            consts["axes"] = i64(*axes)
        else:
            attrs["axes"] = list(axes)
    node_check(op, {"x": x}, consts=consts, opset=opset, **attrs)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum", "ReduceMax"])
@pytest.mark.parametrize("noop", [0, 1])
def test_reduce_empty_axes_input(op: str, noop: int) -> None:
    x = randn(2, 3, 4)
    g = node_check(op, {"x": x}, consts={"axes": i64()}, opset=18, noop_with_empty_axes=noop)
    assert [n.op.NAME for n in g.nodes] == (["identity"] if noop else [g.nodes[0].op.NAME])


def test_reduce_sum_int() -> None:
    node_check("ReduceSum", {"x": ints((3, 4))}, consts={"axes": i64(1)}, opset=13)


# ----------------------------------------------------------------------------- pools


@st.composite
def pool_case(draw: st.DrawFn) -> dict[str, object]:
    op = draw(st.sampled_from(["MaxPool", "AveragePool"]))
    nsp = draw(st.sampled_from([1, 2]))
    k = tuple(draw(st.integers(1, 3)) for _ in range(nsp))
    s = tuple(draw(st.integers(1, 3)) for _ in range(nsp))
    d = (1,) * nsp
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "NOTSET", "SAME_UPPER", "VALID"]))
    if op == "MaxPool" and auto_pad == "NOTSET":
        d = tuple(draw(st.integers(1, 2)) for _ in range(nsp))
    # onnxruntime wants each pad smaller than the kernel.
    pads = tuple(draw(st.integers(0, k[i % nsp] - 1)) for i in range(2 * nsp))
    size = tuple(draw(st.integers(1, 7)) for _ in range(nsp))
    for i in range(nsp):
        span = d[i] * (k[i] - 1) + 1
        extra = pads[i] + pads[i + nsp] if auto_pad == "NOTSET" else 0
        assume(size[i] + extra >= span or auto_pad == "SAME_UPPER")
        # onnxruntime's pools fail on a negative SAME padding (stride > kernel); xbarc uses 0.
        out = -(-size[i] // s[i])
        assume(auto_pad != "SAME_UPPER" or (out - 1) * s[i] + k[i] >= size[i])
    return {
        "op": op,
        "x": (draw(st.integers(1, 2)), 2, *size),
        "kernel_shape": k,
        "strides": s,
        "dilations": d,
        "pads": pads,
        "auto_pad": auto_pad,
        "ceil_mode": draw(st.integers(0, 1)),
        "count_include_pad": draw(st.integers(0, 1)),
    }


@given(case=pool_case())
@settings(max_examples=80)
def test_pool(case: dict[str, object]) -> None:
    op = str(case["op"])
    attrs: dict[str, object] = {
        "kernel_shape": list(case["kernel_shape"]),  # type: ignore[call-overload]
        "strides": list(case["strides"]),  # type: ignore[call-overload]
        "ceil_mode": case["ceil_mode"],
    }
    if case["auto_pad"] == "NOTSET":
        attrs["pads"] = list(case["pads"])  # type: ignore[call-overload]
    else:
        attrs["auto_pad"] = case["auto_pad"]
    if op == "MaxPool":
        attrs["dilations"] = list(case["dilations"])  # type: ignore[call-overload]
    else:
        attrs["count_include_pad"] = case["count_include_pad"]
    node_check(op, {"x": randn(*case["x"]) * 2}, opset=17, **attrs)  # type: ignore[misc]


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 5)])
def test_global_pool(op: str, shape: tuple[int, ...]) -> None:
    node_check(op, {"x": randn(*shape)})


# ----------------------------------------------------------------------------- data movement


@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1, -3])
def test_flatten(axis: int) -> None:
    node_check("Flatten", {"x": randn(2, 3, 4)}, axis=axis)


@pytest.mark.parametrize(
    "shape", [(0, -1), (-1,), (2, 0, 2, 2), (0, 0, 4), (-1, 4), (4, 6), (2, 3, -1)]
)
def test_reshape(shape: tuple[int, ...]) -> None:
    node_check("Reshape", {"x": randn(2, 3, 4)}, consts={"s": i64(*shape)})


def test_reshape_allowzero() -> None:
    node_check("Reshape", {"x": randn(2, 3, 4)}, consts={"s": i64(4, 3, 2)}, opset=14, allowzero=1)
    # With allowzero=1 a 0 is a real zero extent (the empty tensor comes from a Slice).
    nodes = [
        helper.make_node("Slice", ["x", "zero", "zero", "one"], ["e"]),
        helper.make_node("Reshape", ["e", "s"], ["y"], allowzero=1),
    ]
    inits = {"zero": i64(0), "one": i64(1), "s": i64(4, 0)}
    model = make_model(nodes, {"x": randn(2, 4)}, ["y"], initializers=inits, opset=14)
    g = check_model(model, {"x": randn(2, 4)})
    assert g.outputs[0].type.shape == (4, 0)


@pytest.mark.parametrize("perm", [None, (0, 2, 1), (2, 0, 1), (1, 0, 2)])
def test_transpose(perm: tuple[int, ...] | None) -> None:
    attrs = {} if perm is None else {"perm": list(perm)}
    node_check("Transpose", {"x": randn(2, 3, 4)}, **attrs)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2, -3])
def test_concat(axis: int) -> None:
    shapes = []
    for i in range(3):
        s = [2, 3, 4]
        s[axis] = i + 1
        shapes.append(tuple(s))
    node_check("Concat", {f"x{i}": randn(*s, seed=i) for i, s in enumerate(shapes)}, axis=axis)


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("idx", [np.array(1), np.array(-1), i64(0, -1, 2, -3), i64(1, 1, -2, 0)])
def test_gather(axis: int, idx: np.ndarray) -> None:
    x = randn(3, 4, 5)
    node_check("Gather", {"x": x}, consts={"i": idx.astype(np.int64)}, axis=axis)


def test_gather_embedding_lookup() -> None:
    # A constant table indexed by run-time token ids (data constant, indices computed).
    ids = i64(0, 3, -1, 2, 2, 1).reshape(2, 3)
    model = make_model(
        [helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)],
        {"ids": ids},
        ["y"],
        initializers={"table": randn(5, 4)},
    )
    check_model(model, {"ids": ids})


def test_gather_2d_indices_runtime() -> None:
    idx = i64(0, 2, -1, 1, 1, -3).reshape(2, 3)
    node_check("Gather", {"x": randn(3, 4), "i": idx}, axis=0)
    node_check("Gather", {"x": randn(3, 4), "i": idx.astype(np.int32)}, axis=1)


slice_bound = st.one_of(
    st.integers(-8, 8), st.sampled_from([INT64_MAX, INT64_MIN, 2**40, -(2**40)])
)


@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
    data=st.data(),
)
@settings(max_examples=60)
def test_slice(shape: tuple[int, ...], data: st.DataObject) -> None:
    rank = len(shape)
    axes = data.draw(st.lists(st.integers(-rank, rank - 1), min_size=1, max_size=rank))
    assume(len({a % rank for a in axes}) == len(axes))
    n = len(axes)
    starts = data.draw(st.lists(slice_bound, min_size=n, max_size=n))
    ends = data.draw(st.lists(slice_bound, min_size=n, max_size=n))
    steps = data.draw(st.lists(st.sampled_from([1, 2, 3, -1, -2, -3]), min_size=n, max_size=n))
    omit = data.draw(st.sampled_from(["none", "steps", "axes", "axes_steps"]))
    if omit in ("steps", "axes_steps"):
        steps = [1] * n
    if omit in ("axes", "axes_steps"):
        axes = list(range(n))
    consts = {"s": i64(*starts), "e": i64(*ends)}
    # An omitted operand in the middle is an empty name ("-a"); trailing ones are left off.
    consts["-a" if omit == "axes" else "a"] = i64(*axes)
    if omit in ("none", "axes"):
        consts["st"] = i64(*steps)
    elif omit == "axes_steps":
        del consts["a"]
    node_check("Slice", {"x": randn(*shape)}, consts=consts, opset=13)


def test_slice_int64_max_end_and_reverse() -> None:
    x = randn(4, 6)
    consts = {"s": i64(1, -1), "e": i64(INT64_MAX, INT64_MIN), "a": i64(0, 1), "st": i64(1, -1)}
    node_check("Slice", {"x": x}, consts=consts, opset=13)


@pytest.mark.parametrize(
    ("opset", "dim", "how", "n_out"),
    [
        (13, 6, {"split": (1, 3, 2)}, 3),
        (13, 6, {}, 3),  # no sizes: equal parts, one per output
        (11, 6, {"attr": (2, 4)}, 2),  # legacy split attribute
        (11, 6, {}, 2),
        (18, 6, {"num_outputs": 3}, 3),
        (18, 7, {"num_outputs": 4}, 4),  # ceil(7/4) = 2: parts 2, 2, 2, 1
        (18, 6, {"split": (5, 1)}, 2),
        (18, 6, {"split": (0, 6)}, 2),  # an empty part
    ],
)
def test_split(opset: int, dim: int, how: dict[str, object], n_out: int) -> None:
    x = randn(2, dim, 3)
    consts: dict[str, np.ndarray] = {}
    attrs: dict[str, object] = {"axis": 1}
    if "split" in how:
        consts["split"] = i64(*how["split"])  # type: ignore[arg-type]
    if "attr" in how:
        attrs["split"] = list(how["attr"])  # type: ignore[call-overload]
    if "num_outputs" in how:
        attrs["num_outputs"] = how["num_outputs"]
    node_check("Split", {"x": x}, consts=consts, n_out=n_out, opset=opset, **attrs)


@pytest.mark.parametrize("axis", [0, -1])
def test_split_negative_axis(axis: int) -> None:
    node_check("Split", {"x": randn(4, 4)}, consts={"s": i64(1, 3)}, n_out=2, axis=axis)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axes", [None, (0,), (-1,), (0, 2)])
def test_squeeze(opset: int, axes: tuple[int, ...] | None) -> None:
    x = randn(1, 3, 1)
    consts = {} if axes is None or opset < 13 else {"axes": i64(*axes)}
    attrs = {} if axes is None or opset >= 13 else {"axes": list(axes)}
    node_check("Squeeze", {"x": x}, consts=consts, opset=opset, **attrs)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axes", [(0,), (-1,), (0, 3), (1, -1), (-4, 2)])
def test_unsqueeze(opset: int, axes: tuple[int, ...]) -> None:
    x = randn(2, 3)
    consts = {"axes": i64(*axes)} if opset >= 13 else {}
    attrs = {"axes": list(axes)} if opset < 13 else {}
    node_check("Unsqueeze", {"x": x}, consts=consts, opset=opset, **attrs)


@pytest.mark.parametrize(
    ("xs", "shape"),
    [((3, 1), (3, 4)), ((3, 1), (2, 1, 4)), ((1,), (2, 3)), ((2, 3), (1, 1)), ((4, 1), (1,))],
)
def test_expand(xs: tuple[int, ...], shape: tuple[int, ...]) -> None:
    node_check("Expand", {"x": randn(*xs)}, consts={"s": i64(*shape)})


@pytest.mark.parametrize("reps", [(1, 1), (2, 3), (3, 1), (1, 0)])
def test_tile(reps: tuple[int, ...]) -> None:
    node_check("Tile", {"x": randn(2, 3)}, consts={"r": i64(*reps)})


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize(
    "pads", [(0, 1, 2, 0), (1, 2, 1, 2), (0, -1, 1, 0), (-1, 0, 1, -2), (0, 0, 0, 0)]
)
def test_pad(mode: str, pads: tuple[int, ...]) -> None:
    consts = {"p": i64(*pads)}
    if mode == "constant":
        consts["v"] = np.array(1.5, np.float32)
    node_check("Pad", {"x": randn(3, 4)}, consts=consts, mode=mode)


def test_pad_axes_opset18() -> None:
    consts = {"p": i64(1, 2), "-v": np.zeros(0), "a": i64(-1)}
    node_check("Pad", {"x": randn(2, 3, 4)}, consts=consts, opset=18)


def test_pad_int() -> None:
    node_check("Pad", {"x": ints((2, 3))}, consts={"p": i64(1, 0, 0, 2), "v": i64(7)})


# ----------------------------------------------------------------------------- shape ops


def _const_graph_check(nodes: list, inputs: dict[str, np.ndarray], outs: list[str], **kw: object):
    model = make_model(nodes, inputs, outs, **kw)  # type: ignore[arg-type]
    return check_model(model, inputs)


@pytest.mark.parametrize(("start", "end"), [(None, None), (1, None), (-2, None), (0, -1), (1, 2)])
def test_shape(start: int | None, end: int | None) -> None:
    attrs = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    g = node_check("Shape", {"x": randn(2, 3, 4)}, opset=15, **attrs)
    assert g.nodes == [] and g.outputs[0].is_const


def test_size() -> None:
    g = node_check("Size", {"x": randn(2, 3, 4)})
    assert g.outputs[0].is_const


@pytest.mark.parametrize(
    "value", [None, np.array([2.5], np.float32), np.array([7], np.int64), np.array([1], np.int32)]
)
def test_constant_of_shape(value: np.ndarray | None) -> None:
    attrs = {} if value is None else {"value": numpy_helper.from_array(value)}
    nodes = [
        helper.make_node("ConstantOfShape", ["s"], ["c"], **attrs),
        helper.make_node("Add", ["x", "c"], ["y"]),
    ]
    dtype = np.float32 if value is None else value.dtype
    x = np.ones((2, 3), dtype)
    _const_graph_check(nodes, {"x": x}, ["y"], initializers={"s": i64(2, 3)})


@pytest.mark.parametrize(
    "attr",
    [
        {"value": numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3))},
        {"value_float": 1.25},
        {"value_floats": [1.0, 2.0, 3.0]},
        {"value_int": 3},
        {"value_ints": [1, 2, 3]},
        {"value": numpy_helper.from_array(np.array(True))},
    ],
    ids=["value", "value_float", "value_floats", "value_int", "value_ints", "value_bool"],
)
def test_constant(attr: dict[str, object]) -> None:
    nodes = [helper.make_node("Constant", [], ["c"], **attr)]
    g = _const_graph_check(nodes, {}, ["c"])
    assert g.outputs[0].is_const


def test_constant_feeds_a_node() -> None:
    nodes = [
        helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0, 3.0]),
        helper.make_node("Mul", ["x", "c"], ["y"]),
    ]
    _const_graph_check(nodes, {"x": randn(2, 3)}, ["y"])


@pytest.mark.parametrize("opset", [7, 13])
def test_dropout(opset: int) -> None:
    if opset >= 12:
        consts = {"r": np.array(0.3, np.float32), "t": np.array(False)}
        node_check("Dropout", {"x": randn(3, 4)}, consts=consts, opset=opset)
    else:
        node_check("Dropout", {"x": randn(3, 4)}, opset=opset, ratio=0.3)


@pytest.mark.parametrize(
    ("src", "to"),
    [
        (np.float32, TensorProto.INT64),
        (np.float32, TensorProto.INT32),
        (np.float32, TensorProto.DOUBLE),
        (np.float32, TensorProto.BOOL),
        (np.int64, TensorProto.FLOAT),
        (np.bool_, TensorProto.FLOAT),
        (np.float32, TensorProto.FLOAT16),
    ],
)
def test_cast(src: type, to: int) -> None:
    x = (randn(3, 4) * 5).astype(src) if src is not np.bool_ else randn(3, 4) > 0
    node_check("Cast", {"x": x}, to=to)


def test_cast_like() -> None:
    node_check("CastLike", {"x": randn(3, 4) * 5, "t": ints((1,))}, opset=15)
    node_check("CastLike", {"x": ints((3, 4))}, consts={"t": randn(2)}, opset=15)


@pytest.mark.parametrize(
    ("start", "limit", "delta"),
    [(0, 5, 1), (2, 11, 3), (10, 0, -3), (5, 5, 1), (0.5, 3.0, 0.7), (1.0, -2.0, -0.5)],
)
def test_range(start: float, limit: float, delta: float) -> None:
    dtype = np.float32 if isinstance(start, float) else np.int64
    nodes = [
        helper.make_node("Range", ["a", "b", "c"], ["r"]),
        helper.make_node("Identity", ["r"], ["y"]),
    ]
    inits = {k: np.array(v, dtype) for k, v in (("a", start), ("b", limit), ("c", delta))}
    _const_graph_check(nodes, {}, ["y"], initializers=inits)


# ----------------------------------------------------------------------------- torch idioms fold


def test_torch_flatten_chain_folds() -> None:
    # torch.flatten(x, 1) as the classic exporter writes it.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    inits = {"zero": np.array(0, np.int64), "ax0": i64(0), "minus1": i64(-1)}
    x = randn(3, 2, 4)
    model = make_model(nodes, {"x": (np.float32, ["N", 2, 4])}, ["y"], initializers=inits)
    g = import_model(model, batch=3)
    assert [n.op.NAME for n in g.nodes] == ["reshape"]
    assert g.nodes[0].batch_coef == {"shape": (1, 0)}
    check_model(model, {"x": x}, batch=3)


def test_torch_expand_chain_folds() -> None:
    # cls_token.expand(B, -1, -1) as the classic exporter writes it:
    # ConstantOfShape → Mul → Equal → Where → Expand.
    nodes = [
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Gather", ["xs", "zero"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]),
        helper.make_node("Concat", ["b1", "m1", "m1"], ["target"], axis=0),
        helper.make_node("ConstantOfShape", ["three"], ["ones"], value=_tensor(np.int64(1))),
        helper.make_node("Mul", ["ones", "m1"], ["neg"]),
        helper.make_node("Equal", ["target", "neg"], ["eq"]),
        helper.make_node("Where", ["eq", "ones", "target"], ["shape"]),
        helper.make_node("Expand", ["cls", "shape"], ["e"]),
        helper.make_node("Concat", ["e", "x"], ["y"], axis=1),
    ]  # fmt: skip
    inits = {
        "zero": np.array(0, np.int64),
        "ax0": i64(0),
        "m1": i64(-1),
        "three": i64(3),
        "cls": randn(1, 1, 4, seed=9),
    }
    model = make_model(nodes, {"x": (np.float32, ["N", 5, 4])}, ["y"], initializers=inits)
    g = import_model(model, batch=2)
    assert [n.op.NAME for n in g.nodes] == ["expand", "concat"]
    assert g.nodes[0].op.shape == (2, 1, 1)
    assert g.nodes[0].batch_coef == {"shape": (1, 0, 0)}
    check_model(model, {"x": randn(2, 5, 4)}, batch=2)
    g6 = g.at_batch(6)
    x6 = randn(6, 5, 4, seed=4)
    assert_close(interp.run(g6, [x6])[0], ort_run(model, {"x": x6})[0])


def test_constant_of_shape_following_batch_becomes_fill() -> None:
    # zeros(x.shape) + x: the float fill follows the batch, so it stays a (rebindable) node.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("ConstantOfShape", ["s"], ["z"], value=_tensor(np.float32(0.5))),
        helper.make_node("Add", ["x", "z"], ["y"]),
    ]
    model = make_model(nodes, {"x": (np.float32, ["N", 3])}, ["y"])
    g = import_model(model, batch=2)
    assert [n.op.NAME for n in g.nodes] == ["fill", "add"]
    check_model(model, {"x": randn(2, 3)}, batch=2)
    x = randn(5, 3)
    assert_close(interp.run(g.at_batch(5), [x])[0], ort_run(model, {"x": x})[0])
