"""Property tests of the mapping: partition → tiles → conductances and back; packing; replication.

Each property is checked against an independent brute-force model (cell-by-cell grids), never
against the formula under test.
"""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

sys.path.insert(0, str(Path(__file__).resolve().parent))
import onnx_builders as B

from xbarc.backend.conductance import (
    conductances,
    effective_weights,
    gather,
    join_planes,
    map_weights,
    plan_layer,
    scatter,
    split_planes,
    tile_rects,
)
from xbarc.errors import VerifyError
from xbarc.ir import Graph
from xbarc.ir import ops as O
from xbarc.ir.core import Node, make_const
from xbarc.ir.types import TensorType, Tile
from xbarc.passes import (
    ChipConfig,
    LowerToMVM,
    Pack,
    PartitionTiles,
    PassManager,
    SliceAndSign,
    default_passes,
)
from xbarc.passes.lower_mvm import batch_of, mvm_positions
from xbarc.passes.pack import concurrent_layers
from xbarc.passes.partition import check_tiles, crossbar_nodes, geometry

F32_HALF_ULP = 2.0**-24
"""Relative rounding error of one float32 conductance."""


def mvm_graph(w: np.ndarray) -> Graph:
    """One crossbar layer ``L`` with weight ``w[G, R, C]`` (linear for G = 1, grouped 1x1 conv
    otherwise)."""
    groups, rows, _ = w.shape
    g = Graph("layer")
    if groups == 1:
        x = g.add_input(TensorType((2, rows)), "x")
        op = O.XbarMVM(layer="L", kind="linear")
    else:
        x = g.add_input(TensorType((1, groups * rows, 1, 1)), "x")
        op = O.XbarMVM(
            layer="L",
            kind="conv",
            kernel=(1, 1),
            strides=(1, 1),
            pads=(0, 0, 0, 0),
            dilations=(1, 1),
        )
    n = g.add(op, [x, make_const(w, "w", param=True)], "L")
    g.outputs = [n.outputs[0]]
    g.verify()
    return g


def map_layer(n: Node, cfg: ChipConfig) -> tuple[object, np.ndarray]:
    """``(LayerMap, phys)`` of a crossbar node with the precision the passes set on it."""
    op = n.op
    assert isinstance(op, O.XbarMVM) and n.inputs[1].const is not None
    return map_weights(
        n.inputs[1].const,
        layer=op.layer,
        kind=op.kind,
        cfg=cfg,
        weight_bits=op.weight_bits,
        cell_bits=op.cell_bits,
        signing=op.signing,
        slices=op.slices,
    )


def tile_array(g: Graph) -> np.ndarray:
    assert g.tile_shape is not None
    n = len({t.tile for t in g.tiles})
    return np.full((n, *g.tile_shape), -1.0, np.float32)


def cover_grids(g: Graph) -> dict[tuple[str, int, int], np.ndarray]:
    """Per (layer, group, replica): how often each physical cell is covered (brute force)."""
    grids = {}
    for n in crossbar_nodes(g):
        geo = geometry(n)
        for grp in range(geo.groups):
            for rep in range(n.op.replicas):  # type: ignore[attr-defined]
                grids[(geo.layer, grp, rep)] = np.zeros((geo.rows, geo.phys_cols), np.int32)
    for t in g.tiles:
        grids[(t.layer, t.group, t.replica)][
            t.row0 : t.row0 + t.rows, t.col0 : t.col0 + t.cols
        ] += 1
    return grids


def tile_grids(g: Graph) -> np.ndarray:
    """Per physical tile: how many rectangles cover each cell."""
    assert g.tile_shape is not None
    n = len({t.tile for t in g.tiles})
    grid = np.zeros((n, *g.tile_shape), np.int32)
    for t in g.tiles:
        grid[t.tile, t.trow : t.trow + t.rows, t.tcol : t.tcol + t.cols] += 1
    return grid


# ----------------------------------------------------------------------------- one layer


@st.composite
def layer_case(draw: st.DrawFn) -> tuple[np.ndarray, ChipConfig]:
    signing = draw(st.sampled_from(["differential", "offset"]))
    weight_bits = draw(st.sampled_from([0, *range(2, 17)]))
    cell_bits = draw(st.integers(1, 8))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 33)), draw(st.integers(1, 11)))
    scale = draw(st.sampled_from([1.0, 1e-4, 1e3]))
    w = draw(arrays(np.float32, shape, elements=st.floats(-4, 4, width=32)))
    w = (w * np.float32(scale)).astype(np.float32)
    tile_rows = draw(st.integers(1, 40))
    tile_cols = draw(st.integers(2 if signing == "differential" else 1, 40))
    cfg = ChipConfig(
        tile_rows=tile_rows,
        tile_cols=tile_cols,
        weight_bits=weight_bits,
        cell_bits=cell_bits,
        signing=signing,
        pack="none",
    )
    return w, cfg


def _partition(w: np.ndarray, cfg: ChipConfig) -> Graph:
    g = mvm_graph(w)
    PassManager(
        [
            LowerToMVM(),
            SliceAndSign(weight_bits=cfg.weight_bits, cell_bits=cfg.cell_bits, signing=cfg.signing),
            PartitionTiles(rows=cfg.tile_rows, cols=cfg.tile_cols),
        ]
    )(g)
    return g


@given(layer_case())
def test_partition_scatter_gather_reassembles_the_layer(
    case: tuple[np.ndarray, ChipConfig],
) -> None:
    w, cfg = case
    note(f"w{w.shape} {cfg.tile} bits={cfg.weight_bits}/{cfg.cell_bits} {cfg.signing}")
    g = _partition(w, cfg)
    (n,) = crossbar_nodes(g)
    op = n.op
    assert isinstance(op, O.XbarMVM)
    assert op.slices == cfg.slices
    geo = geometry(n)
    d = cfg.columns_per_weight
    assert geo.phys_cols == w.shape[2] * cfg.slices * d

    # layout: every physical cell of the layer exactly once; pairs never straddle tiles
    check_tiles(g)
    grids = cover_grids(g)
    assert len(grids) == w.shape[0]
    assert all((grid == 1).all() for grid in grids.values())
    for t in g.tiles:
        assert 1 <= t.rows <= cfg.tile_rows and 1 <= t.cols <= cfg.tile_cols
        assert t.col0 % d == 0 and t.cols % d == 0, "a differential pair straddles two tiles"
    assert len(g.tiles) == w.shape[0] * math.ceil(w.shape[1] / cfg.tile_rows) * math.ceil(
        geo.phys_cols / (cfg.tile_cols // d * d)
    )

    # values: conductances in the window, scatter → gather is bit-exact
    lm, phys = map_layer(n, cfg)
    assert phys.dtype == np.float32 and phys.shape == (w.shape[0], w.shape[1], geo.phys_cols)
    dev = cfg.device
    assert phys.min() >= np.float32(dev.g_min) and phys.max() <= np.float32(dev.g_max)
    tiles = tile_array(g)
    scatter(phys, tile_rects(g.tiles, "L"), tiles)
    used = tile_grids(g) > 0
    assert (tiles[used] >= dev.g_min).all() and (tiles[~used] == -1).all()
    back = gather(tiles, tile_rects(g.tiles, "L"), phys.shape)
    assert back.tobytes() == phys.tobytes()
    gp, gn = split_planes(back, lm)
    assert (gn is None) == (cfg.signing == "offset")
    assert join_planes(gp, gn, lm).tobytes() == phys.tobytes()

    # the effective weights are the originals within half a quantisation step
    w_eff = effective_weights(gp, gn, lm)
    err = np.abs(w_eff - w.astype(np.float64))
    wmax = float(np.abs(w).max())
    rounding = sum(abs(s) for s in lm.slice_w) * d * F32_HALF_ULP * dev.g_max * 1.01
    if lm.weight_bits == 0:
        assert lm.step == 0.0
        assert err.max(initial=0.0) <= max(1e-6 * wmax, rounding), (err.max(), wmax)
    else:
        assert lm.step > 0
        tol = lm.step / 2 * (1 + 1e-9) + rounding
        assert err.max(initial=0.0) <= tol, (err.max(), lm.step)
        q = w_eff / lm.step
        assert np.abs(q - np.rint(q)).max(initial=0.0) <= rounding / lm.step + 1e-9
        # every cell holds one of the 2^cell_bits levels
        dg = (dev.g_max - dev.g_min) / ((1 << cfg.cell_bits) - 1)
        levels = (phys.astype(np.float64) - dev.g_min) / dg
        assert np.abs(levels - np.rint(levels)).max() <= 1e-4
    assert lm.clipped == 0


def test_check_tiles_catches_bad_covers() -> None:
    w = np.ones((1, 8, 4), np.float32)
    g = _partition(w, ChipConfig(tile_rows=4, tile_cols=4, signing="offset"))
    t0, t1 = g.tiles
    check_tiles(g)
    bad = {
        "twice": [t0, Tile(1, "L", 0, 0, 0, 0, 4, 4)],  # same area, rows 4..8 uncovered
        "outside": [t0, Tile(1, "L", 0, 0, 6, 0, 4, 4)],
        "not covered": [t0],
        "exceeds the tile": [t0, Tile(1, "L", 0, 0, 4, 0, 4, 4, trow=1)],
        "overlap": [t0, Tile(0, "L", 0, 0, 4, 0, 4, 4)],
        "not mapped": [t0, t1, Tile(2, "M", 0, 0, 0, 0, 4, 4)],
        "replica 1": [t0, t1, Tile(2, "L", 0, 1, 0, 0, 4, 4)],
        "0..n-1": [t0, Tile(2, "L", 0, 0, 4, 0, 4, 4)],
        "empty": [t0, t1, Tile(2, "L", 0, 0, 0, 0, 0, 4)],
    }
    for why, tiles in bad.items():
        g.tiles = tiles
        with pytest.raises(VerifyError, match=why):
            check_tiles(g)


def test_clipping_with_a_fixed_weight_scale() -> None:
    """With ``weight_scale`` set, weights beyond the window saturate and are counted."""
    w = np.array([[[0.5, -0.5, 2.0, -3.0]]], np.float32)
    for signing, limit in (("differential", 1.0), ("offset", 0.5)):
        cfg = ChipConfig(weight_scale=1.0 / 80.0, signing=signing)  # window 80 µS → ±1 (±0.5)
        lm = plan_layer(
            w,
            layer="L",
            kind="linear",
            cfg=cfg,
            weight_bits=0,
            cell_bits=0,
            signing=signing,
            slices=1,
        )
        assert lm.clipped == 2  # 2.0 and -3.0
        gp, gn = split_planes(conductances(w, lm, cfg), lm)
        w_eff = effective_weights(gp, gn, lm)[0, 0]
        np.testing.assert_allclose(w_eff, np.clip(w[0, 0], -limit, limit), atol=1e-5)
    cfg = ChipConfig(weight_scale=0.01, weight_bits=4, cell_bits=2)
    lm = plan_layer(
        w,
        layer="L",
        kind="linear",
        cfg=cfg,
        weight_bits=4,
        cell_bits=2,
        signing="differential",
        slices=2,
    )
    step = 0.01 * 80 / 3
    assert lm.step == pytest.approx(step)
    assert lm.clipped == int((np.abs(w) > 7.5 * step).sum())
    gp, gn = split_planes(conductances(w, lm, cfg), lm)
    np.testing.assert_allclose(
        effective_weights(gp, gn, lm)[0, 0],
        np.clip(np.rint(w[0, 0] / step), -7, 7) * step,
        atol=1e-6,
    )


def test_slice_counts_match_the_landscape_formula() -> None:
    """S = ceil((B_w - s)/b_c), s = 1 with a differential pair (landscape.md §4.2)."""
    for bits in range(2, 17):
        for cell in range(1, 9):
            for signing, s in (("differential", 1), ("offset", 0)):
                p = SliceAndSign(weight_bits=bits, cell_bits=cell, signing=signing)
                want = max(1, math.ceil((bits - s) / cell))
                assert p.slices() == want
                assert ChipConfig(weight_bits=bits, cell_bits=cell, signing=signing).slices == want


# ----------------------------------------------------------------------------- nets


@st.composite
def net_case(draw: st.DrawFn) -> tuple[B.LayerNet, ChipConfig]:
    width = st.integers(1, 40)
    branch = st.lists(st.tuples(width, st.integers(0, 2)), min_size=1, max_size=2)
    stage = st.lists(branch, min_size=1, max_size=3)
    stages = draw(st.lists(stage, min_size=1, max_size=4))
    net = B.layer_net(
        stages,
        d0=draw(width),
        tokens=draw(st.sampled_from([1, 2, 3, 4, 6, 8, 12])),
        seed=draw(st.integers(0, 2**16)),
    )
    signing = draw(st.sampled_from(["differential", "offset"]))
    cfg = ChipConfig(
        tile_rows=draw(st.integers(1, 48)),
        tile_cols=draw(st.integers(2 if signing == "differential" else 1, 48)),
        weight_bits=draw(st.sampled_from([0, 2, 4, 8])),
        cell_bits=draw(st.integers(1, 4)),
        signing=signing,
        pack=draw(st.sampled_from(["none", "greedy"])),
        replicate=draw(st.sampled_from([1, 1, 2, 4])),
    )
    return net, cfg


def _compile(net: B.LayerNet, cfg: ChipConfig, budget_slack: float | None) -> tuple[Graph, int]:
    """Run the default passes; with ``budget_slack`` the tile budget is that multiple of the
    unreplicated rectangle count. Returns the graph and that count."""
    g = net.graph.clone()  # type: ignore[attr-defined]
    passes = default_passes(cfg.replace(replicate=1, tile_budget=0))
    PassManager(passes[:4])(g)
    base = len(g.tiles)
    if budget_slack is not None:
        cfg = cfg.replace(tile_budget=max(1, int(base * budget_slack)))
    PassManager(default_passes(cfg)[4:])(g)
    return g, base


@given(net_case())
def test_packing_never_mixes_layers_that_fire_together(
    case: tuple[B.LayerNet, ChipConfig],
) -> None:
    net, cfg = case
    g, _ = _compile(net, cfg, None)
    pairs = concurrent_layers(g)
    assert pairs == net.parallel, "concurrent_layers disagrees with the net's branches"
    check_tiles(g)
    # no cell holds two rectangles
    assert tile_grids(g).max() <= 1
    by_tile: dict[int, list[Tile]] = {}
    for t in g.tiles:
        by_tile.setdefault(t.tile, []).append(t)
    if cfg.pack == "none":
        assert all(len(v) == 1 for v in by_tile.values())
    for content in by_tile.values():
        for i, a in enumerate(content):
            ra = set(range(a.trow, a.trow + a.rows))
            ca = set(range(a.tcol, a.tcol + a.cols))
            for b in content[i + 1 :]:
                if a.layer == b.layer or frozenset((a.layer, b.layer)) in net.parallel:
                    assert ra.isdisjoint(range(b.trow, b.trow + b.rows)), (a, b)
                    assert ca.isdisjoint(range(b.tcol, b.tcol + b.cols)), (a, b)
    # every layer (every replica) reads back bit-exactly from the shared tile array
    tiles = tile_array(g)
    phys = {}
    for n in crossbar_nodes(g):
        _, p = map_layer(n, cfg)
        phys[n.op.layer] = p  # type: ignore[attr-defined]
        scatter(p, [t for t in g.tiles if t.layer == n.op.layer], tiles)  # type: ignore[attr-defined]
    for n in crossbar_nodes(g):
        layer = n.op.layer  # type: ignore[attr-defined]
        for rep in range(n.op.replicas):  # type: ignore[attr-defined]
            got = gather(tiles, tile_rects(g.tiles, layer, rep), phys[layer].shape)
            assert got.tobytes() == phys[layer].tobytes(), (layer, rep)
    assert len({t.tile for t in g.tiles}) <= len(g.tiles)


def _loads(g: Graph) -> dict[str, int]:
    b = batch_of(g)
    return {
        n.op.layer: mvm_positions(n) * n.inputs[1].type.shape[0] // b  # type: ignore[attr-defined]
        for n in crossbar_nodes(g)
    }


@given(net_case(), st.sampled_from([None, 1.0, 1.3, 2.0, 4.0]))
def test_replication_respects_the_budget_and_the_load(
    case: tuple[B.LayerNet, ChipConfig], slack: float | None
) -> None:
    net, cfg = case
    g, base = _compile(net, cfg, slack)
    check_tiles(g)
    load = _loads(g)
    reps = {n.op.layer: n.op.replicas for n in crossbar_nodes(g)}  # type: ignore[attr-defined]
    size = {k: sum(1 for t in g.tiles if t.layer == k and t.replica == 0) for k in load}
    note(f"load={load} reps={reps} size={size} base={base}")
    assert len(g.tiles) == sum(size[k] * reps[k] for k in load)
    cap = cfg.replicate if cfg.replicate > 1 else None
    if cap:
        assert max(reps.values()) <= cap
    if slack is not None:
        budget = max(1, int(base * slack))
        assert len(g.tiles) <= budget
        assert len({t.tile for t in g.tiles}) <= budget
    elif cap is None:
        assert set(reps.values()) == {1}
    else:  # documented rule without a budget: r = min(cap, ceil(load / min load))
        low = min(load.values())
        assert reps == {k: min(cap, math.ceil(v / low)) for k, v in load.items()}
    # hotter layers never get fewer copies; the hottest gets the most
    hot = max(load.values())
    assert max(reps[k] for k in load if load[k] == hot) == max(reps.values())
    for a in load:
        for b in load:
            if load[a] > load[b]:
                assert reps[a] >= reps[b], (a, b)
    if slack is not None and (cap is None or cap > 1):
        # greedy stop: the bottleneck could not take one more copy
        worst = max(load[k] / reps[k] for k in load)
        stuck = [
            k
            for k in load
            if load[k] / reps[k] == worst
            and (reps[k] >= (cap or 1 << 30) or len(g.tiles) + size[k] > budget)
        ]
        assert stuck, "replication stopped although the bottleneck layer fits once more"


def test_pack_greedy_shares_tiles_of_sequential_layers() -> None:
    """Two small sequential layers share one tile; two parallel ones need disjoint rows and
    columns (so they fit together only diagonally)."""
    chain = B.layer_net([[[(8, 0)]], [[(8, 0)]]], d0=8, tokens=1)
    fork = B.layer_net([[[(8, 0)], [(8, 0)]]], d0=8, tokens=1)
    cfg = ChipConfig(tile_rows=16, tile_cols=16, signing="offset", pack="greedy")
    g, _ = _compile(chain, cfg, None)
    assert len({t.tile for t in g.tiles}) == 1
    g, _ = _compile(fork, cfg, None)
    (a, b) = g.tiles
    assert a.tile == b.tile and {(a.trow, a.tcol), (b.trow, b.tcol)} == {(0, 0), (8, 8)}
    g, _ = _compile(fork, cfg.replace(tile_rows=12), None)
    assert len({t.tile for t in g.tiles}) == 2  # no diagonal room


def test_pack_respects_the_budget() -> None:
    net = B.layer_net([[[(8, 0)]], [[(8, 0)]], [[(8, 0)]]], d0=8, tokens=1)
    cfg = ChipConfig(tile_rows=24, tile_cols=8, signing="offset", pack="greedy")
    g, base = _compile(net, cfg, None)
    assert base == 3 and len({t.tile for t in g.tiles}) == 1
    g = net.graph.clone()  # type: ignore[attr-defined]
    PassManager(default_passes(cfg.replace(pack="none"))[:4])(g)
    assert Pack(mode="greedy", tile_budget=1).run(g)
    Pack(mode="greedy", tile_budget=1).ensures(g)


def test_replication_rule_without_a_budget() -> None:
    """r_l = min(max_replicas, ceil(MVMs_l / min MVMs)): loads 12, 6, 4 → 3, 2, 1 copies."""
    net = B.layer_net([[[(8, 0)]], [[(8, 1)], [(8, 2)]]], d0=8, tokens=12)
    g, base = _compile(
        net, ChipConfig(tile_rows=8, tile_cols=8, signing="offset", replicate=4), None
    )
    load = _loads(g)
    assert load == {"s0b0l0": 12, "s1b0l0": 6, "s1b1l0": 4}
    reps = {n.op.layer: n.op.replicas for n in crossbar_nodes(g)}  # type: ignore[attr-defined]
    assert reps == {"s0b0l0": 3, "s1b0l0": 2, "s1b1l0": 1}
    # extra copies: s0b0l0 (8 rows, 1 rect) twice, s1b0l0 (16 rows, 2 rects) once
    assert len(g.tiles) == base + 2 * 1 + 1 * 2
    g, _ = _compile(net, ChipConfig(tile_rows=8, tile_cols=8, signing="offset", replicate=2), None)
    reps = {n.op.layer: n.op.replicas for n in crossbar_nodes(g)}  # type: ignore[attr-defined]
    assert reps == {"s0b0l0": 2, "s1b0l0": 2, "s1b1l0": 1}


def _plain_find(t: Any, bins: list[list[Any]], tr: int, tc: int, pairs: set[frozenset[str]]) -> Any:
    """The packing search without its caches and filters: every candidate corner of every
    bin in order, tested with ``compatible``."""
    import dataclasses

    from xbarc.passes.pack import compatible

    for k, content in enumerate(bins):
        rows = sorted({0, *(o.trow + o.rows for o in content)})
        cols = sorted({0, *(o.tcol + o.cols for o in content)})
        for r in rows:
            for c in cols:
                if r + t.rows > tr or c + t.cols > tc:
                    continue
                cand = dataclasses.replace(t, tile=k, trow=r, tcol=c)
                if compatible(cand, content, pairs):
                    return cand
    return None


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 60),
    layers=st.integers(1, 4),
    tr=st.sampled_from([8, 16, 24]),
    tc=st.sampled_from([8, 16]),
)
def test_pack_search_equals_the_plain_search(
    seed: int, n: int, layers: int, tr: int, tc: int
) -> None:
    """The pack pass's cached, filtered search places every rectangle exactly where the plain
    first-fit search over all candidate corners does."""
    import dataclasses

    from xbarc.ir.types import Tile
    from xbarc.passes.pack import _Spans

    rng = np.random.default_rng(seed)
    names = [f"l{i}" for i in range(layers)]
    pairs = {frozenset(p) for p in itertools.combinations(names, 2) if rng.random() < 0.5}
    rects = [
        Tile(tile=i, layer=str(rng.choice(names)), group=0, replica=0, row0=0, col0=0,
             rows=int(rng.integers(1, tr + 1)), cols=int(rng.integers(1, tc + 1)))
        for i in range(n)
    ]  # fmt: skip
    spans = _Spans(pairs)
    fast: list[list[Tile]] = []
    slow: list[list[Tile]] = []
    free: list[int] = []
    for t in rects:
        a = Pack._find(t, fast, tr, tc, pairs, free, spans)
        b = _plain_find(t, slow, tr, tc, pairs)
        assert a == b
        if a is None:
            a = b = dataclasses.replace(t, tile=len(fast), trow=0, tcol=0)
            fast.append([a])
            slow.append([b])
            free.append(tr * tc)
        else:
            fast[a.tile].append(a)
            slow[a.tile].append(a)
        spans.changed(a.tile)
        free[a.tile] -= a.rows * a.cols


def test_pack_handles_thousands_of_depthwise_groups() -> None:
    """A depthwise layer is one small rectangle per group, all firing together (a diagonal
    arrangement); EfficientNet-B0 has ~9000. The search must stay near-linear (it did not:
    an export of it compiled for over 15 minutes)."""
    from xbarc.ir.types import Tile

    rects = [
        Tile(tile=i, layer=f"dw{i // 500}", group=i % 500, replica=0, row0=0, col0=0, rows=9,
             cols=2)
        for i in range(3000)
    ]  # fmt: skip
    g = Graph("dw")
    g.tile_shape = (256, 256)
    g.tiles = rects
    assert Pack(mode="greedy").run(g)
    per_tile: dict[int, list[Tile]] = {}
    for t in g.tiles:
        per_tile.setdefault(t.tile, []).append(t)
    assert len(per_tile) < 3000 // 20  # ≥ 28 per tile on the diagonal, any layer mix
    Pack(mode="greedy").ensures(g)
