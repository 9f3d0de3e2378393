"""Compile passes: semantics on every bundled model, golden IR dumps, ChipConfig, canonicalize."""

from __future__ import annotations

import difflib
import math
import os
import subprocess
import sys
import textwrap
import zlib
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import onnx_builders as B
from helpers import assert_close, import_model, make_model, ort_run, randn

from xbarc.errors import ConfigError, PassError
from xbarc.frontend import load_onnx
from xbarc.ir import Graph, interp
from xbarc.ir import ops as O
from xbarc.passes import (
    Canonicalize,
    ChipConfig,
    DeviceConfig,
    Pack,
    PartitionTiles,
    PassManager,
    Replicate,
    default_passes,
    default_pipeline,
    parse_tile,
)
from xbarc.passes.lower_mvm import batch_of, mvm_positions
from xbarc.passes.partition import check_tiles, crossbar_nodes

MODELS = Path(__file__).resolve().parent.parent / "models"
MODEL_FILES = sorted(MODELS.glob("*.onnx"))
GOLDEN = Path(__file__).resolve().parent / "golden" / "passes"
PASS_NAMES = [
    "canonicalize",
    "lower-to-mvm",
    "slice-and-sign",
    "partition-tiles",
    "replicate",
    "pack",
    "insert-periphery",
]


def _input(g: Graph, seed: int) -> np.ndarray:
    return randn(*g.inputs[0].type.shape, seed=seed)


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    scale = max(float(np.max(np.abs(want))), 1e-30)
    return float(np.max(np.abs(got.astype(np.float64) - want))) / scale


def _n_tiles(g: Graph) -> int:
    return len({t.tile for t in g.tiles})


def _loads(g: Graph) -> dict[str, int]:
    """MVMs per inference of every crossbar layer (the replication load)."""
    b = batch_of(g)
    return {
        n.op.layer: mvm_positions(n) * n.inputs[1].type.shape[0] // b  # type: ignore[attr-defined]
        for n in crossbar_nodes(g)
    }


# ----------------------------------------------------------------------------- semantics

REPLICATION = ("none", "replicate=2", "tile_budget")


@pytest.mark.parametrize("path", MODEL_FILES, ids=[p.name for p in MODEL_FILES])
def test_pipeline_preserves_semantics(path: Path) -> None:
    """Every bundled model, 3 tile shapes x 2 packings x 3 replication settings: the mapped
    graph (verified after every pass) computes what the imported graph computes."""
    g0 = load_onnx(path, batch=2)
    x = _input(g0, zlib.crc32(path.name.encode()))
    (want,) = interp.run(g0, [x])
    for tile in ("256x256", "128x128", "64x32"):
        rows, cols = parse_tile(tile)
        base = ChipConfig(tile_rows=rows, tile_cols=cols, weight_bits=0, pack="none")
        plain = g0.clone()
        default_pipeline(base)(plain)
        n_rects = len(plain.tiles)
        for pack in ("none", "greedy"):
            for rep in REPLICATION:
                what = f"{path.name} {tile} pack={pack} {rep}"
                extra: dict[str, int] = {}
                if rep == "replicate=2":
                    extra = {"replicate": 2}
                elif rep == "tile_budget":
                    extra = {"tile_budget": n_rects + n_rects // 2 + 1}
                cfg = base.replace(pack=pack, **extra)
                g = g0.clone()
                default_pipeline(cfg, verify_each=True)(g)
                check_tiles(g)
                for n in g.nodes:
                    assert n.placement is not None, f"{what}: {n.name} has no placement"
                    assert not isinstance(n.op, (O.BatchNorm, O.Identity, O.Dropout, O.Gemm))
                    if isinstance(n.op, (O.Conv, O.Linear)):
                        pytest.fail(f"{what}: {n.name} ({n.op.NAME}) was not lowered")
                if pack == "none":
                    assert _n_tiles(g) == len(g.tiles), what
                else:
                    assert _n_tiles(g) <= len(g.tiles), what
                reps = {n.op.layer: n.op.replicas for n in crossbar_nodes(g)}  # type: ignore[attr-defined]
                if rep == "none":
                    assert set(reps.values()) == {1}, what
                    assert len(g.tiles) == n_rects, what
                elif rep == "replicate=2":
                    assert max(reps.values()) <= 2, what
                else:
                    assert len(g.tiles) <= extra["tile_budget"], what
                    assert _n_tiles(g) <= extra["tile_budget"], what
                if rep != "none":
                    load = _loads(g)
                    hot = max(load.values())
                    hottest = [k for k, v in load.items() if v == hot]
                    assert max(reps[k] for k in hottest) == max(reps.values()), what
                    for a in load:  # a hotter layer never gets fewer copies
                        assert all(reps[a] >= reps[b] for b in load if load[a] > load[b]), what
                (got,) = interp.run(g, [x])
                assert got.shape == want.shape and got.dtype == want.dtype, what
                err = _rel_err(got, want)
                assert err <= 1e-5, f"{what}: relative error {err:.3g}"


def test_pass_names_and_order() -> None:
    assert [p.name for p in default_passes(ChipConfig())] == PASS_NAMES


def test_pass_failure_names_the_pass() -> None:
    g = load_onnx(MODELS / "mlp.onnx", batch=1)
    # A budget smaller than the unpacked model: pack's postcondition fails.
    cfg = ChipConfig(tile_rows=64, tile_cols=32, pack="greedy", tile_budget=3)
    with pytest.raises(PassError, match=r"pass 'pack' failed .*tile budget is 3"):
        default_pipeline(cfg)(g)


def test_differential_needs_two_tile_columns() -> None:
    g = load_onnx(MODELS / "digits_mlp.onnx", batch=1)
    passes = default_passes(ChipConfig(signing="differential"))
    passes[3] = PartitionTiles(rows=8, cols=1)
    with pytest.raises(PassError, match=r"partition-tiles.*at least 2 tile columns"):
        PassManager(passes)(g)
    # Offset signing maps onto one-column tiles.
    g = load_onnx(MODELS / "digits_mlp.onnx", batch=1)
    cfg = ChipConfig(signing="offset", tile_rows=8, tile_cols=1, pack="none")
    default_pipeline(cfg)(g)
    assert len(g.tiles) == 8 * 64 + 8 * 10  # 64x64 and 64x10 on 8x1 tiles


def test_replicate_respects_max_and_budget() -> None:
    g0 = load_onnx(MODELS / "resnet8.onnx", batch=1)
    load = None
    for kwargs in (
        {"max_replicas": 3},
        {"tile_budget": 40},
        {"max_replicas": 2, "tile_budget": 60},
    ):
        g = g0.clone()
        PassManager(default_passes(ChipConfig(pack="none"))[:4])(g)
        base = len(g.tiles)
        load = _loads(g)
        Replicate(**kwargs).run(g)  # type: ignore[arg-type]
        check_tiles(g)
        reps = {n.op.layer: n.op.replicas for n in crossbar_nodes(g)}  # type: ignore[attr-defined]
        assert max(reps.values()) <= kwargs.get("max_replicas", 1 << 30)
        if "tile_budget" in kwargs:
            assert base <= len(g.tiles) <= kwargs["tile_budget"]
        # a hotter layer never gets fewer copies than a cooler one
        for a in load:
            for b in load:
                if load[a] > load[b]:
                    assert reps[a] >= reps[b], (kwargs, a, b, reps)
        assert len(g.tiles) > base, f"{kwargs}: nothing was replicated"


def test_budget_too_small_for_the_model_is_an_error() -> None:
    g = load_onnx(MODELS / "resnet8.onnx", batch=1)
    with pytest.raises(PassError, match="needs 14 tiles but the tile budget is 13"):
        default_pipeline(ChipConfig(pack="none", tile_budget=13))(g)


# ----------------------------------------------------------------------------- golden dumps


def test_golden_pass_dumps(tmp_path: Path, update_golden: bool) -> None:
    """IR after every pass of resnet8.onnx at 64x32 with greedy packing (``--update-golden``)."""
    g = load_onnx(MODELS / "resnet8.onnx", batch=1)
    cfg = ChipConfig(tile_rows=64, tile_cols=32, pack="greedy")
    default_pipeline(cfg, dump_dir=tmp_path)(g)
    dumps = sorted(tmp_path.glob("*.txt"))
    assert [p.name for p in dumps] == [
        f"{i:02d}-{n}.txt" for i, n in enumerate(["input", *PASS_NAMES])
    ]
    if update_golden:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for old in GOLDEN.glob("resnet8.*.txt"):
            old.unlink()
        for p in dumps:
            (GOLDEN / f"resnet8.{p.name}").write_text(p.read_text())
        return
    golden = sorted(GOLDEN.glob("resnet8.*.txt"))
    assert [p.name for p in golden] == [f"resnet8.{p.name}" for p in dumps], (
        "golden pass dumps missing or stale: run pytest --update-golden"
    )
    for p in dumps:
        want = (GOLDEN / f"resnet8.{p.name}").read_text()
        got = p.read_text()
        if got != want:
            diff = "".join(
                difflib.unified_diff(
                    want.splitlines(keepends=True),
                    got.splitlines(keepends=True),
                    fromfile=f"golden/passes/resnet8.{p.name}",
                    tofile="PassManager dump",
                    n=1,
                )
            )
            pytest.fail(f"IR after {p.stem} differs from the golden file:\n{diff[:6000]}")


# ----------------------------------------------------------------------------- config

TOML = """
[chip]
tile = "128x64"
weight_bits = 8
cell_bits = 2
signing = "offset"
dac_bits = 6
adc_bits = 10
pack = "none"
replicate = 3
tile_budget = 500
weight_scale = 0

[device]
g_min = 2
g_max = 50.5
levels = 32
write_noise = 2.4

[energy]
write_pulse = 2e-12
"""


def _toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "chip.toml"
    p.write_text(textwrap.dedent(text))
    return p


def test_config_from_toml(tmp_path: Path) -> None:
    cfg = ChipConfig.from_toml(_toml(tmp_path, TOML))
    assert cfg.tile == (128, 64)
    assert (cfg.weight_bits, cfg.cell_bits, cfg.signing) == (8, 2, "offset")
    assert (cfg.dac_bits, cfg.adc_bits, cfg.pack) == (6, 10, "none")
    assert (cfg.replicate, cfg.tile_budget, cfg.weight_scale) == (3, 500, 0.0)
    assert cfg.device == DeviceConfig(g_min=2.0, g_max=50.5, levels=32, write_noise=2.4)
    assert isinstance(cfg.device.g_min, float)
    assert cfg.energy == {"write_pulse": 2e-12}
    assert cfg.slices == 4 and cfg.columns_per_weight == 1  # ceil(8 / 2), one column
    # tile_rows / tile_cols work as well; empty file = defaults; overrides win
    p = _toml(tmp_path, "[chip]\ntile_rows = 32\ntile_cols = 16\n")
    assert ChipConfig.from_toml(p).tile == (32, 16)
    assert ChipConfig.from_toml(_toml(tmp_path, "")) == ChipConfig()
    over = ChipConfig.from_toml(_toml(tmp_path, TOML), tile_rows=256, device_g_max=81.0)
    assert over.tile == (256, 64) and over.device.g_max == 81.0 and over.device.g_min == 2.0
    # the dict form round-trips
    assert ChipConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[chip]\ntiles = 4\n", "tiles"),
        ("[chip]\nweight_bitz = 8\n", "weight_bitz"),
        ("[device]\ng_mn = 1.0\n", "g_mn"),
        ("[chips]\ntile = '8x8'\n", "chips"),
        ("[noise]\nx = 1\n", "noise"),
        ("[chip]\ntile = '12by4'\n", "tile"),
        ("[chip]\ntile = '0x4'\n", "tile"),
        ("[chip]\ntile = '8x1'\n", "tile"),  # differential needs 2 columns
        ("[chip]\nsigning = 'both'\n", "signing"),
        ("[chip]\nweight_bits = 1\n", "weight_bits"),
        ("[chip]\nweight_bits = 33\n", "weight_bits"),
        ("[chip]\nweight_bits = '8'\n", "weight_bits"),
        ("[chip]\nweight_bits = true\n", "weight_bits"),
        ("[chip]\ntile_rows = 12.5\n", "tile_rows"),
        ("[chip]\ncell_bits = 0\n", "cell_bits"),
        ("[chip]\ndac_bits = 25\n", "dac_bits"),
        ("[chip]\nadc_bits = -1\n", "adc_bits"),
        ("[chip]\ninput_mode = 'serial'\n", "input_mode"),
        ("[chip]\npack = 'ilp'\n", "pack"),
        ("[chip]\nreplicate = 0\n", "replicate"),
        ("[chip]\ntile_budget = -1\n", "tile_budget"),
        ("[chip]\nweight_scale = -0.5\n", "weight_scale"),
        ("[device]\ng_min = 90.0\n", "g_min"),
        ("[device]\nlevels = 1\n", "levels"),
        ("[device]\nread_noise = -0.1\n", "read_noise"),
        ("[device]\ndrift_t0 = 0.0\n", "drift_t0"),
        ("[device]\nstuck_at_gmin = 0.7\nstuck_at_gmax = 0.7\n", "stuck_at"),
        ("[device]\npulse_asymmetry = 1.0\n", "pulse_asymmetry"),
        ("[device]\nendurance = 0.0\n", "endurance"),
        ("[device]\nwrite_noise = 'big'\n", "write_noise"),
        ("[chip]\ndevice = 3\n", "device"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        ChipConfig.from_toml(_toml(tmp_path, text))


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        ChipConfig.from_toml(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read TOML"):
        ChipConfig.from_toml(_toml(tmp_path, "[chip\ntile = 3"))


def test_config_replace_overrides() -> None:
    cfg = ChipConfig()
    new = cfg.replace(weight_bits=4, cell_bits=1, pack="none", device_g_max=50.0)
    assert (new.weight_bits, new.cell_bits, new.pack, new.device.g_max) == (4, 1, "none", 50.0)
    assert new.device.g_min == cfg.device.g_min
    assert cfg == ChipConfig(), "replace must not mutate"
    assert new.slices == 3  # ceil((4 - 1) / 1) with differential pairs
    with pytest.raises(ConfigError, match="'tile_size'"):
        cfg.replace(tile_size=4)
    with pytest.raises(ConfigError, match="bogus"):
        cfg.replace(device_bogus=1.0)
    with pytest.raises(ConfigError, match="signing"):
        cfg.replace(signing="diff")
    with pytest.raises(ConfigError, match="g_min"):
        cfg.replace(device_g_min=100.0)
    with pytest.raises(ConfigError, match="tile"):
        cfg.replace(tile_cols=0)


_ALTERNATE: dict[str, Any] = {
    "weight_bits": 8,
    "signing": "offset",
    "input_mode": "bit-serial",
    "pack": "none",
    "levels": 16,
}


def _changed(obj: Any, name: str) -> Any:
    v = getattr(obj, name)
    if name in _ALTERNATE:
        return _ALTERNATE[name]
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    if isinstance(v, float):
        return v + 0.25
    raise AssertionError(f"no alternate value for {name}={v!r}")


def test_config_hash_changes_with_every_field() -> None:
    cfg = ChipConfig()
    seen = {cfg.hash()}
    assert cfg.hash() == ChipConfig().hash()
    for f in fields(ChipConfig):
        if f.name in ("device", "energy"):
            continue
        h = cfg.replace(**{f.name: _changed(cfg, f.name)}).hash()
        assert h not in seen, f"hash ignores chip field {f.name}"
        seen.add(h)
    for f in fields(DeviceConfig):
        h = cfg.replace(**{f"device_{f.name}": _changed(cfg.device, f.name)}).hash()
        assert h not in seen, f"hash ignores device field {f.name}"
        seen.add(h)
    h = cfg.replace(energy={"write_pulse": 1e-12}).hash()
    assert h not in seen, "hash ignores the energy overrides"
    assert len(h) == 64 and int(h, 16) >= 0


def test_config_hash_is_stable_across_processes(tmp_path: Path) -> None:
    cfgs = [ChipConfig(), ChipConfig.from_toml(_toml(tmp_path, TOML))]
    code = (
        "import sys\nfrom xbarc.passes import ChipConfig\n"
        "print(ChipConfig().hash())\n"
        "print(ChipConfig.from_toml(sys.argv[1]).hash())\n"
    )
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "chip.toml")],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout.split()
        assert out == [c.hash() for c in cfgs]


# ----------------------------------------------------------------------------- canonicalize


def _canon(model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, batch: int = 1) -> Graph:
    """Import, canonicalize (verified), compare with onnxruntime before and after."""
    g = import_model(model, batch=batch)
    (want,) = ort_run(model, feeds)
    PassManager([Canonicalize()])(g)
    (got,) = interp.run(g, [feeds[v.name] for v in g.inputs])
    assert_close(got, want, tol=1e-5, what="after canonicalize")
    return g


def _ops(g: Graph) -> list[str]:
    return [n.op.NAME for n in g.nodes]


@pytest.mark.parametrize("bias", [True, False])
def test_fold_batch_norm_into_conv(bias: bool) -> None:
    model = B.conv(4, 6, 3, hw=7, pad=1, bias=bias, batch_norm=True, seed=3).model()
    x = randn(2, 4, 7, 7, seed=1)
    g = _canon(model, {"input": x}, batch=2)
    assert _ops(g) == ["conv"]
    assert len(g.nodes[0].inputs) == 3 and g.nodes[0].inputs[1].param
    # and the whole pipeline still agrees
    (want,) = ort_run(model, {"input": x})
    default_pipeline(ChipConfig(tile_rows=16, tile_cols=8))(g)
    (got,) = interp.run(g, [x])
    assert_close(got, want, tol=1e-5)


@pytest.mark.parametrize("form", ["gemm", "matmul"])
def test_fold_batch_norm_into_linear(form: str) -> None:
    model = B.linear(12, 5, form=form, batch_norm=True, seed=4).model()
    g = _canon(model, {"input": randn(3, 12, seed=2)}, batch=3)
    assert _ops(g) == ["linear"] and len(g.nodes[0].inputs) == 3


def test_batch_norm_not_folded_when_conv_output_is_shared() -> None:
    s = B.conv(3, 4, 1, hw=4, batch_norm=True)
    s.nodes[0].output[0] = "c"
    s.nodes[1].input[0] = "c"
    s.add("Add", ["c", "y"], "sum")
    s.nodes[-1].output[0] = "z"
    s.outputs = []
    s.output("z")
    g = _canon(s.model(), {"input": randn(1, 3, 4, 4)})
    assert "batch_norm" in _ops(g)


def _gemm_model(
    m: int,
    k: int,
    n: int,
    *,
    trans_a: bool,
    trans_b: bool,
    alpha: float,
    beta: float,
    c: str,
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    a = randn(*((k, m) if trans_a else (m, k)), seed=5)
    w = randn(*((n, k) if trans_b else (k, n)), seed=6)
    ins = ["a", "w"]
    inits = {"w": w}
    feeds = {"a": a}
    inputs: dict[str, Any] = {"a": a}
    if c == "row":
        inits["c"] = randn(n, seed=7)
    elif c == "matrix":
        inits["c"] = randn(m, n, seed=7)
    elif c == "scalar":
        inits["c"] = randn(1, seed=7)
    elif c == "input":
        feeds["c"] = inputs["c"] = randn(m, n, seed=7)
    if c != "none":
        ins.append("c")
    node = helper.make_node(
        "Gemm",
        ins,
        ["y"],
        name="gemm",
        alpha=alpha,
        beta=beta,
        transA=int(trans_a),
        transB=int(trans_b),
    )
    return make_model([node], inputs, ["y"], initializers=inits), feeds


@pytest.mark.parametrize(
    ("trans_a", "trans_b", "alpha", "beta", "c"),
    [
        (False, True, 1.0, 1.0, "row"),
        (True, False, 0.5, 2.0, "matrix"),
        (True, True, 1.5, 0.25, "row"),
        (False, False, 2.0, 3.0, "scalar"),
        (False, True, 0.75, 0.5, "input"),
        (True, False, 1.0, 1.0, "none"),
    ],
)
def test_gemm_to_linear(trans_a: bool, trans_b: bool, alpha: float, beta: float, c: str) -> None:
    model, feeds = _gemm_model(
        4, 6, 3, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, c=c
    )
    g = _canon(model, feeds)
    ops = _ops(g)
    assert "gemm" not in ops and ops.count("linear") == 1
    assert ("transpose" in ops) == trans_a
    lin = g.nodes[ops.index("linear")]
    assert len(lin.inputs) == (3 if c == "row" else 2)
    if c in ("matrix", "scalar", "input"):
        assert "add" in ops
    # the linear maps onto a crossbar and the whole pipeline agrees with onnxruntime
    (want,) = ort_run(model, feeds)
    default_pipeline(ChipConfig(tile_rows=4, tile_cols=4))(g)
    assert len(crossbar_nodes(g)) == 1
    (got,) = interp.run(g, [feeds[v.name] for v in g.inputs])
    assert_close(got, want, tol=1e-5)


def test_gemm_with_non_constant_weight_stays() -> None:
    a, w = randn(2, 3), randn(3, 4, seed=1)
    node = helper.make_node("Gemm", ["a", "w"], ["y"], alpha=2.0)
    g = _canon(make_model([node], {"a": a, "w": w}, ["y"]), {"a": a, "w": w})
    assert _ops(g) == ["gemm"]


@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_add_to_linear_with_bias(bias_first: bool) -> None:
    s = B.linear(8, 5, form="matmul", seed=9)
    if bias_first:  # torch's export order: Add(bias, MatMul(x, W))
        s.nodes[1].input[0], s.nodes[1].input[1] = s.nodes[1].input[1], s.nodes[1].input[0]
    g = _canon(s.model(), {"input": randn(3, 8, seed=1)}, batch=3)
    assert _ops(g) == ["linear"]
    lin = g.nodes[0]
    assert len(lin.inputs) == 3 and lin.inputs[2].type.shape == (5,)


def test_matmul_add_of_non_row_vector_stays_an_add() -> None:
    x, w, b = randn(3, 8), randn(8, 5, seed=1), randn(3, 5, seed=2)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["t"]),
        helper.make_node("Add", ["t", "b"], ["y"]),
    ]
    model = make_model(nodes, {"x": x}, ["y"], initializers={"w": w, "b": b})
    g = _canon(model, {"x": x})
    assert _ops(g) == ["linear", "add"] and len(g.nodes[0].inputs) == 2


def test_matmul_with_3d_activation_becomes_linear() -> None:
    s = B.Spec(name="mm3d")
    x = s.input("x", ["N", 5, 8])
    y = s.add("MatMul", [x, s.weight("w", B.Rand((8, 6), 0.3))], "mm")
    s.add("Add", [s.weight("b", B.Rand((6,), 0.3)), y], "bias")
    s.nodes[-1].output[0] = "y"
    s.output("y")
    g = _canon(s.model(), {"x": randn(2, 5, 8, seed=1)}, batch=2)
    assert _ops(g) == ["linear"]


def test_identity_and_dropout_removed() -> None:
    x = randn(2, 6)
    ratio = np.asarray(0.3, np.float32)
    nodes = [
        helper.make_node("Identity", ["x"], ["a"]),
        helper.make_node("Dropout", ["a", "ratio"], ["b"]),
        helper.make_node("Relu", ["b"], ["c"]),
        helper.make_node("Dropout", ["c"], ["d"]),
        helper.make_node("Identity", ["d"], ["y"]),
    ]
    model = make_model(nodes, {"x": x}, ["y"], initializers={"ratio": ratio})
    g0 = import_model(model)
    assert {"identity", "dropout"} <= set(_ops(g0))
    g = _canon(model, {"x": x})
    assert _ops(g) == ["relu"]


def test_identity_of_graph_input_as_output() -> None:
    x = randn(2, 3)
    model = make_model([helper.make_node("Identity", ["x"], ["y"])], {"x": x}, ["y"])
    g = _canon(model, {"x": x})
    assert _ops(g) == [] and g.outputs[0] is g.inputs[0]


def test_fold_constants() -> None:
    """A constant subgraph the frontend leaves (larger than its fold limit) folds."""
    big = np.arange(64 * 80, dtype=np.float32).reshape(64, 80) / 1000
    x = randn(2, 80)
    nodes = [
        helper.make_node("Mul", ["k", "two"], ["k2"]),
        helper.make_node("Transpose", ["k2"], ["kt"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "kt"], ["y"]),
    ]
    model = make_model(
        nodes, {"x": x}, ["y"], initializers={"k": big, "two": np.asarray(2.0, np.float32)}
    )
    g0 = import_model(model, batch=1)
    assert "mul" in _ops(g0)
    g = _canon(model, {"x": x})
    assert _ops(g) == ["linear"]
    w = g.nodes[0].inputs[1]
    assert w.param, "a weight folded from a parameter stays a parameter"
    np.testing.assert_array_equal(w.const, (big * 2).T)


@pytest.mark.parametrize("name", ["vit.onnx", "vit.dynamo.onnx"])
def test_batch_dependent_nodes_are_not_folded(name: str) -> None:
    """The class-token Expand follows the batch (batch_coef): canonicalize keeps it, so the
    mapped graph rebinds to another batch and still matches onnxruntime."""
    g = load_onnx(MODELS / name, batch=1)
    follow = [n for n in g.nodes if n.batch_coef and all(v.is_const for v in n.inputs)]
    assert follow, "expected a batch-following node with only constant operands"
    default_pipeline(ChipConfig(tile_rows=64, tile_cols=64))(g)
    kept = [n for n in g.nodes if n.batch_coef and all(v.is_const for v in n.inputs)]
    assert [n.name for n in kept] == [n.name for n in follow]
    for batch in (3, 1):
        gb = g.at_batch(batch)
        gb.verify()
        check_tiles(gb)
        x = randn(batch, *g.inputs[0].type.shape[1:], seed=batch)
        (got,) = interp.run(gb, [x])
        (want,) = ort_run(MODELS / name, {"input": x})
        assert_close(got, want, tol=1e-5, what=f"{name} at batch {batch}")


def test_constants_fold_in_fixed_batch_graphs() -> None:
    """Without batch rebinding (``Graph.batch is None``) nothing follows the batch."""
    g = load_onnx(MODELS / "vit.onnx", batch=1)
    g.batch = None
    n_follow = sum(1 for n in g.nodes if n.batch_coef and all(v.is_const for v in n.inputs))
    assert n_follow
    PassManager([Canonicalize()])(g)
    assert not [n for n in g.nodes if all(v.is_const for v in n.inputs)]
    x = randn(1, 3, 32, 32)
    (want,) = ort_run(MODELS / "vit.onnx", {"input": x})
    (got,) = interp.run(g, [x])
    assert_close(got, want, tol=1e-5)


def test_canonicalize_is_idempotent() -> None:
    for name in ("resnet8.onnx", "vit.onnx", "dwcnn.onnx"):
        g = load_onnx(MODELS / name, batch=1)
        assert Canonicalize().run(g)
        text = str(g)
        assert not Canonicalize().run(g)
        assert str(g) == text


def test_pipeline_on_prebuilt_graph_types() -> None:
    """Lowering fills ``conv`` rows as kh·kw·Cin/g and ``linear`` rows as K."""
    model = B.conv(8, 12, 3, hw=6, group=4, seed=2).model()
    g = import_model(model, batch=1)
    default_pipeline(ChipConfig(tile_rows=8, tile_cols=8, signing="offset", pack="none"))(g)
    (n,) = crossbar_nodes(g)
    assert n.inputs[1].type.shape == (4, 3 * 3 * 2, 3)
    assert len(g.tiles) == 4 * 3  # 18 rows -> 3 row tiles, 3 columns -> 1, per group
    (want,) = ort_run(model, {"input": (x := randn(1, 8, 6, 6))})
    (got,) = interp.run(g, [x])
    assert_close(got, want, tol=1e-5)


def test_pack_none_keeps_one_rectangle_per_tile() -> None:
    g = load_onnx(MODELS / "lenet.onnx", batch=1)
    PassManager(default_passes(ChipConfig(pack="none")))(g)
    assert [t.tile for t in g.tiles] == list(range(len(g.tiles)))
    assert all((t.trow, t.tcol) == (0, 0) for t in g.tiles)
    assert not Pack(mode="none").run(g)


def _partial_sum_ops(g: Graph, rows: int) -> dict[str, int]:
    """Digital element ops per inference of every crossbar layer, computed by hand: the bias
    add plus (row tiles - 1) partial-sum adds per output element of every MVM."""
    b = batch_of(g)
    out = {}
    for n in crossbar_nodes(g):
        groups, r, c = n.inputs[1].type.shape
        bias = n.outputs[0].type.size // b if len(n.inputs) == 3 else 0
        adds = (math.ceil(r / rows) - 1) * c * groups * mvm_positions(n) // b
        out[n.op.layer] = bias + adds  # type: ignore[attr-defined]
    return out


def test_partial_sums_are_counted_per_inference() -> None:
    # fixed batch 2 (no symbolic axis); the crossbar layer sees 6 vectors of 300 features
    x = randn(2, 3, 300)
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Gemm", ["r", "w", "b"], ["y"], transB=1),
    ]
    inits = {"shape": np.array([6, 300]), "w": randn(5, 300, seed=1), "b": randn(5, seed=2)}
    g = import_model(make_model(nodes, {"x": x}, ["y"], initializers=inits))
    assert g.batch is None and batch_of(g) == 2
    default_pipeline(ChipConfig(signing="offset"))(g)
    (n,) = crossbar_nodes(g)
    assert n.placement is not None
    # bias: 6·5 outputs / 2 samples; partial sums: 1 extra row tile × 5 columns × 6 MVMs / 2
    assert [n.placement.elem_ops] == [15 + 15] == list(_partial_sum_ops(g, 256).values())
    assert n.placement.macs == 6 * 300 * 5 // 2
    for name, rows in (("resnet8.onnx", 64), ("vit.onnx", 32)):
        g = load_onnx(MODELS / name, batch=3)
        default_pipeline(ChipConfig(tile_rows=rows, tile_cols=32))(g)
        want = _partial_sum_ops(g, rows)
        got = {n.op.layer: n.placement.elem_ops for n in crossbar_nodes(g)}  # type: ignore[union-attr, attr-defined]
        assert got == want
