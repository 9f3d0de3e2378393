"""Utilisation report: hand-computed tile counts (landscape.md §4) and brute-force cell counts.

Hand computations, 256×256 tiles, 1 cell per weight (``signing="offset", weight_bits=0``):

ViT-B/16 (d = 768, MLP 3072, 12 blocks): per block qkv 768×2304 → 3·9 = 27, proj 768×768 → 9,
fc1 768×3072 → 3·12 = 36, fc2 3072×768 → 12·3 = 36: 108 tiles, ×12 = 1296; patch embedding
(16·16·3 = 768)×768 → 9; head 768×1000 → 3·4 = 12 (U = 768000/786432 = 97.66 %); total 1317.
With 8-bit weights on 2-bit cells and differential pairs, S = ceil(7/2) = 4 and D = 2: every
column count is ×8 and all of them (2304, 768, 3072, 1000) give whole multiples, so 8 × 1317.

ResNet-18/CIFAR layers: conv1 3×3×3→64 is 27×64 → 1 tile, U = 1728/65536 = 2.64 %;
3×3×64→64 is 576×64 → 3 row tiles, U = 36864/196608 = 18.75 %; with 8-bit weights on 2-bit cells
+ differential C_phys = 64·4·2 = 512 → 3×2 = 6 tiles, physical U = 294912/393216 = 75 %;
3×3×512→512 is 4608×512 → 18×2 = 36 tiles at 100 %; FC 512×10 has R = 512 input rows, which
need ceil(512/256) = 2 row tiles: 2 tiles, U = 5120/131072 = 3.9 % (the 3.9 % in landscape.md is
that of 2 tiles; a single tile would be 7.8 %).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
import onnx_builders as B
from test_mapping import _compile, net_case, tile_grids

from xbarc.backend import lower as backend
from xbarc.backend import report
from xbarc.frontend import load_onnx
from xbarc.ir import Graph
from xbarc.ir import ops as O
from xbarc.passes import ChipConfig, default_pipeline
from xbarc.passes.partition import crossbar_nodes, geometry

LOGICAL = ChipConfig(signing="offset", weight_bits=0, pack="none")
"""1 cell per weight: no slicing, no signing columns, no packing."""
MODELS = Path(__file__).resolve().parent.parent / "models"
SLICED = ChipConfig(signing="differential", weight_bits=8, cell_bits=2, pack="none")


def _program(path: Path, cfg: ChipConfig, *, batch: int = 1) -> backend.Program:
    g = load_onnx(path, batch=batch)
    default_pipeline(cfg)(g)
    return backend.lower(g, cfg)


def _by_kind(p: backend.Program) -> dict[str, list[report.LayerStats]]:
    kinds = {
        "qkv": ".attn.qkv",
        "proj": ".attn.proj",
        "fc1": ".mlp.fc1",
        "fc2": ".mlp.fc2",
        "patch": "patch_embed",
        "head": "head",
    }
    out: dict[str, list[report.LayerStats]] = {k: [] for k in kinds}
    for s in report.layer_stats(p):
        (kind,) = [k for k, key in kinds.items() if key in s.layer]
        out[kind].append(s)
    return out


VIT_LAYERS = {  # kind: (logical R×C, row tiles, column tiles)
    "qkv": ("768x2304", 3, 9),
    "proj": ("768x768", 3, 3),
    "fc1": ("768x3072", 3, 12),
    "fc2": ("3072x768", 12, 3),
    "patch": ("768x768", 3, 3),
    "head": ("768x1000", 3, 4),
}


def _check_vit(p: backend.Program, depth: int, gelu: str) -> None:
    kinds = _by_kind(p)
    for kind, (logical, rt, ct) in VIT_LAYERS.items():
        stats = kinds[kind]
        assert len(stats) == (depth if kind in ("qkv", "proj", "fc1", "fc2") else 1), kind
        for s in stats:
            assert (s.logical, s.physical, s.row_tiles, s.col_tiles) == (logical, logical, rt, ct)
            assert s.tiles == rt * ct and s.replicas == 1
            r, c = (int(v) for v in logical.split("x"))
            assert s.util_logical == pytest.approx(r * c / (rt * ct * 65536), abs=1e-12)
            # one MVM per token (197 tokens; 196 patches; the head sees the class token only)
            assert s.mvms == {"patch": 196, "head": 1}.get(kind, 197)
    head = kinds["head"][0]
    assert head.util_logical == pytest.approx(0.9766, abs=1e-4)
    tot = report.totals(p, report.layer_stats(p), report.tile_stats(p))
    assert tot["tiles"] == tot["tiles_unpacked"] == B.vit_tiles(depth=depth)
    assert tot["tiles"] == 108 * depth + 9 + 12
    per_block = 197 * (768 * 2304 + 768 * 768 + 2 * 768 * 3072)
    assert tot["crossbar_macs"] == depth * per_block + 196 * 768 * 768 + 768 * 1000
    assert tot["weights"] == depth * 7077888 + 768 * 768 + 768 * 1000
    # attention products, softmax, LayerNorm and GELU stay digital, with a cost
    digital: dict[str, list[dict[str, object]]] = {}
    for d in report.digital_stats(p):
        digital.setdefault(str(d["op"]), []).append(d)
    mm = digital["matmul"]
    assert len(mm) == 2 * depth
    assert all(d["macs"] == 12 * 197 * 197 * 64 for d in mm)  # QKᵀ and A·V: same count
    assert all(
        n.placement.unit == "digital"
        for n in p.graph.nodes  # type: ignore[union-attr]
        if isinstance(n.op, O.MatMul)
    )
    assert len(digital["softmax"]) == depth
    assert all(int(d["elem_ops"]) > 0 for d in digital["softmax"])  # type: ignore[call-overload]
    assert len(digital["layer_norm"]) == 2 * depth + 1
    assert all(int(d["elem_ops"]) > 0 for d in digital["layer_norm"])  # type: ignore[call-overload]
    act = "gelu" if gelu == "op" else "erf"
    assert len(digital[act]) == depth
    assert all(int(d["elem_ops"]) > 0 for d in digital[act])  # type: ignore[call-overload]
    assert tot["digital_macs"] == 2 * depth * 12 * 197 * 197 * 64
    assert 0 < tot["crossbar_mac_share"] < 1


@pytest.mark.parametrize(("depth", "gelu"), [(1, "op"), (2, "erf")])
def test_vit_b16_tile_counts_small_depth(tmp_path: Path, depth: int, gelu: str) -> None:
    path = B.vit(depth=depth, gelu=gelu).save(tmp_path / "vit.onnx", external=True)
    _check_vit(_program(path, LOGICAL), depth, gelu)
    # ×8 columns with 8-bit weights on 2-bit cells and differential pairs
    p = _program(path, SLICED)
    assert p.n_tiles == 8 * B.vit_tiles(depth=depth)
    for s in report.layer_stats(p):
        r, c = (int(v) for v in s.logical.split("x"))
        assert s.physical == f"{r}x{8 * c}"
        assert s.util_physical == pytest.approx(8 * s.util_logical)


def test_vit_b16_full_size_is_1317_tiles(tmp_path: Path) -> None:
    """The real ViT-B/16 (86 M weights, external data, memory-mapped by the frontend)."""
    spec = B.vit()
    assert spec.n_weights == 86_567_656 + 37  # ViT-B/16 parameters (+ the GELU/scale scalars)
    path = spec.save(tmp_path / "vit_b16.onnx", external=True)
    try:
        p = _program(path, LOGICAL)
        _check_vit(p, 12, "erf")
        assert p.n_tiles == 1317
        chip = report.totals(p, report.layer_stats(p), report.tile_stats(p))["chip_utilisation"]
        assert chip == pytest.approx(86292480 / (1317 * 65536))
    finally:  # 330 MiB of weights: do not leave them in pytest's kept temp folders
        Path(f"{path}.data").unlink()


@pytest.mark.parametrize(
    ("spec", "cfg", "want"),
    [
        # (logical, physical, tiles, U logical, U physical)
        (B.conv(3, 64, 3, hw=8, pad=1), LOGICAL, ("27x64", "27x64", 1, 27 * 64 / 65536, None)),
        (B.conv(64, 64, 3, hw=8, pad=1), LOGICAL, ("576x64", "576x64", 3, 0.1875, None)),
        (B.conv(64, 64, 3, hw=8, pad=1), SLICED, ("576x64", "576x512", 6, 0.09375, 0.75)),
        (B.conv(512, 512, 3, hw=4, pad=1), LOGICAL, ("4608x512", "4608x512", 36, 1.0, None)),
        (B.linear(512, 10), LOGICAL, ("512x10", "512x10", 2, 5120 / 131072, None)),
    ],
    ids=["conv1", "conv3x3_64", "conv3x3_64_8bit", "conv3x3_512", "fc_512x10"],
)
def test_resnet18_layer_tile_counts(
    tmp_path: Path, spec: B.Spec, cfg: ChipConfig, want: tuple[object, ...]
) -> None:
    logical, physical, tiles, u_log, u_phys = want
    path = spec.save(tmp_path / "layer.onnx")
    p = _program(path, cfg)
    (s,) = report.layer_stats(p)
    assert (s.logical, s.physical, s.tiles) == (logical, physical, tiles)
    assert s.util_logical == pytest.approx(u_log, abs=1e-12)
    assert s.util_physical == pytest.approx(u_phys if u_phys is not None else u_log, abs=1e-12)
    assert p.n_tiles == tiles
    if logical == "27x64":
        assert f"{s.util_logical:.1%}" == "2.6%"
    if logical == "512x10":
        assert (s.row_tiles, s.col_tiles) == (2, 1) and f"{s.util_logical:.1%}" == "3.9%"
        # packing cannot merge the two halves: they fire together (same MVM)
        assert _program(path, cfg.replace(pack="greedy")).n_tiles == 2


# ----------------------------------------------------------------------------- brute force


def _unpacked(net: B.LayerNet, cfg: ChipConfig) -> Graph:
    g, _ = _compile(net, cfg.replace(pack="none", replicate=1), None)
    return g


def _check_tiles_brute(p: backend.Program) -> None:
    """Per physical tile and chip totals against cell-by-cell boolean grids."""
    g = p.graph
    tr, tc = p.tile_shape
    grids = tile_grids(g) > 0
    layers = report.layer_stats(p)
    tiles = report.tile_stats(p)
    tot = report.totals(p, layers, tiles)
    assert [t.tile for t in tiles] == list(range(grids.shape[0]))
    for t, grid in zip(tiles, grids, strict=True):
        assert t.cells == int(grid.sum())
        assert t.used_rows == int(grid.any(axis=1).sum())
        assert t.used_cols == int(grid.any(axis=0).sum())
        assert t.util == pytest.approx(grid.sum() / (tr * tc))
    assert tot["tiles"] == grids.shape[0]
    assert tot["cells_used"] == int(grids.sum())
    assert tot["chip_utilisation"] == pytest.approx(grids.sum() / (grids.shape[0] * tr * tc))
    assert tot["tiles_unpacked"] == len(g.tiles)
    assert tot["weights"] == sum(int(np.prod(n.inputs[1].type.shape)) for n in crossbar_nodes(g))


def _check_layers_brute(p: backend.Program, alone: Graph) -> None:
    """Per layer against the layer's own tiles in ``alone`` (the same graph compiled without
    packing and replication), counted cell by cell."""
    tr, tc = p.tile_shape
    area = tr * tc
    nodes = {n.op.layer: n for n in crossbar_nodes(p.graph)}  # type: ignore[attr-defined]
    for s in report.layer_stats(p):
        geo = geometry(nodes[s.layer])
        rects = [t for t in alone.tiles if t.layer == s.layer]
        ids = sorted({t.tile for t in rects})
        used = np.zeros((len(ids), tr, tc), np.bool_)
        logical = np.zeros_like(used)
        for t in rects:
            k = ids.index(t.tile)
            used[k, t.trow : t.trow + t.rows, t.tcol : t.tcol + t.cols] = True
            pcol = np.arange(t.col0, t.col0 + t.cols)
            first = (pcol % (geo.slices * geo.per_weight)) == 0  # slice 0, G+ of each weight
            logical[k, t.trow : t.trow + t.rows, t.tcol : t.tcol + t.cols] = first[None, :]
        assert s.tiles == len(ids) * s.replicas
        assert s.util_physical == pytest.approx(used.sum() / (len(ids) * area))
        assert s.util_logical == pytest.approx(logical.sum() / (len(ids) * area))
        assert logical.sum() == geo.groups * geo.rows * geo.cols
        g0 = [t for t in rects if t.group == 0]
        assert (s.row_tiles, s.col_tiles) == (len({t.row0 for t in g0}), len({t.col0 for t in g0}))
        # converter counts per MVM: one DAC per used row, one ADC per weight column and slice
        cells = sum(t.rows * t.cols for t in rects)
        assert s.cell_reads == s.mvms // geo.groups * cells
        assert s.dac == s.mvms // geo.groups * sum(t.rows for t in rects)
        assert s.adc == s.mvms // geo.groups * sum(t.cols // geo.per_weight for t in rects)


@given(net_case(), st.sampled_from([None, 1.5]))
def test_utilisation_equals_a_brute_force_count(
    case: tuple[B.LayerNet, ChipConfig], slack: float | None
) -> None:
    net, cfg = case
    g, _ = _compile(net, cfg, slack)
    p = backend.lower(g, cfg.replace(tile_budget=0))
    _check_tiles_brute(p)
    _check_layers_brute(p, _unpacked(net, cfg))
    assert report.totals(p, report.layer_stats(p), [])["weights"] == sum(
        w.size for w in net.weights.values()
    )


@pytest.mark.parametrize("name", ["dwcnn.onnx", "resnet8.onnx", "lenet.dynamo.onnx"])
def test_utilisation_brute_force_on_models(name: str) -> None:
    """Grouped (depthwise) convolutions, residual branches, bit slices and replicas."""
    path = MODELS / name
    for cfg in (
        ChipConfig(tile_rows=64, tile_cols=32),
        ChipConfig(
            tile_rows=40, tile_cols=24, weight_bits=6, cell_bits=2, signing="offset", replicate=3
        ),
        ChipConfig(tile_rows=96, tile_cols=64, weight_bits=8, replicate=2),
    ):
        p = _program(path, cfg)
        _check_tiles_brute(p)
        alone = load_onnx(path, batch=1)
        default_pipeline(cfg.replace(pack="none", replicate=1, tile_budget=0))(alone)
        _check_layers_brute(p, alone)


def test_report_build_is_json_and_csv(tmp_path: Path) -> None:
    cfg = ChipConfig(tile_rows=64, tile_cols=32, replicate=2)
    p = _program(MODELS / "resnet8.onnx", cfg)
    rep = report.build(p)
    again = json.loads(json.dumps(rep))
    assert again == rep
    assert rep["config_hash"] == cfg.hash()
    assert len(rep["layers"]) == len(p.layers) == 10
    assert len(rep["tiles"]) == rep["totals"]["tiles"] == p.n_tiles
    assert rep["totals"]["tiles_unpacked"] == sum(s["tiles"] for s in rep["layers"])
    assert max(s["replicas"] for s in rep["layers"]) == 2
    rows = list(csv.DictReader(io.StringIO(report.to_csv(rep))))
    assert [r["layer"] for r in rows] == [s["layer"] for s in rep["layers"]]
    trows = list(csv.DictReader(io.StringIO(report.tiles_csv(rep))))
    assert len(trows) == p.n_tiles
    assert math.isclose(
        sum(float(t["cells"]) for t in trows) / (p.n_tiles * 64 * 32),
        rep["totals"]["chip_utilisation"],
    )
    files = report.write_files(rep, tmp_path / "m.mapped.bin")
    assert [f.name for f in files] == [
        "m.mapped.report.json",
        "m.mapped.report.csv",
        "m.mapped.tiles.csv",
    ]
    assert json.loads(files[0].read_text()) == rep
