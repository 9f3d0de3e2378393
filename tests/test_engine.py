"""Acceptance tests of the crossbar runtime (``runtime/engine.py``, ``runtime/device.py``).

* Ideal mode equals onnxruntime for every bundled model, tile shape, packing, bit slicing and
  signing, at a batch other than the one the model was compiled at.
* Converter-only non-idealities (8-bit DAC/ADC) keep the trained digits models within 1 % of
  ideal accuracy; programming noise lowers accuracy monotonically.
* Seeds make runs reproducible bit for bit; different seeds differ.
* Per-tile counters equal brute-force counts from the tile table of tiny hand-built models.
* The device model (levels, stuck-at faults, drift, programming noise) matches its definition.
* Errors: a wrong input shape names the expected one; a corrupt file is a FormatError.
* The compiled kernels run by default and agree with their NumPy twins inside the engine.
* Inference energy as reported equals Σ counters × constants.

Every mapped.bin is compiled once per module into a temporary folder and shared.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import ort_run

from xbarc import api
from xbarc.backend import lower as backend
from xbarc.backend.report import input_cycles
from xbarc.errors import DataError, FormatError
from xbarc.ir import interp
from xbarc.ir import ops as O
from xbarc.passes import ChipConfig
from xbarc.passes.config import DeviceConfig
from xbarc.runtime import data as data_mod
from xbarc.runtime import device as dev_model
from xbarc.runtime.energy import EnergyModel
from xbarc.runtime.engine import FAST_DIGITAL, Engine

REPO = Path(__file__).resolve().parent.parent
MODELS = sorted((REPO / "models").glob("*.onnx"))
MODEL_IDS = [m.name.removesuffix(".onnx") for m in MODELS]
COMPILE_BATCH = 2
RUN_BATCH = 3  # differs from the compile batch: the program is rebound
QUIET = DeviceConfig(prog_noise_abs=0.0, read_noise=0.0)
"""A device with every noise source off (no levels, faults or drift by default)."""

Array = np.ndarray[Any, Any]
Build = Callable[..., Path]


def rel_err(got: Array, want: Array) -> float:
    """max |got − want| / max |want|."""
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """``build(model, **chip_fields)``: compile once per module, return the mapped.bin path."""
    folder = tmp_path_factory.mktemp("mapped")
    cache: dict[tuple[Any, ...], Path] = {}

    def get(model: Path | str, batch: int = COMPILE_BATCH, **fields: Any) -> Path:
        model = Path(model)
        key = (str(model), batch, tuple(sorted(fields.items(), key=str)))
        if key not in cache:
            out = folder / f"m{len(cache)}.mapped.bin"
            api.compile_model(model, ChipConfig(**fields), output=out, batch=batch)
            cache[key] = out
        return cache[key]

    return get


_ORT: dict[str, tuple[Array, Array]] = {}


def ort_case(model: Path, input_shape: tuple[int, ...]) -> tuple[Array, Array]:
    """A seeded input batch of RUN_BATCH samples and onnxruntime's output (cached per model)."""
    if model.name not in _ORT:
        x = np.random.default_rng(7).standard_normal((RUN_BATCH, *input_shape)).astype(np.float32)
        _ORT[model.name] = (x, ort_run(model, {"input": x})[0])
    return _ORT[model.name]


# ------------------------------------------------------------------ 1. ideal mode == onnxruntime

LAYOUTS = {
    "256x256-greedy": dict(tile_rows=256, tile_cols=256, pack="greedy"),
    "256x256-none": dict(tile_rows=256, tile_cols=256, pack="none"),
    "64x32-greedy": dict(tile_rows=64, tile_cols=32, pack="greedy"),
    "64x32-none": dict(tile_rows=64, tile_cols=32, pack="none"),
    # 23 magnitude bits in slices of 8: the quantisation is below float32 resolution
    "sliced-24b-8b": dict(tile_rows=64, tile_cols=32, weight_bits=24, cell_bits=8),
    "offset": dict(tile_rows=64, tile_cols=32, signing="offset"),
    "offset-sliced-24b-8b": dict(signing="offset", weight_bits=24, cell_bits=8, pack="none"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_ideal_matches_onnxruntime(build: Build, model: Path, layout: str) -> None:
    path = build(model, **LAYOUTS[layout])
    # threads=1 streams convolutions (ideal: image by image, conv_ideal; else chunks of
    # images); with more threads a layer is one call
    for threads in (1, 2):
        eng = Engine.load(path, ideal=True, threads=threads)
        x, want = ort_case(model, eng.input_shape)
        got = eng.forward(x)
        assert got.shape == want.shape and got.dtype == np.float32
        err = rel_err(got, want)
        assert err <= 1e-4, f"{model.name} {layout} threads={threads}: {err:.3g}"


@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_ideal_16bit_slices_within_quantisation_error(build: Build, model: Path) -> None:
    """16-bit weights in 4-bit cells: the error is the weight quantisation's, nothing more.

    Differential weights keep 15 magnitude bits: ``step = max|w| / (2**15 − 1)``, so each weight
    is off by at most ``ε·max|w|`` with ``ε = 1 / (2·(2**15 − 1))``. (a) The loaded program's
    weights (read back from the conductances) are within that bound of the model's, (b) the
    ideal engine equals the reference interpreter run with those quantised weights to float
    rounding (1e-4), and (c) against onnxruntime the output error stays within ``8·L·ε`` for
    ``L`` crossbar layers (first-order propagation, a gain of at most 8 per layer), and is
    clearly above float32 rounding, so the check is not vacuous.
    """
    bits = 16
    eps = 1.0 / (2 * (2 ** (bits - 1) - 1))
    path = build(model, tile_rows=64, tile_cols=32, weight_bits=bits, cell_bits=4)
    eng = Engine.load(path, ideal=True)
    x, want = ort_case(model, eng.input_shape)
    got = eng.forward(x)
    # (a) quantised weights within half a step of the originals
    ref = Engine.load(build(model, tile_rows=64, tile_cols=32), ideal=True)  # analog, exact
    layers = 0
    for n in eng.program.graph.nodes:
        if n.op.NAME != "xbar.mvm":
            continue
        layers += 1
        wq = n.inputs[1].const
        w0 = next(m for m in ref.program.graph.nodes if getattr(m.op, "layer", None) == n.op.layer)
        w0 = w0.inputs[1].const
        scale = float(np.abs(w0).max())
        assert float(np.abs(wq.astype(np.float64) - w0).max()) <= eps * scale * (1 + 1e-3) + 1e-7
    assert layers >= 1
    # (b) the crossbar computes exactly the quantised weights
    ref_q = interp.run(eng.graph_for(RUN_BATCH), [x])[0]
    assert rel_err(got, ref_q) <= 1e-4
    # (c) end to end
    err = rel_err(got, want)
    assert err <= 8 * layers * eps, f"{model.name}: {err:.3g} > 8·{layers}·{eps:.3g}"
    assert err > 1e-7


def test_forward_accepts_any_batch(build: Build) -> None:
    model = REPO / "models" / "lenet.onnx"
    eng = Engine.load(build(model), ideal=True)
    x = np.random.default_rng(1).standard_normal((5, *eng.input_shape)).astype(np.float32)
    want = ort_run(model, {"input": x})[0]
    assert rel_err(eng.forward(x), want) <= 1e-4
    for b in (1, 2, 4):
        assert rel_err(eng.forward(x[:b]), want[:b]) <= 1e-4


def test_fixed_batch_program_runs_in_chunks(build: Build, tmp_path: Path) -> None:
    """A model with a fixed batch of 2 cannot be rebound: 5 samples run as 2 + 2 + 1 (padded)."""
    w = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["h"]),
        helper.make_node("Relu", ["h"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fixed",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 6])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "fixed.onnx"))
    eng = Engine.load(build(tmp_path / "fixed.onnx"), ideal=True)
    assert eng.program.graph.batch is None
    x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(eng.forward(x), np.maximum(x @ w, 0), rtol=1e-5, atol=1e-5)


def test_streamed_convolutions_equal_whole_layer_calls(build: Build) -> None:
    """threads=1 streams convs image by image (ideal) or through im2col in chunks of images:
    the same rows, the same sums. Without read noise (whose draws are made per chunk) the two
    agree, also with DAC and ADC; the per-tile counters are identical."""
    dev = DeviceConfig(prog_noise_abs=1.0, read_noise=0.0)
    path = build(REPO / "models" / "resnet8.onnx", tile_rows=64, tile_cols=32, device=dev)
    x = np.random.default_rng(8).standard_normal((9, 3, 32, 32)).astype(np.float32)
    for ideal in (True, False):
        one, two = Engine.load(path, ideal=ideal, threads=1), Engine.load(path, ideal=ideal)
        assert two.threads > 1 or os.cpu_count() == 1
        if not ideal:
            two.calibrate(x)
            one.calibrate(x)
        a, b = one.forward(x), two.forward(x)
        assert rel_err(a, b) <= (1e-5 if ideal else 1e-3)
        assert one.counters == two.counters


# ------------------------------------------------------------------ 2. converters only

TRAINED = ["digits_mlp_trained", "lenet_digits_trained"]


def accuracy(eng: Engine, batch: int = 120) -> float:
    ds = data_mod.load("digits").adapted(eng.input_shape)
    assert ds.x_test.shape[0] == 360
    right = 0
    for i in range(0, 360, batch):
        out = eng.forward(ds.x_test[i : i + batch])
        right += int((out.argmax(axis=1) == ds.y_test[i : i + batch]).sum())
    return right / 360


@pytest.mark.parametrize("name", TRAINED)
def test_8bit_converters_keep_accuracy(build: Build, name: str) -> None:
    path = build(REPO / "models" / f"{name}.onnx", dac_bits=8, adc_bits=8, device=QUIET)
    ideal = accuracy(Engine.load(path, ideal=True))
    real = Engine.load(path, ideal=False)
    assert real.dac_bits == 8 and real.adc_bits == 8 and real.read_noise == 0
    got = accuracy(real)
    assert ideal > 0.95
    assert abs(got - ideal) <= 0.01, f"{name}: {got:.4f} vs ideal {ideal:.4f}"


# ------------------------------------------------------------------ 3. programming noise


def test_programming_noise_lowers_accuracy_monotonically(build: Build) -> None:
    model = REPO / "models" / "digits_mlp_trained.onnx"
    means = []
    for sigma in (0.0, 3.0, 6.0, 12.0):  # µS, window 80 µS
        dev = DeviceConfig(prog_noise_abs=sigma, read_noise=0.0)
        path = build(model, device=dev)
        means.append(np.mean([accuracy(Engine.load(path, seed=s), 360) for s in range(5)]))
    assert all(a > b for a, b in itertools.pairwise(means)), means
    assert means[0] > 0.95 and means[-1] < 0.9, means


def test_relative_programming_noise_lowers_accuracy(build: Build) -> None:
    model = REPO / "models" / "digits_mlp_trained.onnx"
    means = []
    for rel in (0.0, 0.2, 0.5):
        dev = DeviceConfig(prog_noise_abs=0.0, prog_noise_rel=rel, read_noise=0.0)
        path = build(model, device=dev)
        means.append(np.mean([accuracy(Engine.load(path, seed=s), 360) for s in range(4)]))
    assert all(a > b for a, b in itertools.pairwise(means)), means


# ------------------------------------------------------------------ 4. seeds


@pytest.mark.parametrize("name", ["lenet_digits_trained", "resnet8", "vit"])
def test_same_seed_same_bits_other_seed_differs(build: Build, name: str) -> None:
    path = build(REPO / "models" / f"{name}.onnx", tile_rows=64, tile_cols=32)
    prog = backend.load(path)
    shape = Engine(prog, ideal=True).input_shape
    x = np.random.default_rng(3).random((2, *shape), dtype=np.float32)

    def run(eng: Engine) -> list[Array]:
        return [eng.forward(x), eng.forward(x)]  # the second call draws new read noise

    a = run(Engine.load(path, seed=11))
    b = run(Engine.load(path, seed=11))
    c = run(Engine(prog, seed=11))
    d = run(Engine.load(path, seed=12))
    for u, v, w in zip(a, b, c, strict=True):
        assert u.tobytes() == v.tobytes() == w.tobytes()
    assert a[0].tobytes() != a[1].tobytes()  # read noise is drawn per call
    for u, v in zip(a, d, strict=True):
        assert u.tobytes() != v.tobytes()


def test_programming_is_seeded(build: Build) -> None:
    path = build(REPO / "models" / "mlp.onnx")
    e1, e2, e3 = (Engine.load(path, seed=s) for s in (5, 5, 6))
    for name in e1.layers:
        assert e1.layers[name].gp.tobytes() == e2.layers[name].gp.tobytes()
        assert e1.layers[name].gp.tobytes() != e3.layers[name].gp.tobytes()


# ------------------------------------------------------------------ 5. counters


def _gemm_mlp(path: Path) -> Path:
    """10 → 6 → ReLU → 3 (Gemm with transB, as PyTorch exports it)."""
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((6, 10)), rng.standard_normal(6)
    w2, b2 = rng.standard_normal((3, 6)), rng.standard_normal(3)
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1),
    ]
    return _save(path, nodes, [1, 10], [1, 3], dict(w1=w1, b1=b1, w2=w2, b2=b2))


def _small_conv(path: Path) -> Path:
    """[2, 5, 5] → conv 3x3 pad 1 (4 ch) → ReLU → grouped conv 3x3 stride 2 (g=2, 4 ch) → FC 3."""
    rng = np.random.default_rng(1)
    arrays = dict(
        c1=rng.standard_normal((4, 2, 3, 3)),
        c1b=rng.standard_normal(4),
        c2=rng.standard_normal((4, 2, 3, 3)),
        fw=rng.standard_normal((3, 16)),
        fb=rng.standard_normal(3),
    )
    nodes = [
        helper.make_node("Conv", ["input", "c1", "c1b"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "c2"], ["b"], group=2, strides=[2, 2]),
        helper.make_node("Flatten", ["b"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1),
    ]
    return _save(path, nodes, [1, 2, 5, 5], [1, 3], arrays)


def _save(
    path: Path, nodes: list[onnx.NodeProto], ishape: list[int], oshape: list[int], arrays: dict
) -> Path:
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items()]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *ishape[1:]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", *oshape[1:]])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny")
    return {"mlp": _gemm_mlp(d / "mlp.onnx"), "conv": _small_conv(d / "conv.onnx")}


def brute_force_counts(prog: backend.Program, batch: int) -> dict[str, Array]:
    """Per-tile counts of one forward of ``batch`` samples, from the tile table alone.

    Per layer: ``P`` input vectors per group (batch × output positions), split as evenly as
    possible over the replicas (the first ones take the remainder). Every rectangle of replica
    ``k`` sees its replica's vectors; each vector costs ``rows`` DAC conversions, ``cols / D``
    ADC conversions (one per differential pair or offset column) and ``rows·cols`` cell reads,
    each times the input cycles.
    """
    g = prog.graph.at_batch(batch) if prog.graph.batch != batch else prog.graph
    cycles = input_cycles(prog)
    n_tiles = prog.n_tiles
    out = {k: np.zeros(n_tiles, np.int64) for k in ("mvm", "dac", "adc", "cell_reads")}
    for node in g.nodes:
        if node.op.NAME != "xbar.mvm":
            continue
        y = node.outputs[0].type.shape
        positions = math.prod(y[:-1]) if node.op.kind == "linear" else y[0] * math.prod(y[2:])
        reps = node.op.replicas
        d = prog.layers[node.op.layer].per_weight
        for t in g.tiles:
            if t.layer != node.op.layer:
                continue
            share = positions // reps + (1 if t.replica < positions % reps else 0)
            out["mvm"][t.tile] += share
            out["dac"][t.tile] += share * t.rows * cycles
            out["adc"][t.tile] += share * (t.cols // d) * cycles
            out["cell_reads"][t.tile] += share * t.rows * t.cols * cycles
    return out


COUNT_CONFIGS = {
    "8x4-none": dict(tile_rows=8, tile_cols=4, pack="none"),
    "8x4-greedy": dict(tile_rows=8, tile_cols=4, pack="greedy"),
    "8x4-offset-sliced": dict(tile_rows=8, tile_cols=4, signing="offset", weight_bits=6),
    "8x4-bitserial": dict(tile_rows=8, tile_cols=4, input_mode="bit-serial", dac_bits=4),
    "8x4-replicated": dict(tile_rows=8, tile_cols=4, replicate=3),
}


@pytest.mark.parametrize("cfg", list(COUNT_CONFIGS))
@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_counters_equal_brute_force(
    build: Build, tiny: dict[str, Path], net: str, cfg: str
) -> None:
    path = build(tiny[net], batch=1, **COUNT_CONFIGS[cfg])
    for ideal in (True, False):
        eng = Engine.load(path, ideal=ideal)
        x = np.random.default_rng(0).random((4, *eng.input_shape), dtype=np.float32)
        eng.forward(x[:3])  # calibrates on the first call: that pass is not counted
        want = brute_force_counts(eng.program, 3)
        for k, v in want.items():
            np.testing.assert_array_equal(getattr(eng.counters, k), v, err_msg=f"{cfg} {k}")
        eng.forward(x)  # counters accumulate
        more = brute_force_counts(eng.program, 4)
        for k, v in want.items():
            np.testing.assert_array_equal(getattr(eng.counters, k), v + more[k], err_msg=k)
        assert not eng.counters.mvm_t.any() and not eng.counters.write_pulses.any()
    if cfg == "8x4-replicated" and net == "conv":
        assert any(t.replica > 0 for t in eng.program.graph.tiles)


def test_counters_by_hand_mlp(build: Build, tiny: dict[str, Path]) -> None:
    """The 10→6→3 MLP on 8×4 differential tiles, unpacked, counted on paper.

    Layer 1: 10 rows × 12 physical columns → row blocks 8 + 2, column blocks 4 + 4 + 4 (two
    pairs each): 6 rectangles. Layer 2: 6 rows × 6 columns → 4 + 2 columns: 2 rectangles.
    Per input vector: MVMs 6 + 2; DAC 3·8 + 3·2 + 2·6 = 42; ADC 6·2 + (2 + 1) = 15;
    cells 10·12 + 6·6 = 156.
    """
    eng = Engine.load(build(tiny["mlp"], batch=1, **COUNT_CONFIGS["8x4-none"]), ideal=True)
    assert eng.program.n_tiles == 8
    b = 5
    eng.forward(np.ones((b, 10), np.float32))
    assert eng.counters.totals()["mvm"] == 8 * b
    assert eng.counters.totals()["dac"] == 42 * b
    assert eng.counters.totals()["adc"] == 15 * b
    assert eng.counters.totals()["cell_reads"] == 156 * b
    assert eng.samples == b


# ------------------------------------------------------------------ 6. device model


def test_levels_quantisation() -> None:
    dev = DeviceConfig(levels=5, prog_noise_abs=0.0)  # 1, 21, 41, 61, 81 µS
    rng = np.random.default_rng(0)
    t = rng.uniform(1.0, 81.0, 10_000).astype(np.float32)
    g = dev_model.program(t, dev, rng)
    levels = np.array([1.0, 21.0, 41.0, 61.0, 81.0], np.float32)
    assert set(np.unique(g).tolist()) <= set(levels.tolist())
    nearest = levels[np.abs(t[:, None] - levels[None, :]).argmin(axis=1)]
    np.testing.assert_array_equal(g, nearest)
    np.testing.assert_array_equal(dev_model.quantise_levels(t, dev), nearest)
    assert dev_model.quantise_levels(t, DeviceConfig(levels=0)) is t  # continuous


def test_stuck_at_fractions() -> None:
    dev = DeviceConfig(prog_noise_abs=0.0, stuck_at_gmin=0.1, stuck_at_gmax=0.05)
    n = 200_000
    g = dev_model.program(np.full(n, 41.0, np.float32), dev, np.random.default_rng(1))
    for value, p in ((dev.g_min, 0.1), (dev.g_max, 0.05)):
        frac = float((g == value).mean())
        assert abs(frac - p) <= 5 * math.sqrt(p * (1 - p) / n), (value, frac)
    assert float((g == 41.0).mean()) == pytest.approx(0.85, abs=0.01)


def test_drift_reduces_conductance() -> None:
    dev = DeviceConfig(drift_nu=0.05, drift_nu_std=0.0, drift_t0=1.0)
    g = np.random.default_rng(2).uniform(1.0, 81.0, (4, 8)).astype(np.float32)
    nu = dev_model.drift_exponents(g.shape, dev, np.random.default_rng(0))
    assert nu is not None and np.all(nu == np.float32(0.05))
    for t in (10.0, 3600.0):
        np.testing.assert_allclose(dev_model.drift(g, nu, dev, t), g * t**-0.05, rtol=1e-6)
    assert dev_model.drift(g, nu, dev, 1.0) is g  # t <= t0: no drift
    assert dev_model.drift_exponents(g.shape, DeviceConfig(), np.random.default_rng(0)) is None
    # spread: exponents N(ν̄, σ_ν) clipped at 0
    spread = DeviceConfig(drift_nu=0.05, drift_nu_std=0.02)
    nu = dev_model.drift_exponents((100_000,), spread, np.random.default_rng(3))
    assert nu is not None and nu.min() >= 0
    assert float(nu.mean()) == pytest.approx(0.05, abs=1e-3)
    assert float(nu.std()) == pytest.approx(0.02, abs=1e-3)


def test_engine_drift_scales_read_conductances(build: Build) -> None:
    dev = DeviceConfig(prog_noise_abs=0.0, read_noise=0.0, drift_nu=0.05, drift_t0=1.0)
    prog = backend.load(build(REPO / "models" / "digits_mlp.onnx", device=dev))
    fresh = Engine(prog, t_read=0.0)
    old = Engine(prog, t_read=1000.0)
    for name, layer in fresh.layers.items():
        np.testing.assert_allclose(
            old.layers[name].gdiff, layer.gdiff * 1000.0**-0.05, rtol=1e-5, atol=1e-5
        )


def test_programming_noise_std() -> None:
    n = 200_000
    t = np.full(n, 41.0, np.float32)  # mid window: clipping is > 10 σ away
    g = dev_model.program(t, DeviceConfig(prog_noise_abs=2.0), np.random.default_rng(4))
    assert float((g - t).std()) == pytest.approx(2.0, rel=0.01)
    assert abs(float((g - t).mean())) < 0.02
    g = dev_model.program(
        t, DeviceConfig(prog_noise_abs=0.0, prog_noise_rel=0.1), np.random.default_rng(5)
    )
    assert float(((g - t) / t).std()) == pytest.approx(0.1, rel=0.01)
    # the same generator state gives the same devices
    a = dev_model.program(t[:100], DeviceConfig(), np.random.default_rng(9))
    b = dev_model.program(t[:100], DeviceConfig(), np.random.default_rng(9))
    assert a.tobytes() == b.tobytes()


def test_programming_follows_the_documented_formula() -> None:
    """``G = clip(L + N(0, σ_abs) + L·N(0, σ_rel))`` with ``L = levels(G*)``: the relative
    error scales with the level, not with the level plus the absolute error."""
    dev = DeviceConfig(levels=9, prog_noise_abs=3.0, prog_noise_rel=0.2)
    t = np.random.default_rng(0).uniform(1.0, 81.0, 1000).astype(np.float32)
    g = dev_model.program(t, dev, np.random.default_rng(6))
    rng = np.random.default_rng(6)  # the same draws, in the documented order
    level = dev_model.quantise_levels(t, dev)
    a = rng.standard_normal(t.shape, dtype=np.float32) * np.float32(3.0)
    r = rng.standard_normal(t.shape, dtype=np.float32) * np.float32(0.2)
    want = np.clip(level + a + level * r, dev.g_min, dev.g_max)
    np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-5)


def test_programming_clips_to_window() -> None:
    dev = DeviceConfig(prog_noise_abs=30.0)
    g = dev_model.program(np.full(10_000, 80.0, np.float32), dev, np.random.default_rng(0))
    assert g.min() >= dev.g_min and g.max() <= dev.g_max
    assert (g == dev.g_max).mean() > 0.4


# ------------------------------------------------------------------ 7. errors and kernels


def test_wrong_input_shape_names_expected_shape(build: Build) -> None:
    eng = Engine.load(build(REPO / "models" / "lenet.onnx"), ideal=True)
    for bad in (np.zeros((2, 1, 27, 28), np.float32), np.zeros((1, 28, 28), np.float32)):
        with pytest.raises(ValueError, match=r"expected \(N, 1, 28, 28\)"):
            eng.forward(bad)


def test_corrupt_file_is_a_format_error(build: Build, tmp_path: Path) -> None:
    blob = build(REPO / "models" / "digits_mlp.onnx").read_bytes()
    cases = {
        "empty": b"",
        "garbage": b"not a mapped file at all" * 10,
        "truncated": blob[: len(blob) // 2],
        "header": blob[:9] + bytes([blob[9] ^ 0xFF]) + blob[10:],
        "manifest": blob[:100] + bytes([blob[100] ^ 0x20]) + blob[101:],
    }
    for name, data in cases.items():
        p = tmp_path / f"{name}.bin"
        p.write_bytes(data)
        with pytest.raises(FormatError):
            Engine.load(p)
    with pytest.raises(FormatError):
        Engine.load(tmp_path / "missing.bin")


def test_compiled_kernels_run_by_default(build: Build) -> None:
    eng = Engine.load(build(REPO / "models" / "digits_mlp.onnx"))
    assert eng.k.COMPILED is True
    assert (
        Engine.load(build(REPO / "models" / "digits_mlp.onnx"), kernels="numpy").k.COMPILED is False
    )


@pytest.mark.parametrize("name", ["digits_mlp_trained", "lenet_digits_trained", "resnet8", "vit"])
def test_numpy_kernels_agree(build: Build, name: str) -> None:
    path = build(REPO / "models" / f"{name}.onnx", tile_rows=64, tile_cols=32)
    x = np.random.default_rng(5).random((3, *Engine.load(path).input_shape), dtype=np.float32)
    # ideal: float rounding only
    yc = Engine.load(path, ideal=True).forward(x)
    yn = Engine.load(path, ideal=True, kernels="numpy").forward(x)
    assert rel_err(yc, yn) <= 1e-5
    # non-ideal, same seed: the same devices and the same noise draws (drawn in Python)
    ec, en = Engine.load(path, seed=4), Engine.load(path, seed=4, kernels="numpy")
    for k in ec.layers:
        assert ec.layers[k].gdiff.tobytes() == en.layers[k].gdiff.tobytes()
    ec.calibrate(x)
    for k, c in ec.calibration().items():  # same converter ranges for both
        en.layers[k].dac_range, en.layers[k].dac_signed = c["dac_range"], c["dac_signed"]
        en.layers[k].adc_range = ec.layers[k].adc_range.copy()
    en.calibrated = True
    yc, yn = ec.forward(x), en.forward(x)
    assert ec.rng.bit_generator.state == en.rng.bit_generator.state
    # A partial sum within rounding of an ADC decision level may land one level apart; nearly
    # every output is equal to float rounding, none is off by more than a few ADC steps.
    close = np.abs(yc - yn) <= 1e-4 * np.abs(yn).max()
    assert close.mean() >= 0.9, close.mean()
    assert rel_err(yc, yn) <= 0.05


def test_fast_digital_kernels_match_the_interpreter() -> None:
    """The engine's inference kernels for Erf, Gelu and Softmax against the interpreter's."""
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((3, 5, 7, 11)) * 3).astype(np.float32)
    x.flat[:4] = [0.0, -0.0, 7.5, -9.0]
    cases = [O.Erf(), O.Gelu(), O.Softmax(axis=-1), O.Softmax(axis=1), O.Softmax(axis=-3)]
    for op in cases:
        fast = FAST_DIGITAL[type(op)](op, [x])
        assert fast is not None
        (want,) = interp.EVAL[type(op)](op, [x])
        assert fast[0].dtype == np.float32 and fast[0].shape == want.shape
        np.testing.assert_allclose(fast[0], want, rtol=1e-5, atol=1e-6, err_msg=str(op))
    assert FAST_DIGITAL[O.Gelu](O.Gelu(approximate="tanh"), [x]) is None  # interpreter's
    assert FAST_DIGITAL[O.Erf](O.Erf(), [x.astype(np.float64)]) is None
    before = x.copy()
    for op in cases:
        FAST_DIGITAL[type(op)](op, [x])
    assert x.tobytes() == before.tobytes()  # inputs are never written


# ------------------------------------------------------------------ 8. energy


@pytest.mark.parametrize("ideal", [False, True])
def test_eval_energy_is_counters_times_constants(build: Build, ideal: bool) -> None:
    path = build(REPO / "models" / "lenet_digits_trained.onnx", tile_rows=64, tile_cols=64)
    res = api.evaluate(path, "digits", ideal=ideal, limit=50, batch=20)
    model = EnergyModel.default()
    cfg = backend.load(path).config
    c = {k: v.value for k, v in model.constants.items()}
    cnt = {k: np.asarray(v, np.int64) for k, v in res["counters"].items()}
    dig = res["digital"]
    dac_e = model.dac(0 if ideal else cfg.dac_bits)
    adc_e = model.adc(0 if ideal else cfg.adc_bits)
    parts = {
        "array_read": cnt["cell_reads"].sum() * c["read_cell_bit"],
        "dac": cnt["dac"].sum() * dac_e,
        "adc": cnt["adc"].sum() * adc_e,
        "write": 0.0,
        "verify": 0.0,
        "digital_mac": dig["macs"] * c["mac_fp32"],
        "digital_elem": dig["elem_ops"] * c["elem_op"],
        "rng": 0.0,
        "buffer": dig["buffer_bytes"] * c["sram_byte"],
    }
    comps = res["energy"]["components"]
    for k, v in parts.items():
        assert comps[k] == pytest.approx(float(v), rel=1e-12, abs=1e-30), k
    assert res["energy"]["total"] == pytest.approx(math.fsum(parts.values()), rel=1e-12)
    assert res["energy"]["per_sample"] == pytest.approx(res["energy"]["total"] / 50, rel=1e-12)
    # counters are exactly one pass over the 50 samples (calibration is not counted)
    eng = Engine.load(path, ideal=True)
    want = brute_force_counts(eng.program, 50)
    for k in ("mvm", "dac", "adc", "cell_reads"):
        np.testing.assert_array_equal(cnt[k], want[k], err_msg=k)
    assert res["samples"] == 50 and cnt["cell_reads"].sum() > 0 and dig["macs"] >= 0
    if ideal:
        assert res["output_error"] is None
    else:
        assert 0 < res["output_error"] < 0.5


def test_integer_token_input_runs_and_matches_onnxruntime(build: Build, tmp_path: Path) -> None:
    """An embedding model takes int64 token ids; the engine feeds them as integers."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gather", ["emb", "tokens"], ["e"], axis=0),
        helper.make_node("ReduceMean", ["e"], ["m"], axes=[1], keepdims=0),
        helper.make_node("Gemm", ["m", "w", "b"], ["input_out"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "emb",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["N", 7])],
        [helper.make_tensor_value_info("input_out", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            numpy_helper.from_array(rng.standard_normal((50, 16)).astype(np.float32), "emb"),
            numpy_helper.from_array(rng.standard_normal((4, 16)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "emb.onnx"
    onnx.save(model, str(path))
    eng = Engine.load(build(path), ideal=True, threads=1)
    tokens = rng.integers(0, 50, (5, 7))
    want = ort_run(path, {"tokens": tokens})[0]
    assert rel_err(eng.forward(tokens), want) <= 1e-5
    assert rel_err(eng.forward(tokens.astype(np.float32)), want) <= 1e-5  # whole floats are ok
    with pytest.raises(ValueError, match="non-integers"):
        eng.forward(tokens + 0.5)
    with pytest.raises(DataError, match="int64"):
        api.evaluate(build(path), "synthetic")


def test_fused_epilogues_change_neither_outputs_nor_counters(build: Build) -> None:
    """An ideal inference forward applies a conv's residual add and ReLU in the conv; a taped
    one runs them as nodes."""
    path = build(REPO / "models" / "resnet8.onnx", tile_rows=64, tile_cols=32)
    x = np.random.default_rng(4).standard_normal((3, 3, 32, 32)).astype(np.float32)
    plain, taped = Engine.load(path, ideal=True), Engine.load(path, ideal=True)
    g = plain.graph_for(3)
    fusions = list(plain._fusions_for(g).values())
    # resnet8: the stem and each block's first conv fuse a ReLU; each block's second conv
    # (or its shortcut conv, whichever comes later) fuses the residual add and the ReLU
    assert sum(f.relu and f.residual is None for f in fusions) >= 4
    assert sum(f.relu and f.residual is not None for f in fusions) == 3
    kinds = {type(n.op) for n in g.nodes if any(id(n) in f.passed for f in fusions)}
    assert kinds == {O.Relu, O.Add}
    a = plain.forward(x)
    b = taped.forward(x, tape=[])
    assert rel_err(a, b) <= 1e-5
    assert plain.counters == taped.counters
    assert plain.digital == taped.digital
