"""ONNX frontend: bundled models against onnxruntime, batch rebinding, and every way to fail."""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import (
    assert_close,
    check_model,
    import_model,
    init,
    make_model,
    ort_run,
    randn,
    vinfo,
)

from xbarc.errors import FrontendError, VerifyError
from xbarc.frontend import load_onnx
from xbarc.ir import interp

MODELS = Path(__file__).resolve().parent.parent / "models"
MODEL_FILES = sorted(MODELS.glob("*.onnx"))


def _model_input(path: Path, batch: int, seed: int) -> tuple[str, np.ndarray]:
    proto = onnx.load(str(path), load_external_data=False)
    (vi,) = proto.graph.input
    dims = [
        d.dim_value if d.HasField("dim_value") else batch for d in vi.type.tensor_type.shape.dim
    ]
    dims[0] = batch
    return vi.name, randn(*dims, seed=seed)


# ----------------------------------------------------------------------------- bundled models


def test_models_found() -> None:
    assert len(MODEL_FILES) >= 16, "models/*.onnx went missing"


@pytest.mark.parametrize("path", MODEL_FILES, ids=[p.name for p in MODEL_FILES])
def test_model_matches_onnxruntime(path: Path) -> None:
    name, x = _model_input(path, 4, seed=zlib.crc32(path.name.encode()))
    g = load_onnx(path, batch=4)
    g.verify()
    assert g.batch == 4
    (got,) = interp.run(g, [x])
    (want,) = ort_run(path, {name: x})
    assert_close(got, want, what=path.name)


@pytest.mark.parametrize("path", MODEL_FILES, ids=[p.name for p in MODEL_FILES])
def test_model_rebinds_batch(path: Path) -> None:
    g1 = load_onnx(path, batch=1)
    g5 = g1.at_batch(5)
    g5.verify()
    assert g5.batch == 5 and g1.batch == 1
    assert g5.inputs[0].type.shape[0] == 5 and g1.inputs[0].type.shape[0] == 1
    name, x = _model_input(path, 5, seed=7)
    (got,) = interp.run(g5, [x])
    (want,) = ort_run(path, {name: x})
    assert_close(got, want, what=f"{path.name} at batch 5")
    # Rebinding agrees with importing at that batch directly.
    assert str(g5) == str(load_onnx(path, batch=5))


@pytest.mark.parametrize("name", ["vit.onnx", "resnet8.dynamo.onnx"])
def test_print_is_deterministic(name: str) -> None:
    a = load_onnx(MODELS / name, batch=2)
    b = load_onnx(MODELS / name, batch=2)
    assert str(a) == str(b)
    assert str(a.clone()) == str(a)


def test_batch_must_be_positive() -> None:
    with pytest.raises(FrontendError, match="batch size"):
        load_onnx(MODELS / "mlp.onnx", batch=0)


# ----------------------------------------------------------------------------- malformed inputs


def _one_line_naming(e: pytest.ExceptionInfo[FrontendError], path: Path) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    return msg


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.onnx"
    with pytest.raises(FrontendError) as e:
        load_onnx(p)
    assert "no such file" in _one_line_naming(e, p)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(FrontendError) as e:
        load_onnx(tmp_path)
    _one_line_naming(e, tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    with pytest.raises(FrontendError) as e:
        load_onnx(p)
    _one_line_naming(e, p)


@pytest.mark.parametrize("frac", [0.01, 0.1, 0.33, 0.5, 0.77, 0.9, 0.999])
def test_truncated_model(tmp_path: Path, frac: float) -> None:
    data = (MODELS / "resnet8.onnx").read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: int(len(data) * frac)])
    with pytest.raises(FrontendError) as e:
        load_onnx(p)
    _one_line_naming(e, p)


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes(tmp_path: Path, seed: int) -> None:
    p = tmp_path / f"rand{seed}.onnx"
    p.write_bytes(np.random.default_rng(seed).bytes(64 + 997 * seed))
    with pytest.raises(FrontendError) as e:
        load_onnx(p)
    _one_line_naming(e, p)


def _save(tmp_path: Path, model: onnx.ModelProto, name: str = "m.onnx") -> Path:
    p = tmp_path / name
    onnx.save(model, str(p))
    return p


def test_unsupported_op_names_node_op_and_opset(tmp_path: Path) -> None:
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["sel"], name="nms_1")
    model = make_model(
        [node],
        {"boxes": (np.float32, [1, 4, 4]), "scores": (np.float32, [1, 1, 4])},
        ["sel"],
        opset=17,
    )
    p = _save(tmp_path, model)
    with pytest.raises(FrontendError) as e:
        load_onnx(p)
    msg = _one_line_naming(e, p)
    assert "nms_1" in msg and "NonMaxSuppression" in msg and "opset 17" in msg


def test_custom_domain_op(tmp_path: Path) -> None:
    node = helper.make_node("Frobnicate", ["x"], ["y"], name="frob", domain="com.example")
    model = make_model(
        [node],
        {"x": (np.float32, [2, 3])},
        [("y", np.float32, [2, 3])],
        extra_opsets={"com.example": 1},
    )
    p = _save(tmp_path, model)
    with pytest.raises(FrontendError) as e:
        load_onnx(p)
    msg = _one_line_naming(e, p)
    assert "frob" in msg and "Frobnicate" in msg and "com.example" in msg


def test_unsupported_auto_pad(tmp_path: Path) -> None:
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", auto_pad="FOO")
    model = make_model(
        [node], {"x": (np.float32, [1, 1, 5, 5])}, ["y"], initializers={"w": randn(1, 1, 3, 3)}
    )
    p = _save(tmp_path, model)
    with pytest.raises(FrontendError) as e:
        load_onnx(p)
    _one_line_naming(e, p)


def test_batchnorm_training_mode(tmp_path: Path) -> None:
    node = helper.make_node(
        "BatchNormalization",
        ["x", "s", "b", "m", "v"],
        ["y", "rm", "rv"],
        name="bn",
        training_mode=1,
    )
    c = np.ones(3, np.float32)
    model = make_model(
        [node],
        {"x": (np.float32, [2, 3, 4, 4])},
        ["y"],
        initializers={"s": c, "b": c, "m": c, "v": c},
    )
    p = _save(tmp_path, model)
    with pytest.raises(FrontendError) as e:
        load_onnx(p)
    msg = _one_line_naming(e, p)
    assert "training_mode" in msg and "'bn'" in msg


UNSUPPORTED_ATTRS = [
    # (op, inputs {name: shape}, initializers, attributes, opset, word the message must hold)
    ("Conv", {"x": (1, 1, 4, 4, 4)}, {"w": (1, 1, 2, 2, 2)}, {}, 17, "3-D"),
    ("MaxPool", {"x": (1, 1, 4, 4)}, {}, {"kernel_shape": [2, 2], "storage_order": 1}, 17,
     "storage_order"),
    ("AveragePool", {"x": (1, 1, 6, 6)}, {}, {"kernel_shape": [2, 2], "dilations": [2, 2]}, 19,
     "dilations"),
    ("Gelu", {"x": (2, 3)}, {}, {"approximate": "erf"}, 20, "approximate"),
    ("Pad", {"x": (2, 3)}, {"p": np.array([1, 1, 1, 1])}, {"mode": "wrap"}, 19, "mode"),
    ("Cast", {"x": (2, 3)}, {}, {"to": TensorProto.STRING}, 17, "STRING"),
    ("Clip", {"x": (2, 3)}, {}, {}, 17, "float"),  # an int64 input, see below
]  # fmt: skip


@pytest.mark.parametrize(
    ("op", "ins", "inits", "attrs", "opset", "word"),
    UNSUPPORTED_ATTRS,
    ids=[f"{c[0]}-{c[5]}" for c in UNSUPPORTED_ATTRS],
)
def test_unsupported_attribute(
    tmp_path: Path,
    op: str,
    ins: dict[str, tuple[int, ...]],
    inits: dict[str, object],
    attrs: dict[str, object],
    opset: int,
    word: str,
) -> None:
    dtype = np.int64 if op == "Clip" else np.float32
    arrays = {
        k: (randn(*v, seed=i) if isinstance(v, tuple) else np.asarray(v))
        for i, (k, v) in enumerate(inits.items())
    }
    node = helper.make_node(op, [*ins, *arrays], ["y"], name="bad_node", **attrs)
    outs = [("y", TensorProto.STRING, [2, 3])] if op == "Cast" else ["y"]
    model = make_model(
        [node],
        {k: (dtype, list(v)) for k, v in ins.items()},
        outs,  # type: ignore[arg-type]
        initializers=arrays,
        opset=opset,
    )
    p = _save(tmp_path, model)
    with pytest.raises(FrontendError) as e:
        load_onnx(p)
    msg = _one_line_naming(e, p)
    assert "bad_node" in msg and op in msg and f"opset {opset}" in msg and word in msg


@pytest.mark.parametrize(
    ("op", "attrs", "n_out", "opset"),
    [
        ("MaxPool", {"kernel_shape": [2, 2]}, 2, 17),
        ("LayerNormalization", {}, 2, 17),
    ],
)
def test_unsupported_extra_output_used(
    tmp_path: Path, op: str, attrs: dict[str, object], n_out: int, opset: int
) -> None:
    inits: dict[str, np.ndarray] = {}
    if op == "LayerNormalization":
        inits = {"s": np.ones(4, np.float32)}
    outs = ["y", "extra"][:n_out]
    node = helper.make_node(op, ["x", *inits], outs, name="multi", **attrs)
    use = helper.make_node("Identity", ["extra"], ["z"])
    model = make_model(
        [node, use], {"x": (np.float32, [1, 2, 4, 4])}, ["y", "z"], initializers=inits, opset=opset
    )
    p = _save(tmp_path, model)
    with pytest.raises(FrontendError) as e:
        load_onnx(p)
    assert "output 1" in _one_line_naming(e, p)


def test_multi_input_with_fixed_input_is_not_rebindable() -> None:
    # Graph.at_batch rebinds axis 0 of every input; a fixed [1, 3] input must not follow.
    model = make_model(
        [helper.make_node("Add", ["x", "y"], ["z"])],
        {"x": (np.float32, ["N", 3]), "y": (np.float32, [1, 3])},
        ["z"],
    )
    g = import_model(model, batch=2)
    assert g.batch is None
    assert [v.type.shape for v in g.inputs] == [(2, 3), (1, 3)]
    with pytest.raises(VerifyError, match="fixed batch"):
        g.at_batch(5)
    feeds = {"x": randn(2, 3), "y": randn(1, 3, seed=1)}
    (got,) = interp.run(g, feeds)
    assert_close(got, ort_run(model, feeds)[0])


def test_two_batched_inputs_rebind() -> None:
    model = make_model(
        [helper.make_node("Mul", ["x", "y"], ["z"])],
        {"x": (np.float32, ["N", 3]), "y": (np.float32, ["N", 1])},
        ["z"],
    )
    g = import_model(model, batch=2).at_batch(4)
    feeds = {"x": randn(4, 3), "y": randn(4, 1, seed=1)}
    (got,) = interp.run(g, feeds)
    assert_close(got, ort_run(model, feeds)[0])


def test_symbolic_non_batch_dimension(tmp_path: Path) -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    model = make_model([node], {"x": (np.float32, ["N", "C"])}, ["y"])
    p = _save(tmp_path, model)
    with pytest.raises(FrontendError) as e:
        load_onnx(p)
    msg = _one_line_naming(e, p)
    assert "'C'" in msg and "axis 1" in msg


def test_runtime_reshape_shape(tmp_path: Path) -> None:
    # The target shape is computed from data (not from a shape): no static shape exists.
    nodes = [
        helper.make_node("Cast", ["s"], ["si"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["x", "si"], ["y"], name="r"),
    ]
    model = make_model(nodes, {"x": (np.float32, [2, 6]), "s": (np.float32, [2])}, ["y"], opset=17)
    p = _save(tmp_path, model)
    with pytest.raises(FrontendError) as e:
        load_onnx(p)
    msg = _one_line_naming(e, p)
    assert "'r'" in msg and "run time" in msg


def test_newer_opset_is_converted_down(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0]),
        helper.make_node("Relu", ["t"], ["y"]),
    ]
    inits = {"shape": np.array([3, 2], np.int64)}
    model = make_model(nodes, {"x": randn(2, 3)}, ["y"], initializers=inits, opset=25)
    model.ir_version = 11
    p = _save(tmp_path, model)
    g = load_onnx(p)
    x = randn(2, 3)
    (got,) = interp.run(g, [x])
    assert_close(got, np.maximum(x.reshape(3, 2).T, 0))


def test_opset_too_new(tmp_path: Path) -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": randn(2, 3)}, ["y"])
    model.opset_import[0].version = 99
    model.ir_version = 11
    p = _save(tmp_path, model)
    with pytest.raises(FrontendError) as e:
        load_onnx(p)
    assert "99" in _one_line_naming(e, p)


def test_opset_too_old(tmp_path: Path) -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": randn(2, 3)}, ["y"])
    model.opset_import[0].version = 6
    model.ir_version = 3
    p = _save(tmp_path, model)
    with pytest.raises(FrontendError) as e:
        load_onnx(p)
    assert "opset 6" in _one_line_naming(e, p)


def test_old_opset_is_upgraded() -> None:
    # An opset-9 MLP: Gemm, Relu, Reshape-free, with a Flatten and a Softmax.
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["z"], alpha=0.5, beta=2.0),
        helper.make_node("Softmax", ["z"], ["y"], axis=1),
    ]
    inits = {
        "w1": randn(16, 12, seed=1),
        "b1": randn(16, seed=2),
        "w2": randn(16, 5, seed=3),
        "b2": randn(5, seed=4),
    }
    x = randn(3, 3, 4, seed=5)
    model = make_model(nodes, {"x": x}, ["y"], initializers=inits, opset=9, ir_version=4)
    check_model(model, {"x": x})


def test_invalid_graph_is_frontend_error(tmp_path: Path) -> None:
    # A node reading an undefined value fails the checker.
    node = helper.make_node("Relu", ["nope"], ["y"])
    model = make_model([node], {"x": (np.float32, [2])}, ["y"])
    p = _save(tmp_path, model)
    with pytest.raises(FrontendError) as e:
        load_onnx(p)
    _one_line_naming(e, p)


# ----------------------------------------------------------------------------- external data


def _mlp_model() -> tuple[onnx.ModelProto, np.ndarray]:
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["y"]),
    ]
    inits = {"w": randn(8, 6, seed=1), "b": randn(6, seed=2)}
    x = randn(4, 8, seed=3)
    return make_model(nodes, {"x": x}, ["y"], initializers=inits), x


def test_external_data(tmp_path: Path) -> None:
    model, x = _mlp_model()
    p = tmp_path / "ext.onnx"
    onnx.save(
        model,
        str(p),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    assert (tmp_path / "w.bin").stat().st_size > 0
    g = load_onnx(p)
    (got,) = interp.run(g, [x])
    (want,) = ort_run(p, {"x": x})
    assert_close(got, want)


def test_external_data_missing(tmp_path: Path) -> None:
    model, _ = _mlp_model()
    p = tmp_path / "ext.onnx"
    onnx.save(
        model,
        str(p),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    (tmp_path / "w.bin").unlink()
    with pytest.raises(FrontendError) as e:
        load_onnx(p)
    assert "w.bin" in _one_line_naming(e, p)


def test_external_data_too_short(tmp_path: Path) -> None:
    model, _ = _mlp_model()
    p = tmp_path / "ext.onnx"
    onnx.save(
        model,
        str(p),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    data = (tmp_path / "w.bin").read_bytes()
    (tmp_path / "w.bin").write_bytes(data[:10])
    with pytest.raises(FrontendError) as e:
        load_onnx(p)
    _one_line_naming(e, p)


@pytest.mark.parametrize("location", ["../x.bin", "/etc/passwd", "sub/../../x.bin", "link.bin"])
def test_external_data_unsafe_location(tmp_path: Path, location: str) -> None:
    model, _ = _mlp_model()
    sub = tmp_path / "m"
    sub.mkdir()
    (tmp_path / "x.bin").write_bytes(b"\0" * 1024)
    (sub / "link.bin").symlink_to(tmp_path / "x.bin")  # a link out of the model's folder
    for t in model.graph.initializer:
        onnx.external_data_helper.set_external_data(t, location=location)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
    p = sub / "ext.onnx"
    p.write_bytes(model.SerializeToString())
    with pytest.raises(FrontendError) as e:
        load_onnx(p)
    _one_line_naming(e, p)


# ----------------------------------------------------------------------------- functions


def test_local_functions_are_inlined() -> None:
    # y = gelu_ish(x) = x * sigmoid(1.702 x), as a model-local function used twice.
    fn = helper.make_function(
        "com.xbarc.test",
        "QuickGelu",
        ["a"],
        ["b"],
        [
            helper.make_node("Constant", [], ["k"], value_float=1.702),
            helper.make_node("Mul", ["a", "k"], ["ak"]),
            helper.make_node("Sigmoid", ["ak"], ["s"]),
            helper.make_node("Mul", ["a", "s"], ["b"]),
        ],
        opset_imports=[helper.make_opsetid("", 17)],
    )
    nodes = [
        helper.make_node("QuickGelu", ["x"], ["h"], domain="com.xbarc.test"),
        helper.make_node("QuickGelu", ["h"], ["y"], domain="com.xbarc.test"),
    ]
    x = randn(3, 5)
    model = make_model(nodes, {"x": x}, ["y"], extra_opsets={"com.xbarc.test": 1}, functions=[fn])
    g = check_model(model, {"x": x})
    assert {n.op.NAME for n in g.nodes} == {"mul", "sigmoid"}


# ----------------------------------------------------------------------------- batch handling


def test_fixed_batch_model_cannot_rebind() -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": randn(2, 3)}, ["y"])
    g = import_model(model, batch=7)
    assert g.batch is None
    assert g.inputs[0].type.shape == (2, 3)
    with pytest.raises(VerifyError):
        g.at_batch(3)


def test_batch_dependent_reshape_is_recorded() -> None:
    # Shape → Gather → Unsqueeze → Concat → Reshape (torch's flatten idiom) follows the batch.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"], name="flat"),
    ]
    inits = {
        "zero": np.array(0, np.int64),
        "ax0": np.array([0], np.int64),
        "minus1": np.array([-1], np.int64),
    }
    model = make_model(nodes, {"x": (np.float32, ["N", 2, 3])}, ["y"], initializers=inits)
    g = import_model(model, batch=3)
    assert [n.op.NAME for n in g.nodes] == ["reshape"]
    assert g.nodes[0].op.shape == (3, 6)
    assert g.nodes[0].batch_coef == {"shape": (1, 0)}
    g7 = g.at_batch(7)
    assert g7.nodes[0].op.shape == (7, 6)
    x = randn(7, 2, 3)
    (got,) = interp.run(g7, [x])
    (want,) = ort_run(model, {"x": x})
    assert_close(got, want)


def test_unused_graph_input_is_kept() -> None:
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        {"x": randn(2, 3), "unused": randn(4)},
        ["y"],
    )
    g = import_model(model)
    assert [v.name for v in g.inputs] == ["x", "unused"]


def test_initializer_listed_as_input_is_a_constant() -> None:
    # IR < 4 style: initializers also appear among graph inputs.
    w = randn(3, 3, seed=1)
    x = randn(2, 3, seed=2)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [vinfo("x", np.float32, [2, 3]), vinfo("w", np.float32, [3, 3])],
        [vinfo("y", np.float32, [2, 3])],
        initializer=[init("w", w)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    g = import_model(model)
    assert [v.name for v in g.inputs] == ["x"]
    (got,) = interp.run(g, [x])
    assert_close(got, x @ w)


# ----------------------------------------------------------------------------- golden IR dumps

GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.mark.parametrize("name", ["digits_mlp", "resnet8", "vit"])
def test_golden_ir(name: str, update_golden: bool) -> None:
    text = str(load_onnx(MODELS / f"{name}.onnx", batch=1))
    path = GOLDEN / f"{name}.txt"
    if update_golden:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
        return
    assert path.exists(), f"{path} missing: run pytest --update-golden"
    want = path.read_text()
    if text != want:
        import difflib

        diff = "".join(
            difflib.unified_diff(
                want.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=f"golden/{name}.txt",
                tofile="load_onnx",
                n=1,
            )
        )
        pytest.fail(f"IR of {name}.onnx differs from the golden file:\n{diff}")


def test_unknown_op_on_constants_folds() -> None:
    # Shape arithmetic with ops that have no IR op (torch's MultiheadAttention export at
    # opset 17 emits Mod; ReduceProd, Floor) folds through ONNX's reference evaluator. Here
    # the integer arithmetic follows the batch: rows = (numel - numel mod 3) / 3 with
    # numel = N*6 is rebound with the batch; a Floor of a float constant folds too.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("ReduceProd", ["s"], ["numel"], keepdims=1),
        helper.make_node("Mod", ["numel", "three"], ["rem"]),
        helper.make_node("Sub", ["numel", "rem"], ["even"]),
        helper.make_node("Div", ["even", "three"], ["rows"]),
        helper.make_node("Concat", ["rows", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"], name="r"),
        helper.make_node("Floor", ["half"], ["fl"]),
        helper.make_node("Mul", ["y", "fl"], ["z"]),
    ]
    inits = {
        "three": np.array([3], np.int64),
        "minus1": np.array([-1], np.int64),
        "half": np.array([2.5], np.float32),
    }
    model = make_model(nodes, {"x": (np.float32, ["N", 6])}, ["z"], initializers=inits)
    g = import_model(model, batch=2)
    assert [n.op.NAME for n in g.nodes] == ["reshape", "mul"]
    assert g.nodes[0].op.shape == (4, 3)
    for n in (2, 5):
        gn = g.at_batch(n)
        x = randn(n, 6)
        (got,) = interp.run(gn, [x])
        (want,) = ort_run(model, {"x": x})
        assert_close(got, want)


def test_unknown_op_on_runtime_values_is_an_error(tmp_path: Path) -> None:
    nodes = [helper.make_node("Mod", ["x", "x"], ["y"], name="m1", fmod=1)]
    model = make_model(nodes, {"x": (np.float32, [2, 3])}, [("y", np.float32, [2, 3])])
    p = _save(tmp_path, model)
    with pytest.raises(FrontendError) as e:
        load_onnx(p)
    msg = _one_line_naming(e, p)
    assert "m1" in msg and "Mod" in msg and "not supported" in msg


def test_unknown_float_op_following_the_batch_is_an_error(tmp_path: Path) -> None:
    # a float computed from the (symbolic) batch cannot become a constant
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Cast", ["s"], ["sf"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Floor", ["sf"], ["fl"], name="floor_b"),
        helper.make_node("ReduceSum", ["fl"], ["t"], keepdims=1),
        helper.make_node("Mul", ["x", "t"], ["y"]),
    ]
    model = make_model(nodes, {"x": (np.float32, ["N", 3])}, ["y"])
    p = _save(tmp_path, model)
    with pytest.raises(FrontendError) as e:
        load_onnx(p)
    msg = _one_line_naming(e, p)
    assert "floor_b" in msg and "not supported" in msg
