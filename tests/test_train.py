"""On-chip training (``runtime/train.py``, ``api.train``): counters, energy, rules, resume, models.

* Counters: one EaPU step of a tiny MLP on 8x4 tiles; requested / applied / skipped / pulses per
  tile equal a brute-force count from the per-weight decisions (the recorded gradients, the
  change in every device's write count, each weight's tile found by scanning the rectangles),
  and the kernel's decisions equal the NumPy twin's on the same inputs.
* Energy = Σ counts × constants, recomputed from the result's counters and the EnergyModel.
* Ideal devices: ``float`` and ``bp`` with zero write noise give bit-identical conductances.
* Resume: an interrupted run resumed from its checkpoint ends bit for bit like an uninterrupted one.
* Models: LeNet trains on digits with EaPU (loss decreases); the ViT trains on synthetic data with
  attention matmuls digital and every projection/MLP crossbar layer written.
* Wear persists across training runs of a trained file.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import make_model, tiny_mlp

from xbarc import api
from xbarc.backend import lower as backend
from xbarc.ir import ops as O
from xbarc.passes import ChipConfig
from xbarc.runtime.data import Dataset
from xbarc.runtime.energy import EnergyModel
from xbarc.runtime.engine import Engine
from xbarc.runtime.train import TrainConfig, Trainer, update_reference
from xbarc.runtime.train.checkpoint import param_order

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
Array = np.ndarray[Any, Any]


# --------------------------------------------------------------------------- fixtures


def tiny_data(n_train: int = 48, n_test: int = 24) -> Dataset:
    rng = np.random.default_rng(1)
    proto = rng.standard_normal((3, 8))
    yt, ys = rng.integers(0, 3, n_train), rng.integers(0, 3, n_test)
    xt = (proto[yt] + 0.5 * rng.standard_normal((n_train, 8))).astype(np.float32)
    xs = (proto[ys] + 0.5 * rng.standard_normal((n_test, 8))).astype(np.float32)
    return Dataset("synthetic", xt, yt.astype(np.int64), xs, ys.astype(np.int64), 3, "test")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny MLP compiled onto 8x4 tiles (differential pairs: 2 weights per tile row)."""
    d = tmp_path_factory.mktemp("tiny")
    onnx_path = tiny_mlp(d / "tiny.onnx")
    out = d / "tiny.mapped.bin"
    cfg = ChipConfig(tile_rows=8, tile_cols=4, weight_scale=0.0125, pack="none")
    api.compile_model(onnx_path, cfg, output=out, batch=1)
    return out


@pytest.fixture(scope="module")
def digits_mapped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "digits.mapped.bin"
    api.compile_model(MODELS / "digits_mlp.onnx", ChipConfig(weight_scale=0.0125), output=out)
    return out


class Recorder:
    """Wraps the update-kernel module and keeps a copy of every call's arguments."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: list[list[Any]] = []

    def optimizer_rule_update(self, *args: Any) -> None:
        self.calls.append([a.copy() if isinstance(a, np.ndarray) else a for a in args])
        self.real.optimizer_rule_update(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def tile_of(engine: Engine, layer_name: str, g: int, r: int, c: int) -> list[int]:
    """Brute force: the tiles (all replicas) holding weight (g, r, c) of a layer."""
    layer = engine.layers[layer_name]
    pc = c * layer.lm.per_weight  # first physical column of the weight
    return [
        t.tile
        for t in layer.rects
        if t.group == g and t.row0 <= r < t.row0 + t.rows and t.col0 <= pc < t.col0 + t.cols
    ]


# --------------------------------------------------------------------------- counters


def test_counters_equal_brute_force_counts_on_a_tiny_tile(tiny: Path) -> None:
    prog = backend.load(tiny)
    assert prog.n_tiles > 2 and prog.tile_shape == (8, 4)
    eng = Engine(prog, seed=0, threads=2)
    data = tiny_data()
    cfg = TrainConfig(rule="eapu", lr=1e-2, batch=16, write_noise=2.0, seed=3)
    tr = Trainer(eng, cfg, data)
    rec = Recorder(tr.k)
    tr.k = rec
    before = {n: (st.wear_p.copy(), st.wear_n.copy()) for n, st in tr.states.items()}
    tiles_before = eng.counters.copy()
    draws_before = eng.digital.rng_draws
    eng.calibrate(data.x_train[:16])
    tr.step(data.x_train[:16], data.y_train[:16], epoch=0, index=0)
    tr._flush_counts()
    got = eng.counters.minus(tiles_before)

    n_t = prog.n_tiles
    want = {f: np.zeros(n_t, np.int64) for f in ("req", "app", "skip", "pulses")}
    names = sorted(eng.layers)
    twin_draws = 0
    assert len(rec.calls) == len(names)  # one call per layer (one group each)
    for name, call in zip(names, rec.calls, strict=True):
        layer, st = eng.layers[name], tr.states[name]
        _, _, rows, cols = layer.gp.shape
        grad = call[2]
        assert grad.shape == (rows * cols,)
        # first Adam step from m = v = 0: an update is requested iff the gradient is nonzero
        requested = (grad != 0).reshape(rows, cols)
        wear = (st.wear_p - before[name][0]) + (st.wear_n - before[name][1])
        wear = wear.reshape(rows, cols)
        for r in range(rows):
            for c in range(cols):
                for t in tile_of(eng, name, 0, r, c):
                    want["req"][t] += requested[r, c]
                    want["app"][t] += wear[r, c] > 0
                    want["skip"][t] += requested[r, c] and wear[r, c] == 0
                    want["pulses"][t] += wear[r, c]
        # the same decisions as the NumPy twin on the same inputs
        twin = [a.copy() if isinstance(a, np.ndarray) else a for a in call]
        update_reference.optimizer_rule_update(*twin)
        twin_draws += int(twin[10][..., 4].sum())  # EaPU's uniform draws, per the twin
        np.testing.assert_array_equal(twin[8], st.wear_p[0])
        np.testing.assert_array_equal(twin[9], st.wear_n[0])
        np.testing.assert_allclose(twin[6], layer.gp[0, 0].reshape(-1), atol=1e-4, rtol=0)
        np.testing.assert_allclose(twin[7], layer.gn[0, 0].reshape(-1), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(got.updates_requested, want["req"])
    np.testing.assert_array_equal(got.updates_applied, want["app"])
    np.testing.assert_array_equal(got.updates_skipped, want["skip"])
    np.testing.assert_array_equal(got.write_pulses, want["pulses"])
    # a real mix: some written, some skipped, on several tiles
    assert want["app"].sum() > 0 and want["skip"].sum() > 0
    assert (want["req"] > 0).sum() >= 3
    # the rule's random draws are charged as the kernels made them (thinned: fewer than one
    # per requested update)
    assert eng.digital.rng_draws - draws_before == twin_draws
    assert twin_draws > 0
    # the same write counts land in the per-device wear of the tiles
    assert tr.wear_tiles().sum() == want["pulses"].sum()
    # forward MVMs ran on every tile; transposed MVMs on every tile but those of the first
    # layer, whose input gradient (w.r.t. the data) nobody needs
    assert (got.mvm > 0).all()
    first = eng.program.graph.inputs[0].uses[0].node
    assert isinstance(first.op, O.XbarMVM)
    backward_tiles = {
        r.tile for n, layer in eng.layers.items() if n != first.op.layer for r in layer.rects
    }
    assert {int(t) for t in np.flatnonzero(got.mvm_t)} == backward_tiles


def test_energy_is_counts_times_constants(tiny: Path) -> None:
    eng = Engine(backend.load(tiny), seed=0, threads=1)
    tr = Trainer(eng, TrainConfig(rule="eapu", lr=1e-2, batch=16, epochs=2), tiny_data())
    for e in range(2):
        tr.run_epoch(e)
    res = tr.result()
    cnt, dig = res.counters, res.digital
    model = EnergyModel.default()
    cfg = eng.program.config
    c = {k: v.value for k, v in model.constants.items()}
    want = {
        "array_read": cnt.cell_reads.sum() * c["read_cell_bit"],
        "dac": cnt.dac.sum() * model.dac(cfg.dac_bits),
        "adc": cnt.adc.sum() * model.adc(cfg.adc_bits),
        "write": cnt.write_pulses.sum() * c["write_pulse"],
        "verify": cnt.verify_reads.sum() * c["verify_read"],
        "digital_mac": dig.macs * c["mac_fp32"],
        "digital_elem": dig.elem_ops * c["elem_op"],
        "rng": dig.rng_draws * c["rng_draw"],
        "buffer": dig.buffer_bytes * c["sram_byte"],
    }
    comps = res.energy["components"]
    for k, v in want.items():
        assert comps[k] == pytest.approx(v, rel=1e-12, abs=0), k
    assert res.energy["total"] == pytest.approx(math.fsum(want.values()), rel=1e-12)
    assert res.energy["counts"]["write"] == int(cnt.write_pulses.sum()) > 0
    assert dig.rng_draws > 0 and dig.macs > 0
    # per-epoch energies cover exactly the training work (evaluation is not charged)
    assert sum(h.energy_j for h in res.history) == pytest.approx(res.energy["total"], rel=1e-9)
    # and the history's pulses are the tile counters' pulses
    assert sum(h.pulses for h in res.history) == int(cnt.write_pulses.sum())


def test_energy_override_scales_only_the_write_component(tiny: Path) -> None:
    eng = Engine(backend.load(tiny), seed=0, threads=1)
    tr = Trainer(eng, TrainConfig(rule="bp", lr=1e-2, batch=16, epochs=1), tiny_data())
    tr.run_epoch(0)
    base = tr.result().energy
    tr.energy_model = EnergyModel.default().with_overrides({"write_pulse": 118e-12})
    high = tr.result().energy
    assert high["components"]["write"] == pytest.approx(base["components"]["write"] * 118)
    for k in ("array_read", "adc", "digital_mac", "rng"):
        assert high["components"][k] == base["components"][k]


# --------------------------------------------------------------------------- rules


def test_float_and_noiseless_bp_agree_bit_for_bit_on_ideal_devices(tiny: Path) -> None:
    """Same device-choice logic, no noise anywhere: ``float`` (unbounded, no pulses) and ``bp``
    (bounded, one pulse per write, σ = 0) must land on the same conductances."""
    data = tiny_data()
    out = {}
    for rule in ("float", "bp"):
        eng = Engine(backend.load(tiny), ideal=True, seed=0, threads=2)
        tr = Trainer(eng, TrainConfig(rule=rule, lr=1e-2, batch=16, write_noise=0.0), data)
        tr.run_epoch(0)
        tr.run_epoch(1)
        out[rule] = (eng, tr)
    (ef, tf), (eb, tb) = out["float"], out["bp"]
    for name in ef.layers:
        np.testing.assert_array_equal(ef.layers[name].gp, eb.layers[name].gp)
        np.testing.assert_array_equal(ef.layers[name].gn, eb.layers[name].gn)
    pf = [tf.params[k] for k in sorted(tf.params, key=lambda k: param_order(tf, k))]
    pb = [tb.params[k] for k in sorted(tb.params, key=lambda k: param_order(tb, k))]
    for a, b in zip(pf, pb, strict=True):
        np.testing.assert_array_equal(a, b)
    # the bookkeeping differs: float writes no pulse, bp one per nonzero update
    assert ef.counters.write_pulses.sum() == 0
    assert eb.counters.write_pulses.sum() == eb.counters.updates_requested.sum() > 0
    assert [h.loss for h in tf.history] == [h.loss for h in tb.history]


def test_eapu_writes_far_less_than_bp(digits_mapped: Path) -> None:
    cfg = {"epochs": 1, "limit": 256, "batch": 32}
    res = {
        r: api.train(
            digits_mapped,
            "digits",
            TrainConfig(rule=r, **cfg),
            output=digits_mapped.with_name(f"cmp.{r}.bin"),
            checkpoint=False,
        )
        for r in ("eapu", "bp")
    }
    w = {r: sum(h["pulses"] for h in v["history"]) for r, v in res.items()}
    req = {r: sum(h["requested"] for h in v["history"]) for r, v in res.items()}
    assert w["bp"] == req["bp"] > 0
    assert 0 < w["eapu"] < 0.1 * w["bp"]
    assert res["eapu"]["wear"]["max"] < res["bp"]["wear"]["max"]


# --------------------------------------------------------------------------- resume


class Stop(Exception):
    """Raised from the progress hook to simulate a kill mid-epoch."""


def _final_state(path: Path) -> dict[str, Array]:
    p = backend.load(path)
    out = {"tiles_g": np.asarray(p.tiles_g), "wear": np.asarray(p.wear)}
    for i, v in enumerate(p.graph.constants()):
        if v.const is not None and v.type.dtype.is_float:
            out[f"const{i}"] = np.asarray(v.const)
    out["final_test_acc"] = np.array([r["final_test_acc"] for r in p.extra["training"]["runs"]])
    return out


@pytest.mark.parametrize("rule", ["eapu", "mixed"])
def test_resume_after_interruption_is_bit_identical(digits_mapped: Path, rule: str) -> None:
    cfg = TrainConfig(rule=rule, epochs=3, limit=160, batch=32, seed=5)
    d = digits_mapped.parent
    full = api.train(digits_mapped, "digits", cfg, output=d / f"full.{rule}.bin")

    target = d / f"cut.{rule}.bin"

    def hook(info: dict[str, Any]) -> None:
        if info.get("epoch") == 1 and info.get("seen", 0) >= 64:  # mid second epoch
            raise Stop

    with pytest.raises(Stop):
        api.train(digits_mapped, "digits", cfg, output=target, progress=hook)
    ckpt = Path(f"{target}.ckpt")
    assert ckpt.exists() and not target.exists()
    assert backend.load(ckpt).extra["checkpoint"]["epoch"] == 1
    resumed = api.train(digits_mapped, "digits", cfg, output=target, resume=True)
    assert not ckpt.exists()

    a, b = _final_state(d / f"full.{rule}.bin"), _final_state(target)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert full["history"] == resumed["history"]
    assert full["tile_counters"] == resumed["tile_counters"]
    assert full["digital_counters"] == resumed["digital_counters"]
    assert full["energy"]["total"] == resumed["energy"]["total"]
    # the trained file records the run once and carries no checkpoint state
    p = backend.load(target)
    assert p.extra["calibration"] == backend.load(d / f"full.{rule}.bin").extra["calibration"]
    assert len(p.extra["training"]["runs"]) == 1
    assert "checkpoint" not in p.extra
    assert not any(k.startswith("train/") for k in p.extra_arrays)


def test_resume_refuses_changed_options_and_missing_checkpoint(digits_mapped: Path) -> None:
    from xbarc.errors import XbarcError

    d = digits_mapped.parent
    cfg = TrainConfig(rule="eapu", epochs=2, limit=64, batch=32)
    with pytest.raises(XbarcError, match="no checkpoint"):
        api.train(digits_mapped, "digits", cfg, output=d / "none.bin", resume=True)

    def hook(info: dict[str, Any]) -> None:
        if info.get("epoch") == 1:
            raise Stop

    with pytest.raises(Stop):
        api.train(digits_mapped, "digits", cfg, output=d / "opt.bin", progress=hook)
    other = TrainConfig(rule="eapu", epochs=2, limit=64, batch=32, lr=5e-3)
    with pytest.raises(XbarcError, match="lr"):
        api.train(digits_mapped, "digits", other, output=d / "opt.bin", resume=True)


# --------------------------------------------------------------------------- models


def test_lenet_trains_on_digits_with_eapu(tmp_path: Path) -> None:
    mapped = tmp_path / "lenet.mapped.bin"
    api.compile_model(MODELS / "lenet.onnx", ChipConfig(weight_scale=0.0125), output=mapped)
    cfg = TrainConfig(rule="eapu", epochs=3, limit=128, batch=32, lr=3e-3, seed=1)
    res = api.train(
        mapped, "digits", cfg, output=tmp_path / "lenet.trained.bin", checkpoint=False, threads=1
    )
    losses = [h["loss"] for h in res["history"]]
    assert losses[-1] < losses[0] - 0.05, losses
    assert res["final_test_acc"] > 0.2  # chance is 0.1
    # the convolutions are crossbar layers and were written
    p = backend.load(tmp_path / "lenet.trained.bin")
    convs = [n for n in p.graph.nodes if isinstance(n.op, O.XbarMVM) and n.op.kind == "conv"]
    assert len(convs) == 2
    assert sum(h["pulses"] for h in res["history"]) > 0


def test_vit_trains_with_attention_digital_and_projections_on_crossbars(tmp_path: Path) -> None:
    mapped = tmp_path / "vit.mapped.bin"
    api.compile_model(MODELS / "vit.onnx", ChipConfig(weight_scale=0.0125), output=mapped)
    prog = backend.load(mapped)
    g = prog.graph
    # attention's activation × activation matmuls (QKᵀ, AV) stay digital ...
    act_matmuls = [n for n in g.nodes if isinstance(n.op, O.MatMul)]
    assert len(act_matmuls) == 4  # 2 blocks × (QKᵀ, AV)
    for n in act_matmuls:
        assert n.placement is not None and n.placement.unit == "digital"
        assert all(v.const is None for v in n.inputs)
    # ... and every crossbar layer has a constant weight
    xbar = [n for n in g.nodes if isinstance(n.op, O.XbarMVM)]
    assert all(n.inputs[1].const is not None for n in xbar)
    names = {n.op.layer for n in xbar}
    for blk in (0, 1):
        for part in ("attn_qkv", "attn_proj", "mlp_mlp.0", "mlp_mlp.2"):
            assert f"blocks_blocks.{blk}_{part}_MatMul" in names

    eng = Engine(prog, seed=0, threads=2)
    from xbarc.runtime import data as data_mod
    from xbarc.runtime.train import prepare_data

    ds = data_mod.load("synthetic", seed=0, synthetic=data_mod.SyntheticSpec(shape=eng.input_shape))
    cfg = TrainConfig(rule="eapu", epochs=1, limit=48, batch=16, lr=1e-2)
    tr = Trainer(eng, cfg, prepare_data(ds, eng, cfg))
    rec = tr.run_epoch(0)
    assert math.isfinite(rec.loss)
    for name, st in tr.states.items():
        writes = int(st.wear_p.sum()) + int(st.wear_n.sum())
        assert writes > 0, f"crossbar layer {name} received no write"
    assert set(tr.states) == names
    # the digital parameters (LayerNorm, biases, embeddings) were trained too
    assert tr.params and any(np.abs(tr.param_m[k]).sum() > 0 for k in tr.params)


# --------------------------------------------------------------------------- wear


def test_wear_persists_across_training_runs(digits_mapped: Path) -> None:
    d = digits_mapped.parent
    cfg = TrainConfig(rule="eapu", epochs=1, limit=96, batch=32)
    first = api.train(digits_mapped, "digits", cfg, output=d / "w1.bin", checkpoint=False)
    w1 = backend.load(d / "w1.bin").wear
    assert w1 is not None and w1.sum() == sum(h["pulses"] for h in first["history"]) > 0
    second = api.train(d / "w1.bin", "digits", cfg, output=d / "w2.bin", checkpoint=False)
    p2 = backend.load(d / "w2.bin")
    w2 = p2.wear
    assert w2 is not None
    assert (w2 >= w1).all()
    assert w2.sum() - w1.sum() == sum(h["pulses"] for h in second["history"]) > 0
    # the summary's worst device includes the earlier run's writes
    assert second["wear"]["max"] == int(w2.max())
    # the report shows both runs' update counts and the endurance left
    from xbarc.backend import report

    rep = report.build(p2)
    tr = rep["training"]
    assert [r["rule"] for r in tr["runs"]] == ["eapu", "eapu"]
    pulses = sum(r["write_pulses"] for r in tr["per_tile"])
    assert pulses == int(w2.sum())
    assert tr["max_writes"] == int(w2.max())
    assert tr["endurance_left"] == pytest.approx(1 - w2.max() / p2.config.device.endurance)
    # a compiled (never trained) program has no training section
    assert "training" not in report.build(backend.load(digits_mapped))


def test_incremental_gdiff_matches_a_full_engine_refresh(tiny: Path) -> None:
    """Between re-calibrations the trainer keeps the engine's derived conductance state current
    without ``Engine.refresh`` (the kernel updates ``gdiff`` of the written weights); a full
    refresh must then change nothing but the read-noise rms. Guards against new derived state
    in ``Engine.refresh`` that the training loop would leave stale."""
    eng = Engine(backend.load(tiny), seed=0, threads=1)
    data = tiny_data()
    tr = Trainer(eng, TrainConfig(rule="eapu", lr=3e-2, batch=16), data)
    eng.calibrate(data.x_train[:16])
    for i in range(3):
        tr.step(data.x_train[16 * i : 16 * i + 16], data.y_train[16 * i : 16 * i + 16],
                epoch=0, index=i)  # fmt: skip
    assert eng.counters.updates_applied.sum() == 0  # not flushed yet; the wear shows writes
    assert sum(int(st.wear_p.sum() + st.wear_n.sum()) for st in tr.states.values()) > 0
    for layer in eng.layers.values():
        before = {k: np.array(v, copy=True) for k, v in vars(layer).items()
                  if isinstance(v, np.ndarray)}  # fmt: skip
        eng.refresh(layer)
        after = {k: v for k, v in vars(layer).items() if isinstance(v, np.ndarray)}
        assert before.keys() == after.keys()
        for k in before:
            if k in ("rms", "rms_t"):  # refreshed every RECAL_EVERY steps only
                continue
            np.testing.assert_array_equal(before[k], after[k], err_msg=k)


def test_scalar_and_exponent_initializers_are_not_trained(tmp_path: Path) -> None:
    """Exporters store literals as initializers (dynamo: ``val_N``); they stay constants."""
    import onnx

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Mul", ["h", "scale"], ["hs"]),
        helper.make_node("Clip", ["hs", "lo", "hi"], ["hc"]),
        helper.make_node("Pow", ["hc", "two"], ["hp"]),
        helper.make_node("Mul", ["hp", "gamma"], ["hg"]),
        helper.make_node("Gemm", ["hg", "w2", "b2"], ["logits"], transB=1),
    ]
    inits = {
        "w1": (rng.standard_normal((6, 8)) * 0.4).astype(np.float32),
        "b1": (rng.standard_normal(6) * 0.1).astype(np.float32),
        "scale": np.array(0.5, np.float32),
        "lo": np.array(-1.0, np.float32),
        "hi": np.array(1.0, np.float32),
        "two": np.array([2.0, 2.0, 2.0, 2.0, 2.0, 2.0], np.float32),
        "gamma": np.ones(6, np.float32),
        "w2": (rng.standard_normal((3, 6)) * 0.4).astype(np.float32),
        "b2": (rng.standard_normal(3) * 0.1).astype(np.float32),
    }
    model = make_model(
        nodes, {"input": (np.float32, ["N", 8])}, [("logits", np.float32, ["N", 3])],
        initializers=inits,
    )  # fmt: skip
    onnx.save(model, str(tmp_path / "m.onnx"))
    out = tmp_path / "m.mapped.bin"
    api.compile_model(tmp_path / "m.onnx", ChipConfig(weight_scale=0.0125), output=out)
    eng = Engine.load(out, threads=1)
    tr = Trainer(eng, TrainConfig(rule="eapu", epochs=1, batch=16, seed=0), tiny_data())
    names = sorted(
        v.name for v in eng.program.graph.constants() if v.const is not None and id(v.const)
        in tr.params
    )  # fmt: skip
    assert names == ["b1", "b2", "gamma"]  # biases and the vector scale: digital, exact
    before = {v.name: np.array(v.const) for v in eng.program.graph.constants()}
    tr.run_epoch(0)
    after = {v.name: np.array(v.const) for v in eng.program.graph.constants()}
    assert "two" in before  # the exponent is a (non-scalar) initializer that stays
    for k in before.keys() - set(names):
        np.testing.assert_array_equal(after[k], before[k])
    assert not np.array_equal(after["gamma"], before["gamma"])


def test_a_diverged_loss_is_one_clear_error(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xbarc.errors import XbarcError

    eng = Engine.load(tiny, threads=1)
    tr = Trainer(eng, TrainConfig(rule="eapu", epochs=1, batch=16, seed=0), tiny_data())
    real = eng.forward
    monkeypatch.setattr(eng, "forward", lambda x, **kw: real(x, **kw) * np.float32(np.nan))
    with pytest.raises(XbarcError, match=r"diverged at epoch 1, batch 1: the loss is nan"):
        tr.run_epoch(0)


def test_fixed_batch_model_trains_at_its_batch_size(tmp_path: Path) -> None:
    """A model exported without a dynamic batch axis trains with exactly its batch size
    (the epoch's last, partial batch is padded; its padding rows carry no gradient)."""
    import onnx

    from xbarc.errors import ConfigError

    model = onnx.load(str(tiny_mlp(tmp_path / "dyn.onnx")))
    for vi in (*model.graph.input, *model.graph.output):
        vi.type.tensor_type.shape.dim[0].ClearField("dim_param")
        vi.type.tensor_type.shape.dim[0].dim_value = 4
    onnx.save(model, str(tmp_path / "fixed.onnx"))
    out = tmp_path / "fixed.mapped.bin"
    api.compile_model(tmp_path / "fixed.onnx", ChipConfig(weight_scale=0.0125), output=out)
    data = tiny_data(n_train=10, n_test=6)
    with pytest.raises(ConfigError, match=r"fixed batch size of 4.*--batch 4"):
        Trainer(Engine.load(out, threads=1), TrainConfig(rule="eapu", batch=16), data)
    eng = Engine.load(out, threads=1)
    assert eng.program.graph.batch is None
    tr = Trainer(eng, TrainConfig(rule="bp", batch=4, epochs=2, seed=0), data)
    before = {k: v.copy() for k, v in tr.params.items()}
    rec = tr.run_epoch(0)
    assert math.isfinite(rec.loss)
    assert tr.samples_trained() == 10
    assert any(not np.array_equal(before[k], v) for k, v in tr.params.items())
