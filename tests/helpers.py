"""Test helpers: build small ONNX models, import them, and compare xbarc with onnxruntime."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from xbarc.frontend import load_onnx
from xbarc.ir import Graph, interp

NP_TO_ONNX = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float64): TensorProto.DOUBLE,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.bool_): TensorProto.BOOL,
}
IR_VERSION = 8
"""IR version of hand-built models (onnxruntime accepts it at every opset we use)."""


def vinfo(name: str, dtype: object, shape: Sequence[int | str] | None) -> onnx.ValueInfoProto:
    """A tensor value info; ``dtype`` is a NumPy dtype or an ONNX element type code."""
    code = dtype if isinstance(dtype, int) else NP_TO_ONNX[np.dtype(dtype)]  # type: ignore[arg-type]
    return helper.make_tensor_value_info(name, code, shape)


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    """An initializer from an array."""
    return numpy_helper.from_array(np.asarray(array), name)


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Mapping[str, np.ndarray | tuple[object, Sequence[int | str]]],
    outputs: Sequence[str | tuple[str, object, Sequence[int | str]]],
    *,
    initializers: Mapping[str, np.ndarray] | None = None,
    opset: int = 17,
    extra_opsets: Mapping[str, int] | None = None,
    functions: Sequence[onnx.FunctionProto] = (),
    ir_version: int = IR_VERSION,
) -> onnx.ModelProto:
    """A single-graph model; ``inputs`` maps names to sample arrays or (dtype, shape) pairs.

    Output types come from ONNX shape inference unless given as (name, dtype, shape).
    """
    ins = []
    for name, spec in inputs.items():
        if isinstance(spec, np.ndarray | np.generic):
            ins.append(vinfo(name, spec.dtype, np.shape(spec)))
        else:
            dtype, shape = spec
            ins.append(vinfo(name, dtype, shape))
    outs = [
        helper.make_value_info(o, onnx.TypeProto()) if isinstance(o, str) else vinfo(*o)
        for o in outputs
    ]
    inits = [init(k, v) for k, v in (initializers or {}).items()]
    graph = helper.make_graph(list(nodes), "test", ins, outs, initializer=inits)
    opsets = [helper.make_opsetid("", opset)]
    opsets += [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(
        graph, opset_imports=opsets, functions=list(functions), producer_name="xbarc-tests"
    )
    model.ir_version = ir_version
    # Let ONNX shape inference type the outputs.
    try:
        typed = onnx.shape_inference.infer_shapes(model)
    except Exception:
        typed = model
    for o, t in zip(model.graph.output, typed.graph.output, strict=True):
        if t.type.HasField("tensor_type") and not o.type.HasField("tensor_type"):
            o.type.CopyFrom(t.type)
    return model


def ort_run(
    model: onnx.ModelProto | str | Path, feeds: Mapping[str, np.ndarray]
) -> list[np.ndarray]:
    """Run a model with onnxruntime on the CPU (graph optimisations off: pure semantics)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    return list(sess.run(None, {k: np.asarray(v) for k, v in feeds.items()}))


def import_model(model: onnx.ModelProto, *, batch: int = 1) -> Graph:
    """Save ``model`` to a temporary file and import it with ``load_onnx``."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        onnx.save(model, str(path))
        g = load_onnx(path, batch=batch)
    g.verify()
    return g


def assert_close(got: np.ndarray, want: np.ndarray, *, tol: float = 1e-4, what: str = "") -> None:
    """Same shape and dtype; exact for ints and bools, else max|err| <= tol * max(1, max|want|)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != onnxruntime {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != onnxruntime {want.dtype}"
    if not np.issubdtype(want.dtype, np.floating):
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN positions")
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=f"{what}: inf positions")
    fin = np.isfinite(want)
    if not fin.any():
        return
    err = float(np.max(np.abs(got[fin].astype(np.float64) - want[fin])))
    scale = max(1.0, float(np.max(np.abs(want[fin]))))
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol:g} * {scale:.3g}"


def check_model(
    model: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    *,
    tol: float = 1e-4,
    batch: int = 1,
) -> Graph:
    """Import ``model``, run it with the interpreter and onnxruntime, compare every output."""
    g = import_model(model, batch=batch)
    want = ort_run(model, feeds)
    feeds = {k: np.asarray(v) for k, v in feeds.items()}
    got = interp.run(g, {v.name: feeds[v.name] for v in g.inputs})
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert_close(a, b, tol=tol, what=f"output {i}")
    return g


def node_check(
    op_type: str,
    inputs: Mapping[str, np.ndarray],
    *,
    consts: Mapping[str, np.ndarray] | None = None,
    n_out: int = 1,
    opset: int = 17,
    tol: float = 1e-4,
    **attrs: object,
) -> Graph:
    """One ``op_type`` node whose operands are graph inputs then initializers (in that order).

    An empty-string key in ``consts`` is not allowed; to skip an optional operand pass a name
    starting with ``-`` in ``consts``: it becomes an empty operand name.
    """
    names = list(inputs) + [("" if k.startswith("-") else k) for k in (consts or {})]
    inits = {k: v for k, v in (consts or {}).items() if not k.startswith("-")}
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op_type, names, outs, name=f"{op_type.lower()}_node", **attrs)
    model = make_model([node], dict(inputs), outs, initializers=inits, opset=opset)
    return check_model(model, inputs, tol=tol)


def rng(seed: int = 0) -> np.random.Generator:
    """The seeded generator every test draws from."""
    return np.random.default_rng(seed)


def randn(*shape: int, seed: int = 0, dtype: type = np.float32) -> np.ndarray:
    """Seeded standard-normal samples."""
    return np.asarray(rng(seed).standard_normal(shape), dtype=dtype)


def tiny_mlp(path: Path) -> Path:
    """8 → 6 → ReLU → 3 (two Gemm layers with biases), seeded weights."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1),
    ]
    model = make_model(
        nodes,
        {"input": (np.float32, ["N", 8])},
        [("logits", np.float32, ["N", 3])],
        initializers={
            "w1": (rng.standard_normal((6, 8)) * 0.4).astype(np.float32),
            "b1": (rng.standard_normal(6) * 0.1).astype(np.float32),
            "w2": (rng.standard_normal((3, 6)) * 0.4).astype(np.float32),
            "b2": (rng.standard_normal(3) * 0.1).astype(np.float32),
        },
    )
    onnx.save(model, str(path))
    return path


def run_cli(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """Run ``xbarc ARGS`` in this process; return (exit code, stdout, stderr)."""
    from xbarc.cli import main

    monkeypatch.setattr(sys, "argv", ["xbarc", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err
