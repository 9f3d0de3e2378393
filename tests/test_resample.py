"""DepthToSpace, SpaceToDepth, Resize and ConvTranspose: against onnxruntime, and Resize's VJP
against finite differences."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import assert_close, make_model, node_check, ort_run, randn
from test_autodiff import check

from xbarc.errors import FrontendError
from xbarc.frontend import load_onnx
from xbarc.ir import interp
from xbarc.ir import ops as O

DATA = Path(__file__).resolve().parent / "data"


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(mode: str) -> None:
    node_check("DepthToSpace", {"x": randn(2, 8, 3, 4)}, blocksize=2, mode=mode)


def test_space_to_depth() -> None:
    node_check("SpaceToDepth", {"x": randn(2, 3, 4, 6)}, blocksize=2)


CT_CASES = [
    ((1, 2, 5, 5), (2, 3, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((2, 2, 4, 5), (2, 3, 3, 2), {"strides": [2, 3], "pads": [1, 0, 1, 1],
                                  "output_padding": [1, 2]}),
    ((1, 4, 4, 4), (4, 1, 3, 3), {"strides": [2, 2], "group": 2, "dilations": [2, 1]}),
    ((1, 4, 3, 3), (4, 2, 2, 2), {"group": 2, "pads": [0, 0, 1, 1]}),
    ((1, 2, 4, 4), (2, 2, 3, 3), {"strides": [2, 2], "pads": [3, 3, 3, 2]}),
    ((2, 3, 7), (3, 2, 4), {"strides": [3], "pads": [1, 2], "output_padding": [1]}),
    ((1, 2, 4, 4), (2, 2, 3, 3), {"strides": [2, 2], "output_shape": [8, 8]}),
    ((1, 2, 4, 4), (2, 2, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
]  # fmt: skip


@pytest.mark.parametrize(("xs", "ws", "attrs"), CT_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_conv_transpose(
    xs: tuple[int, ...], ws: tuple[int, ...], attrs: dict[str, object], bias: bool
) -> None:
    w = randn(*ws, seed=2)
    consts = {"w": w}
    if bias:
        consts["b"] = randn(ws[1] * int(attrs.get("group", 1)), seed=3)  # type: ignore[call-overload]
    node_check("ConvTranspose", {"x": randn(*xs, seed=1)}, consts=consts, tol=1e-5, **attrs)


def test_conv_transpose_runtime_weight() -> None:
    x, w = randn(1, 2, 4, 4, seed=1), randn(2, 3, 3, 3, seed=2)
    node_check("ConvTranspose", {"x": x, "w": w}, strides=[2, 2], pads=[1, 1, 0, 0], tol=1e-5)


RESIZE = [
    ("nearest", "asymmetric", "floor"),
    ("nearest", "half_pixel", "round_prefer_floor"),
    ("nearest", "align_corners", "round_prefer_ceil"),
    ("nearest", "pytorch_half_pixel", "ceil"),
    ("linear", "half_pixel", "floor"),
    ("linear", "pytorch_half_pixel", "floor"),
    ("linear", "align_corners", "floor"),
    ("linear", "asymmetric", "floor"),
]


@pytest.mark.parametrize(("mode", "coord", "nearest"), RESIZE)
@pytest.mark.parametrize("how", ["scales", "sizes", "down"])
def test_resize(mode: str, coord: str, nearest: str, how: str) -> None:
    x = randn(2, 3, 5, 6)
    attrs = {"mode": mode, "coordinate_transformation_mode": coord, "nearest_mode": nearest}
    if how == "scales":
        consts = {"-roi": np.zeros(0), "s": np.array([1, 1, 2, 3], np.float32)}
    elif how == "sizes":
        consts = {"-roi": np.zeros(0), "-s": np.zeros(0), "z": np.array([2, 3, 7, 13], np.int64)}
    else:
        consts = {"-roi": np.zeros(0), "s": np.array([1, 1, 0.6, 0.5], np.float32)}
    node_check("Resize", {"x": x}, consts=consts, tol=1e-5, **attrs)


def test_resize_cubic_is_refused(tmp_path: Path) -> None:
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="cubic")
    m = make_model(
        [node], {"x": randn(1, 1, 2, 2)}, ["y"], initializers={"s": np.ones(4, np.float32) * 2}
    )
    import onnx

    onnx.save(m, str(tmp_path / "m.onnx"))
    with pytest.raises(FrontendError, match="mode='cubic' is not supported"):
        load_onnx(tmp_path / "m.onnx")


@pytest.mark.parametrize(("mode", "coord", "nearest"), RESIZE)
def test_resize_vjp(mode: str, coord: str, nearest: str) -> None:
    op = O.Resize(
        sizes=(2, 2, 7, 4),
        scales=(1.0, 1.0, 7 / 3, 0.8),
        mode=mode,
        coord=coord,
        nearest_mode=nearest,
    )
    check(op, [randn(2, 2, 3, 5, seed=4)])


@pytest.mark.parametrize("name", ["resample_mix.onnx", "resample_mix.dynamo.onnx"])
def test_torch_export_matches_onnxruntime(name: str) -> None:
    path = DATA / name
    x = randn(3, 3, 8, 8, seed=5)
    (want,) = ort_run(path, {"input": x})
    g = load_onnx(path, batch=3)
    (got,) = interp.run(g, {g.inputs[0].name: x})
    err = float(np.abs(got - want).max()) / max(1.0, float(np.abs(want).max()))
    assert err <= 1e-5
    assert_close(got, want, tol=1e-5)
    ops = {type(n.op) for n in g.nodes}
    assert O.Resize in ops and O.Conv in ops


@pytest.mark.parametrize("rule", ["float", "eapu"])
def test_torch_export_compiles_and_trains(tmp_path: Path, rule: str) -> None:
    from xbarc import api
    from xbarc.backend import lower as backend
    from xbarc.passes import ChipConfig
    from xbarc.runtime.data import Dataset
    from xbarc.runtime.engine import Engine
    from xbarc.runtime.train import TrainConfig, Trainer

    out = tmp_path / "mix.mapped.bin"
    api.compile_model(DATA / "resample_mix.onnx", ChipConfig(), output=out, batch=1)
    eng = Engine(backend.load(out), seed=0, threads=1)
    kinds = {n.op.kind for n in eng.program.graph.nodes if isinstance(n.op, O.XbarMVM)}
    assert kinds == {"conv"}  # the Conv and the ConvTranspose both run on crossbars
    # Regression target: half the untrained model's output (reachable by scaling the last
    # layer), so the loss has to fall.
    x = randn(24, 3, 8, 8, seed=6)
    g = load_onnx(DATA / "resample_mix.onnx", batch=24)
    (y,) = interp.run(g, {g.inputs[0].name: x})
    y = (0.5 * y).astype(np.float32)
    data = Dataset("synthetic", x[:16], y[:16], x[16:], y[16:], 0, "test")
    cfg = TrainConfig(rule=rule, lr=1e-2, batch=8, epochs=3, seed=1, write_noise=0.0)
    tr = Trainer(eng, cfg, data)
    first = tr.evaluate(data.x_test, data.y_test)[0]
    for epoch in range(3):
        tr.run_epoch(epoch)
    last = tr.evaluate(data.x_test, data.y_test)[0]
    assert math.isfinite(last) and last < 0.8 * first, (first, last)
