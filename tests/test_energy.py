"""Energy model and counters: Σ counters × constants, converter rules, overrides, provenance."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xbarc.errors import ConfigError
from xbarc.runtime.counters import DigitalCounters, TileCounters
from xbarc.runtime.energy import (
    CONSTANTS_HEADER,
    DEFAULT_CONSTANTS,
    IDEAL_CONVERTER_BITS,
    REQUIRED,
    Constant,
    EnergyModel,
    EnergyReport,
    format_constants,
    format_value,
)

pJ, fJ = 1e-12, 1e-15
MODEL = EnergyModel.default()
V: dict[str, float] = {name: c.value for name, c in DEFAULT_CONSTANTS.items()}

# ---------------------------------------------------------------- strategies

MAX_COUNT = 10**12  # far below 2**53, so int → float is exact


@st.composite
def tile_counters(draw: st.DrawFn, n_tiles: int | None = None) -> TileCounters:
    n = draw(st.integers(0, 6)) if n_tiles is None else n_tiles
    arrays = {
        name: np.array(draw(st.lists(st.integers(0, MAX_COUNT), min_size=n, max_size=n)), np.int64)
        for name in TileCounters.FIELDS
    }
    return TileCounters(**arrays)


digital_counters = st.builds(
    DigitalCounters,
    macs=st.integers(0, 10**15),
    elem_ops=st.integers(0, 10**15),
    rng_draws=st.integers(0, 10**15),
    buffer_bytes=st.integers(0, 10**15),
)


# ---------------------------------------------------------------- independent reference rules


def ref_dac(bits: int) -> float:
    b = bits or 8
    return V["dac_1b"] * 2.0 ** (b - 1)


def ref_adc(bits: int) -> float:
    """The documented ADC rule, written independently (in the log domain)."""
    b = bits or 8
    pts: dict[int, float] = {6: V["adc_6b"], 8: V["adc_8b"], 10: V["adc_10b"]}
    if b in pts:
        return pts[b]
    if b < 6:
        return pts[6] * 2.0 ** (b - 6)
    if b > 10:
        return pts[10] * 2.0 ** (b - 10)
    b0, b1 = (6, 8) if b < 8 else (8, 10)
    w = (b - b0) / (b1 - b0)
    return math.exp((1 - w) * math.log(pts[b0]) + w * math.log(pts[b1]))


# ---------------------------------------------------------------- Σ counters × constants


@given(
    data=st.data(),
    digital=digital_counters,
    samples=st.integers(0, 10**6),
    gflops=st.floats(0, 1e12, allow_nan=False),
    training=st.booleans(),
)
def test_breakdown_is_sum_of_counts_times_constants(
    data: st.DataObject,
    digital: DigitalCounters,
    samples: int,
    gflops: float,
    training: bool,
) -> None:
    tiles = data.draw(tile_counters())
    n = tiles.n_tiles
    dac_bits = np.array(data.draw(st.lists(st.integers(0, 12), min_size=n, max_size=n)), np.int64)
    adc_bits = np.array(data.draw(st.lists(st.integers(0, 14), min_size=n, max_size=n)), np.int64)
    rep = MODEL.breakdown(
        tiles,
        digital,
        dac_bits=dac_bits,
        adc_bits=adc_bits,
        samples=samples,
        gpu_flops_per_sample=gflops,
        training=training,
    )

    per_tile_expected = {
        "array_read": [int(c) * V["read_cell_bit"] for c in tiles.cell_reads],
        "dac": [int(c) * ref_dac(int(b)) for c, b in zip(tiles.dac, dac_bits, strict=True)],
        "adc": [int(c) * ref_adc(int(b)) for c, b in zip(tiles.adc, adc_bits, strict=True)],
        "write": [int(c) * V["write_pulse"] for c in tiles.write_pulses],
        "verify": [int(c) * V["verify_read"] for c in tiles.verify_reads],
    }
    for comp, expected in per_tile_expected.items():
        assert rep.tile_breakdown[comp] == pytest.approx(expected, rel=1e-12, abs=0)
        assert getattr(rep, comp) == pytest.approx(math.fsum(expected), rel=1e-12, abs=0)
    per_tile = [math.fsum(parts) for parts in zip(*per_tile_expected.values(), strict=True)]
    assert rep.per_tile.dtype == np.float64 and rep.per_tile.shape == (n,)
    assert rep.per_tile == pytest.approx(per_tile, rel=1e-12, abs=0)

    assert rep.digital_mac == digital.macs * V["mac_fp32"]
    assert rep.digital_elem == digital.elem_ops * V["elem_op"]
    assert rep.rng == digital.rng_draws * V["rng_draw"]
    assert rep.buffer == digital.buffer_bytes * V["sram_byte"]

    comps = [getattr(rep, c) for c in EnergyReport.COMPONENTS]
    assert rep.total == pytest.approx(math.fsum(comps), rel=1e-12, abs=0)
    assert rep.total == pytest.approx(
        math.fsum(per_tile) + rep.digital_mac + rep.digital_elem + rep.rng + rep.buffer,
        rel=1e-12,
        abs=0,
    )
    if samples:
        assert rep.per_sample == pytest.approx(rep.total / samples, rel=1e-15)
    else:
        assert rep.per_sample is None
    gpu = V["gpu_train_flop"] if training else V["gpu_infer_flop"]
    assert rep.gpu_per_sample == gflops * gpu
    assert rep.counts["dac"] == int(tiles.dac.sum())
    assert rep.counts["digital_mac"] == digital.macs
    json.dumps(rep.to_dict(), allow_nan=False)


def test_scalar_bits_broadcast_and_counts_are_not_charged_twice() -> None:
    tiles = TileCounters.zeros(2)
    tiles.mvm[:] = 5  # MVMs, transposed MVMs and update counts carry no energy themselves
    tiles.mvm_t[:] = 5
    tiles.updates_requested[:] = 9
    tiles.updates_applied[:] = 4
    tiles.updates_skipped[:] = 5
    rep = MODEL.breakdown(
        tiles,
        DigitalCounters(),
        dac_bits=4,
        adc_bits=np.int64(6),
        samples=1,
        gpu_flops_per_sample=0.0,
        training=False,
    )
    assert rep.total == 0.0
    assert [c["name"] for c in rep.constants_used] == ["gpu_infer_flop"]


def test_constants_used_and_notes() -> None:
    tiles = TileCounters.zeros(3)
    tiles.cell_reads[:] = [10, 0, 0]
    tiles.adc[:] = [1, 1, 0]
    tiles.dac[:] = [0, 2, 2]
    tiles.write_pulses[2] = 3
    dig = DigitalCounters(rng_draws=7)
    rep = MODEL.breakdown(
        tiles,
        dig,
        dac_bits=np.array([1, 4, 0]),
        adc_bits=np.array([7, 0, 12]),
        samples=3,
        gpu_flops_per_sample=1e9,
        training=True,
    )
    names = [c["name"] for c in rep.constants_used]
    # adc_10b only enters tile 2, which did no ADC conversions; dac 1 b only tile 0 (no DACs).
    assert names == [
        "read_cell_bit",
        "dac_1b",
        "adc_6b",
        "adc_8b",
        "write_pulse",
        "rng_draw",
        "gpu_train_flop",
    ]
    text = "\n".join(rep.notes)
    assert "ideal ADC (bits 0) counted at 8 b" in text
    assert "ideal DAC (bits 0) counted at 8 b" in text
    assert "log-linear between adc_6b and adc_8b" in text
    assert all(
        set(c) == {"name", "value", "unit", "node", "source", "tag", "note"}
        for c in rep.constants_used
    )


def test_report_json_and_rows() -> None:
    tiles = TileCounters.zeros(2)
    tiles.cell_reads[:] = 1000
    tiles.adc[:] = 10
    for samples in (0, 4):
        rep = MODEL.breakdown(
            tiles,
            DigitalCounters(macs=5),
            dac_bits=np.ones(2, np.int64),
            adc_bits=np.full(2, 8),
            samples=samples,
            gpu_flops_per_sample=1e6,
            training=True,
        )
        d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
        assert d["components"]["adc"] == pytest.approx(20 * V["adc_8b"])
        assert d["per_tile"] == pytest.approx(rep.per_tile.tolist())
        assert len(d["tile_breakdown"]["array_read"]) == 2
        rows = rep.rows()
        assert all(len(r) == len(EnergyReport.ROW_HEADER) for r in rows)
        assert [r[0] for r in rows[:-2]] == list(EnergyReport.COMPONENTS)
        assert rows[-2][0] == "total" and rows[-1][0].startswith("gpu baseline")
        if samples:
            assert d["per_sample"] == pytest.approx(rep.total / 4)
            assert d["gpu_ratio"] == pytest.approx(1e6 * V["gpu_train_flop"] / (rep.total / 4))
        else:
            assert d["per_sample"] is None and d["gpu_ratio"] is None
            assert any("samples = 0" in n for n in rep.notes)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dac_bits": np.ones(3, np.int64)}, "dac_bits"),
        ({"adc_bits": np.ones(2, np.float32)}, "adc_bits"),
        ({"adc_bits": np.array([8, 40])}, "adc_bits"),
        ({"dac_bits": np.array([-1, 1])}, "dac_bits"),
        ({"samples": -1}, "samples"),
        ({"gpu_flops_per_sample": math.inf}, "gpu_flops_per_sample"),
    ],
)
def test_breakdown_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "dac_bits": np.ones(2, np.int64),
        "adc_bits": np.full(2, 8),
        "samples": 1,
        "gpu_flops_per_sample": 1.0,
        "training": True,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        MODEL.breakdown(TileCounters.zeros(2), DigitalCounters(), **args)  # type: ignore[arg-type]


# ---------------------------------------------------------------- converter rules


def test_converter_table_points_exact() -> None:
    assert MODEL.adc(6) == 1.26 * pJ
    assert MODEL.adc(8) == V["adc_8b"] == 2e-3 / 1.28e9
    assert MODEL.adc(8) == pytest.approx(1.56 * pJ, rel=2e-3)  # landscape.md rounds 1.5625
    assert MODEL.adc(10) == V["adc_10b"] == 6.92e-3 / 1.5e9
    assert MODEL.adc(10) == pytest.approx(4.6 * pJ, rel=3e-3)  # landscape.md rounds 4.613
    assert MODEL.dac(1) == 3.9 * fJ
    # MNSIM DAC.py table (µW at 1 GS/s → fJ): 1, 2, 3, 4, 6, 8 bits
    for bits, femto in [(1, 3.9), (2, 7.8), (3, 15.6), (4, 31.2), (6, 124.8), (8, 499.2)]:
        assert MODEL.dac(bits) == pytest.approx(femto * fJ, rel=1e-12)


def test_adc_interpolation_and_extrapolation() -> None:
    assert MODEL.adc(7) == pytest.approx(math.sqrt(V["adc_6b"] * V["adc_8b"]), rel=1e-12)
    assert MODEL.adc(9) == pytest.approx(math.sqrt(V["adc_8b"] * V["adc_10b"]), rel=1e-12)
    for b in range(1, 6):  # Walden scaling below the table
        assert MODEL.adc(b) == pytest.approx(V["adc_6b"] * 2.0 ** (b - 6), rel=1e-12)
    for b in range(11, 17):  # and above
        assert MODEL.adc(b) == pytest.approx(V["adc_10b"] * 2.0 ** (b - 10), rel=1e-12)
    for b in range(0, 33):
        assert MODEL.adc(b) == pytest.approx(ref_adc(b), rel=1e-12)


def test_converters_monotone_and_ideal_is_nominal() -> None:
    dac = [MODEL.dac(b) for b in range(1, 33)]
    adc = [MODEL.adc(b) for b in range(1, 33)]
    assert all(a < b for a, b in itertools.pairwise(dac))
    assert all(a < b for a, b in itertools.pairwise(adc))
    assert IDEAL_CONVERTER_BITS == 8
    assert MODEL.dac(0) == MODEL.dac(8) and MODEL.adc(0) == MODEL.adc(8)


@pytest.mark.parametrize("bits", [-1, 33, True, 2.0, "8"])
def test_converter_bits_validated(bits: object) -> None:
    with pytest.raises(ValueError, match="bits"):
        MODEL.adc(bits)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bits"):
        MODEL.dac(bits)  # type: ignore[arg-type]


# ---------------------------------------------------------------- provenance


def test_default_constants_carry_provenance() -> None:
    assert set(REQUIRED) <= set(DEFAULT_CONSTANTS)
    assert {"adc_6b", "adc_8b", "adc_10b"} <= set(DEFAULT_CONSTANTS)
    for name, c in DEFAULT_CONSTANTS.items():
        assert c.name == name
        assert c.unit.strip() and c.unit.startswith("J"), name
        assert c.node.strip(), name
        assert c.source.strip(), name
        assert c.tag in {"src", "mem", "derived"}, name
        if c.tag == "derived":
            assert c.note.strip(), f"{name}: a derived constant must show its derivation"
        assert math.isfinite(c.value) and c.value > 0


def test_default_values_match_landscape() -> None:
    """The numbers of shared/landscape.md §3 (up to the rounding printed there)."""
    approx = {
        "read_cell_bit": 1.8 * fJ,
        "dac_1b": 3.9 * fJ,
        "write_pulse": 1.0 * pJ,
        "verify_read": 25 * fJ + 1.5625 * pJ,
        "mac_fp32": 4.6 * pJ,
        "elem_op": 0.9 * pJ,
        "rng_draw": 1.0 * pJ,
        "sram_byte": 1.25 * pJ,
        "gpu_train_flop": 6.6 * pJ,
        "gpu_infer_flop": 7.0 * pJ,
    }
    for name, expected in approx.items():
        assert V[name] == pytest.approx(expected, rel=0.02), name
    # ≤ 0.16 J per ResNet-50 training image on the A100 at TDP
    assert V["gpu_train_flop"] * 3 * 8.2e9 == pytest.approx(400 / 2470)


def test_format_constants() -> None:
    rows = format_constants(MODEL)
    assert len(CONSTANTS_HEADER) == 4
    assert [r[0] for r in rows] == list(DEFAULT_CONSTANTS)
    assert all(len(r) == 4 and all(r) for r in rows)
    by_name = {r[0]: r for r in rows}
    assert by_name["dac_1b"][1] == "3.9 fJ/conversion"
    assert by_name["write_pulse"][1] == "1 pJ/pulse"
    assert by_name["mac_fp32"][2] == "45 nm"
    assert by_name["dac_1b"][3].endswith("[src]")
    assert format_value(0.0) == "0 J"
    assert format_value(2.5e-6, "J/img") == "2.5 µJ/img"


def test_model_validates_constants() -> None:
    consts = dict(DEFAULT_CONSTANTS)
    del consts["write_pulse"]
    with pytest.raises(ValueError, match="write_pulse"):
        EnergyModel(consts)
    no_adc = {k: c for k, c in DEFAULT_CONSTANTS.items() if not k.startswith("adc_")}
    with pytest.raises(ValueError, match="ADC"):
        EnergyModel(no_adc)
    with pytest.raises(ValueError, match="tag"):
        Constant("x", 1.0, "J", "n/a", "s", "guess")
    with pytest.raises(ValueError, match="value"):
        Constant("x", -1.0, "J", "n/a", "s", "mem")
    with pytest.raises(ValueError, match="unit"):
        Constant("x", 1.0, "pJ", "n/a", "s", "mem")
    with pytest.raises(ValueError, match="source"):
        Constant("x", 1.0, "J", "n/a", " ", "mem")


# ---------------------------------------------------------------- overrides


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "chip.toml"
    p.write_text(text)
    return p


def test_toml_scalar_override(tmp_path: Path) -> None:
    p = write(tmp_path, '[chip]\ntile = "128x128"\n\n[energy]\nwrite_pulse = 2e-12\n')
    m = EnergyModel.from_toml(p)
    c = m.constants["write_pulse"]
    assert c.value == 2e-12
    assert c.unit == DEFAULT_CONSTANTS["write_pulse"].unit
    assert c.node == DEFAULT_CONSTANTS["write_pulse"].node
    assert c.source == f"user override ({p})"
    assert c.tag == "user"
    assert "replaces 1 pJ/pulse" in c.note
    assert m.constants["adc_8b"] == DEFAULT_CONSTANTS["adc_8b"]  # others untouched
    assert DEFAULT_CONSTANTS["write_pulse"].value == 1e-12  # defaults untouched
    tiles = TileCounters.zeros(1)
    tiles.write_pulses[0] = 10
    rep = m.breakdown(
        tiles,
        DigitalCounters(),
        dac_bits=1,
        adc_bits=8,
        samples=1,
        gpu_flops_per_sample=0,
        training=True,
    )
    assert rep.write == 10 * 2e-12
    assert rep.constants_used[0]["source"] == f"user override ({p})"


def test_toml_table_override_and_new_adc_point(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "[energy]\n"
        'write_pulse = {value = 5e-13, source = "my chip", node = "180 nm"}\n'
        'adc_4b = {value = 2e-13, source = "my ADC", tag = "mem"}\n'
        "adc_8b = 1\n",  # ints are accepted
    )
    m = EnergyModel.from_toml(p)
    c = m.constants["write_pulse"]
    assert (c.value, c.source, c.node, c.unit) == (5e-13, "my chip", "180 nm", "J/pulse")
    assert m.adc(4) == 2e-13 and m.constants["adc_4b"].tag == "mem"
    assert m.adc(5) == pytest.approx(math.sqrt(2e-13 * V["adc_6b"]))
    assert m.adc(8) == 1.0


def test_toml_without_energy_table_gives_defaults(tmp_path: Path) -> None:
    m = EnergyModel.from_toml(write(tmp_path, "[chip]\nadc_bits = 6\n"))
    assert m.constants == dict(DEFAULT_CONSTANTS)


@pytest.mark.parametrize(
    ("line", "key", "match"),
    [
        ("write_pules = 2e-12", "write_pules", "unknown"),
        ("write_pulse = -2e-12", "write_pulse", "> 0"),
        ("write_pulse = 0.0", "write_pulse", "> 0"),
        ("write_pulse = nan", "write_pulse", "finite"),
        ("write_pulse = inf", "write_pulse", "finite"),
        ('write_pulse = "2e-12"', "write_pulse", "number"),
        ("write_pulse = true", "write_pulse", "number"),
        ("write_pulse = [1e-12]", "write_pulse", "number"),
        ('write_pulse = {source = "x"}', "write_pulse", "value"),
        ("write_pulse = {value = 1e-12, colour = 'red'}", "write_pulse", "colour"),
        ("write_pulse = {value = 1e-12, unit = 'pJ/pulse'}", "write_pulse", "unit"),
        ("write_pulse = {value = 1e-12, tag = 'guess'}", "write_pulse", "tag"),
        ("write_pulse = {value = 1e-12, source = 3}", "write_pulse", "source"),
        ("adc_0b = 1e-12", "adc_0b", "unknown"),
    ],
)
def test_toml_bad_override(tmp_path: Path, line: str, key: str, match: str) -> None:
    p = write(tmp_path, f"[energy]\n{line}\n")
    with pytest.raises(ConfigError, match=match) as info:
        EnergyModel.from_toml(p)
    assert key in str(info.value) and str(p) in str(info.value)


def test_toml_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such"):
        EnergyModel.from_toml(tmp_path / "missing.toml")
    bad = write(tmp_path, "[energy\nwrite_pulse = 1\n")
    with pytest.raises(ConfigError, match=r"chip\.toml"):
        EnergyModel.from_toml(bad)
    not_table = write(tmp_path, "energy = 3\n")
    with pytest.raises(ConfigError, match=r"\[energy\] must be a table"):
        EnergyModel.from_toml(not_table)


def test_with_overrides_mapping() -> None:
    m = MODEL.with_overrides({"elem_op": 1e-12}, where="cli")
    assert m.constants["elem_op"].value == 1e-12
    assert m.constants["elem_op"].source == "user override (cli)"
    assert MODEL.constants["elem_op"].value == 0.9e-12
    with pytest.raises(ConfigError, match=r"cli.*bogus"):
        MODEL.with_overrides({"bogus": 1.0}, where="cli")
    with pytest.raises(ConfigError, match="must be a table"):
        MODEL.with_overrides([("elem_op", 1.0)], where="cli")  # type: ignore[arg-type]


# ---------------------------------------------------------------- counters


@given(tile_counters(n_tiles=4), tile_counters(n_tiles=4))
def test_tile_counters_add_copy_round_trip(a: TileCounters, b: TileCounters) -> None:
    d = a.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert TileCounters.from_dict(d, 4) == a
    c = a.copy()
    assert c == a
    c.add(b)
    for name in TileCounters.FIELDS:
        assert np.array_equal(getattr(c, name), getattr(a, name) + getattr(b, name))
        assert getattr(c, name) is not getattr(a, name)
    assert c.minus(a) == b
    assert c.totals() == {k: a.totals()[k] + b.totals()[k] for k in TileCounters.FIELDS}
    assert TileCounters.from_dict(c.to_dict(), 4) == c


def test_tile_counters_zeros_and_shape_checks() -> None:
    z = TileCounters.zeros(3)
    assert z.n_tiles == 3 and all(v == 0 for v in z.totals().values())
    assert all(getattr(z, n).dtype == np.int64 for n in TileCounters.FIELDS)
    with pytest.raises(ValueError, match="tile counts differ"):
        z.add(TileCounters.zeros(2))
    assert TileCounters.zeros(0).to_dict() == {n: [] for n in TileCounters.FIELDS}
    assert TileCounters.from_dict({n: [] for n in TileCounters.FIELDS}, 0).n_tiles == 0
    with pytest.raises(ValueError):
        TileCounters.zeros(-1)


@pytest.mark.parametrize(
    ("change", "field", "match"),
    [
        (lambda d: d.pop("adc"), "adc", "missing"),
        (lambda d: d.update(bogus=[0, 0]), "bogus", "unknown"),
        (lambda d: d.update(write_pulses=[1, 2, 3]), "write_pulses", "length"),
        (lambda d: d.update(mvm=[1.5, 2.0]), "mvm", "integers"),
        (lambda d: d.update(mvm_t=[True, False]), "mvm_t", "integers"),
        (lambda d: d.update(cell_reads=[-1, 0]), "cell_reads", "negative"),
        (lambda d: d.update(dac=[[1], [2]]), "dac", "1-D"),
    ],
)
def test_tile_counters_from_dict_validation(change: object, field: str, match: str) -> None:
    d = TileCounters.zeros(2).to_dict()
    change(d)  # type: ignore[operator]
    with pytest.raises(ValueError, match=match) as info:
        TileCounters.from_dict(d, 2)
    assert field in str(info.value)


@given(digital_counters, digital_counters)
def test_digital_counters_round_trip(a: DigitalCounters, b: DigitalCounters) -> None:
    d = a.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert DigitalCounters.from_dict(d) == a
    c = a.copy()
    c.add(b)
    assert c.macs == a.macs + b.macs and c.buffer_bytes == a.buffer_bytes + b.buffer_bytes
    assert a == DigitalCounters.from_dict(d)  # a unchanged
    assert c.minus(a) == b
    assert c.totals() == c.to_dict()


@pytest.mark.parametrize(
    ("d", "field"),
    [
        ({"macs": 1, "elem_ops": 0, "rng_draws": 0}, "buffer_bytes"),
        ({"macs": 1.0, "elem_ops": 0, "rng_draws": 0, "buffer_bytes": 0}, "macs"),
        ({"macs": 1, "elem_ops": -2, "rng_draws": 0, "buffer_bytes": 0}, "elem_ops"),
        ({"macs": 1, "elem_ops": 0, "rng_draws": True, "buffer_bytes": 0}, "rng_draws"),
        ({"macs": 1, "elem_ops": 0, "rng_draws": 0, "buffer_bytes": 0, "flops": 1}, "flops"),
    ],
)
def test_digital_counters_from_dict_validation(d: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DigitalCounters.from_dict(d)
