"""Tile-utilisation report: per layer, per tile and chip totals.

Definitions (landscape.md §4; NeuroSim/PIMCOMP conventions), per group of a layer with
``R`` rows, ``C`` logical and ``C_phys = C·S·D`` physical columns on ``Xr × Xc`` tiles:

* ``T = ceil(R/Xr) · ceil(C_phys/Xc') · groups`` tiles per replica (``Xc'`` = whole pairs);
* logical utilisation ``R·C·groups / (T·Xr·Xc)``, physical ``R·C_phys·groups / (T·Xr·Xc)``;
* per MVM and rectangle of ``rows × cols``: ``rows`` DAC conversions, ``cols / D`` ADC
  conversions (one per differential pair or offset column and slice), ``rows·cols`` cells read,
  each times the input cycles (1, or ``dac_bits`` bit-serial);
* chip utilisation = cells used / (tiles allocated · Xr · Xc).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xbarc.backend.lower import Program
from xbarc.ir import ops as O
from xbarc.ir.core import Node
from xbarc.ir.types import Tile
from xbarc.passes.lower_mvm import batch_of, mvm_positions
from xbarc.passes.partition import crossbar_nodes, geometry


@dataclass(frozen=True)
class LayerStats:
    """One crossbar layer of the report."""

    layer: str
    op: str
    groups: int
    logical: str
    """``R×C`` of one group."""
    physical: str
    """``R×C_phys`` of one group."""
    row_tiles: int
    col_tiles: int
    replicas: int
    tiles: int
    """Tiles the layer needs on its own (all groups and replicas)."""
    util_logical: float
    util_physical: float
    mvms: int
    """MVMs per inference (input vectors applied, all groups)."""
    dac: int
    adc: int
    cell_reads: int
    digital_ops: int
    """Digital element ops per inference (bias, partial-sum accumulation)."""
    macs: int
    """Crossbar MACs per inference."""
    clipped: int


@dataclass(frozen=True)
class TileStats:
    """One physical tile of the report."""

    tile: int
    occupants: str
    used_rows: int
    used_cols: int
    cells: int
    util: float


def input_cycles(p: Program) -> int:
    """Input cycles per MVM: 1 (parallel DAC) or ``dac_bits`` (bit-serial)."""
    cfg = p.config
    return max(1, cfg.dac_bits) if cfg.input_mode == "bit-serial" else 1


def rect_counts(rect: Tile, per_weight: int, cycles: int) -> tuple[int, int, int]:
    """(DAC conversions, ADC conversions, cells read) of one MVM on one rectangle."""
    return (rect.rows * cycles, (rect.cols // per_weight) * cycles, rect.rows * rect.cols * cycles)


def _node_stats(p: Program, n: Node, rects: list[Tile]) -> LayerStats:
    op = n.op
    assert isinstance(op, O.XbarMVM)
    geo = geometry(n)
    tr, tc = p.tile_shape
    rt, ct = geo.blocks(tr, tc)
    per_rep = rt * ct * geo.groups
    area = per_rep * tr * tc
    batch = batch_of(p.graph)
    pos = mvm_positions(n) // batch
    cycles = input_cycles(p)
    dac = adc = cells = 0
    for r in rects:
        if r.replica == 0:
            d, a, c = rect_counts(r, geo.per_weight, cycles)
            dac, adc, cells = dac + d, adc + a, cells + c
    place = n.placement
    return LayerStats(
        layer=geo.layer,
        op=f"{op.kind}",
        groups=geo.groups,
        logical=f"{geo.rows}x{geo.cols}",
        physical=f"{geo.rows}x{geo.phys_cols}",
        row_tiles=rt,
        col_tiles=ct,
        replicas=op.replicas,
        tiles=per_rep * op.replicas,
        util_logical=geo.rows * geo.cols * geo.groups / area,
        util_physical=geo.rows * geo.phys_cols * geo.groups / area,
        mvms=pos * geo.groups,
        dac=pos * dac,
        adc=pos * adc,
        cell_reads=pos * cells,
        digital_ops=place.elem_ops if place else 0,
        macs=place.macs if place else 0,
        clipped=p.layers[geo.layer].clipped if geo.layer in p.layers else 0,
    )


def layer_stats(p: Program) -> list[LayerStats]:
    """Per crossbar layer, in program order."""
    by_layer: dict[str, list[Tile]] = {}
    for t in p.graph.tiles:
        by_layer.setdefault(t.layer, []).append(t)
    return [_node_stats(p, n, by_layer.get(n.op.layer, [])) for n in crossbar_nodes(p.graph)]  # type: ignore[attr-defined]


def tile_stats(p: Program) -> list[TileStats]:
    """Per physical tile: occupants, used rows/columns (union), cells used, utilisation."""
    tr, tc = p.tile_shape
    by_tile: dict[int, list[Tile]] = {}
    for t in p.graph.tiles:
        by_tile.setdefault(t.tile, []).append(t)
    out = []
    for k in sorted(by_tile):
        rects = by_tile[k]
        rows = _union((r.trow, r.rows) for r in rects)
        cols = _union((r.tcol, r.cols) for r in rects)
        cells = sum(r.rows * r.cols for r in rects)
        names = []
        for r in rects:
            label = (
                r.layer
                + (f"[g{r.group}]" if r.group else "")
                + (f"[r{r.replica}]" if r.replica else "")
            )
            names.append(label)
        out.append(TileStats(k, " ".join(names), rows, cols, cells, cells / (tr * tc)))
    return out


def _union(spans: Any) -> int:
    covered = 0
    end = -1
    for a, n in sorted(spans):
        if a + n <= end:
            continue
        covered += a + n - max(a, end)
        end = a + n
    return covered


def digital_stats(p: Program) -> list[dict[str, Any]]:
    """Per digital node: op, MACs and element ops per inference."""
    rows = []
    for n in p.graph.nodes:
        pl = n.placement
        if pl is not None and pl.unit == "digital" and (pl.macs or pl.elem_ops):
            rows.append(
                {
                    "node": n.name,
                    "op": n.op.NAME,
                    "macs": pl.macs,
                    "elem_ops": pl.elem_ops,
                }
            )
    return rows


def totals(p: Program, layers: list[LayerStats], tiles: list[TileStats]) -> dict[str, Any]:
    """Chip totals: tiles, utilisation, crossbar vs digital share of MACs."""
    tr, tc = p.tile_shape
    used = sum(t.cells for t in tiles)
    xbar_macs = sum(s.macs for s in layers)
    digital = digital_stats(p)
    dig_macs = sum(d["macs"] for d in digital)
    dig_ops = sum(d["elem_ops"] for d in digital) + sum(s.digital_ops for s in layers)
    total_macs = xbar_macs + dig_macs
    return {
        "tile_shape": f"{tr}x{tc}",
        "tiles": len(tiles),
        "tiles_unpacked": sum(s.tiles for s in layers),
        "cells_used": used,
        "chip_utilisation": used / (len(tiles) * tr * tc) if tiles else 0.0,
        "crossbar_macs": xbar_macs,
        "digital_macs": dig_macs,
        "digital_elem_ops": dig_ops,
        "crossbar_mac_share": xbar_macs / total_macs if total_macs else 0.0,
        "mvms": sum(s.mvms for s in layers),
        "dac": sum(s.dac for s in layers),
        "adc": sum(s.adc for s in layers),
        "cell_reads": sum(s.cell_reads for s in layers),
        "weights": sum(int(math.prod(n.inputs[1].type.shape)) for n in crossbar_nodes(p.graph)),
    }


TRAIN_COUNTERS = ("updates_requested", "updates_applied", "updates_skipped", "write_pulses")
"""Per-tile training counters a trained program records for each run."""


def training_stats(p: Program) -> dict[str, Any] | None:
    """Training history of a trained program (None if it was never trained).

    Per tile: update counts summed over the recorded runs, writes per device (the wear in
    ``tiles/writes``) and the endurance left on its most-written device.
    """
    import numpy as np

    runs = p.extra.get("training", {}).get("runs", [])
    if p.wear is None and not runs:
        return None
    n = p.n_tiles
    counts = {f: [0] * n for f in TRAIN_COUNTERS}
    for run in runs:
        for f, vals in run.get("tile_counters", {}).items():
            if f in counts and len(vals) == n:
                counts[f] = [a + int(b) for a, b in zip(counts[f], vals, strict=True)]
    endurance = float(p.config.device.endurance)
    tr, tc = p.tile_shape
    wear = np.zeros((n, tr, tc), np.int64) if p.wear is None else np.asarray(p.wear, np.int64)
    used = np.zeros((n, tr, tc), bool)
    for t in p.graph.tiles:
        used[t.tile, t.trow : t.trow + t.rows, t.tcol : t.tcol + t.cols] = True
    per_tile = []
    for k in range(n):
        w = wear[k][used[k]] if used[k].any() else np.zeros(1, np.int64)
        row: dict[str, Any] = {"tile": k, **{f: counts[f][k] for f in TRAIN_COUNTERS}}
        row.update(
            max_writes=int(w.max()),
            mean_writes=float(w.mean()),
            endurance_left=max(0.0, 1.0 - float(w.max()) / endurance),
        )
        per_tile.append(row)
    allw = wear[used] if used.any() else np.zeros(1, np.int64)
    return {
        "runs": [
            {
                "rule": r.get("config", {}).get("rule"),
                "epochs": r.get("epochs"),
                "final_test_acc": r.get("final_test_acc"),
            }
            for r in runs
        ],
        "endurance": endurance,
        "max_writes": int(allw.max()),
        "mean_writes": float(allw.mean()),
        "endurance_left": max(0.0, 1.0 - float(allw.max()) / endurance),
        "per_tile": per_tile,
    }


def build(p: Program) -> dict[str, Any]:
    """The whole report as JSON-able data."""
    layers = layer_stats(p)
    tiles = tile_stats(p)
    rep = {
        "model": p.source.get("name", p.graph.name),
        "source": p.source,
        "config_hash": p.config.hash(),
        "per_inference": "counts are per inference (one sample)",
        "layers": [asdict(s) for s in layers],
        "tiles": [asdict(t) for t in tiles],
        "digital": digital_stats(p),
        "totals": totals(p, layers, tiles),
    }
    train = training_stats(p)
    if train is not None:
        rep["training"] = train
    return rep


def rows_csv(rows: list[dict[str, Any]]) -> str:
    """Dict rows as CSV text, the header from the first row's keys ("" for no rows)."""
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def to_csv(report: dict[str, Any]) -> str:
    """Per-layer rows as CSV text."""
    return rows_csv(report["layers"])


def tiles_csv(report: dict[str, Any]) -> str:
    """Per-tile rows as CSV text."""
    return rows_csv(report["tiles"])


def write_files(report: dict[str, Any], out: Path) -> list[Path]:
    """Write ``<out>.report.json``, ``.report.csv`` and ``.tiles.csv`` atomically."""
    import json

    from xbarc.fsutil import atomic_write_text

    stem = out.with_suffix("") if out.suffix == ".bin" else out
    paths = [
        Path(f"{stem}.report.json"),
        Path(f"{stem}.report.csv"),
        Path(f"{stem}.tiles.csv"),
    ]
    atomic_write_text(paths[0], json.dumps(report, indent=2, sort_keys=True) + "\n")
    atomic_write_text(paths[1], to_csv(report))
    atomic_write_text(paths[2], tiles_csv(report))
    return paths


def plot(
    report: dict[str, Any],
    path: Path,
    *,
    values: str = "util",
    title: str = "",
    rows: list[dict[str, Any]] | None = None,
) -> Path:
    """Heatmap PNG of a per-tile quantity (``util`` or a key of the tile rows).

    Tiles are laid out row-major in a near-square grid.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError as e:
        from xbarc.errors import XbarcError

        raise XbarcError("--plot needs matplotlib: pip install 'xbarc[plot]'") from e
    tiles = report["tiles"] if rows is None else rows
    n = len(tiles)
    cols = max(1, math.ceil(math.sqrt(n)))
    nrows = max(1, math.ceil(n / cols))
    grid = np.full((nrows, cols), np.nan)
    for i, t in enumerate(tiles):
        grid[i // cols, i % cols] = float(t[values])
    fig, ax = plt.subplots(figsize=(min(12, 2 + cols * 0.4), min(10, 1.5 + nrows * 0.4)))
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1 if values == "util" else None)
    fig.colorbar(im, ax=ax, label="utilisation" if values == "util" else values)
    ax.set_title(
        title or f"{report['model']}: {values} per tile ({report['totals']['tile_shape']})"
    )
    ax.set_xlabel("tile (column in grid)")
    ax.set_ylabel("tile (row in grid)")
    fig.tight_layout()
    from xbarc.fsutil import atomic_output

    try:
        with atomic_output(path) as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path
