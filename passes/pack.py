"""pack: share physical tiles between small rectangles of different layers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import networkx as nx
import numpy as np
import numpy.typing as npt

from xbarc.errors import ConfigError, VerifyError
from xbarc.ir.core import Graph
from xbarc.ir.types import Tile
from xbarc.passes.base import Pass
from xbarc.passes.partition import crossbar_nodes


def concurrent_layers(g: Graph) -> set[frozenset[str]]:
    """Pairs of crossbar layers that may fire at the same time.

    Execution is layer-sequential along data dependencies, so two layers fire together when
    neither depends on the other (parallel branches, e.g. a ResNet shortcut and its block).
    """
    dag = nx.DiGraph()
    index = {id(n): i for i, n in enumerate(g.nodes)}
    dag.add_nodes_from(range(len(g.nodes)))
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            if v.producer is not None and id(v.producer) in index:
                dag.add_edge(index[id(v.producer)], i)
    xb = crossbar_nodes(g)
    reach = {index[id(n)]: nx.descendants(dag, index[id(n)]) for n in xb}
    pairs: set[frozenset[str]] = set()
    for a in xb:
        for b in xb:
            ia, ib = index[id(a)], index[id(b)]
            if ia < ib and ib not in reach[ia] and ia not in reach[ib]:
                pairs.add(frozenset((a.op.layer, b.op.layer)))  # type: ignore[attr-defined]
    return pairs


def fire_together(a: Tile, b: Tile, pairs: set[frozenset[str]]) -> bool:
    """Whether two rectangles can be active in the same step."""
    if a.layer == b.layer:
        # All row and column blocks of one replica fire in the same MVM; replicas run
        # different inputs concurrently. Only different groups of one layer are sequential
        # inputs of the same step as well, so treat every same-layer pair as concurrent.
        return True
    return frozenset((a.layer, b.layer)) in pairs


class _Spans:
    """Rows and columns closed to a layer in a bin, cached until the bin changes.

    They are the merged intervals of the bin's rectangles that fire together with the layer.
    Depthwise convolutions give thousands of small same-layer rectangles; without this, each
    placement re-tested every candidate position of every bin against every rectangle.
    """

    def __init__(self, pairs: set[frozenset[str]]) -> None:
        self.pairs = pairs
        self.version: dict[int, int] = {}
        self.tables: dict[int, tuple[int, npt.NDArray[np.uint16]]] = {}
        self.corners: dict[int, tuple[int, npt.NDArray[np.int64], npt.NDArray[np.int64]]] = {}
        self.full: dict[tuple[int, str, int, int], int] = {}
        """(bin, layer, rows, cols) → the bin version at which no such rectangle fitted."""
        self.cache: dict[
            tuple[int, str], tuple[int, list[tuple[int, int]], list[tuple[int, int]]]
        ] = {}

    def changed(self, k: int) -> None:
        self.version[k] = self.version.get(k, 0) + 1

    def edges(
        self, k: int, content: list[Tile]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Candidate corners: 0 and every rectangle's bottom row / right column (sorted)."""
        ver = self.version.get(k, 0)
        hit = self.corners.get(k)
        if hit is not None and hit[0] == ver:
            return hit[1], hit[2]
        rows = np.array(sorted({0, *(o.trow + o.rows for o in content)}), np.int64)
        cols = np.array(sorted({0, *(o.tcol + o.cols for o in content)}), np.int64)
        self.corners[k] = (ver, rows, cols)
        return rows, cols

    def summed(self, k: int, content: list[Tile], tr: int, tc: int) -> npt.NDArray[np.uint16]:
        """Summed-area table ``[tr + 1, tc + 1]`` of the bin's used cells (mod 2**16)."""
        ver = self.version.get(k, 0)
        hit = self.tables.get(k)
        if hit is not None and hit[0] == ver:
            return hit[1]
        occ = np.zeros((tr + 1, tc + 1), np.uint16)
        for o in content:
            occ[o.trow + 1 : o.trow + 1 + o.rows, o.tcol + 1 : o.tcol + 1 + o.cols] = 1
        table = occ.cumsum(axis=0, dtype=np.uint16).cumsum(axis=1, dtype=np.uint16)
        self.tables[k] = (ver, table)
        return table

    def busy(
        self, k: int, layer: str, content: list[Tile]
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        ver = self.version.get(k, 0)
        hit = self.cache.get((k, layer))
        if hit is not None and hit[0] == ver:
            return hit[1], hit[2]
        conc = [o for o in content if o.layer == layer or frozenset((o.layer, layer)) in self.pairs]
        rows = _merge([(o.trow, o.trow + o.rows) for o in conc])
        cols = _merge([(o.tcol, o.tcol + o.cols) for o in conc])
        self.cache[(k, layer)] = (ver, rows, cols)
        return rows, cols


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of half-open intervals, sorted and disjoint."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _gap(busy: list[tuple[int, int]], size: int, limit: int) -> bool:
    """Whether ``[0, limit)`` minus ``busy`` holds ``size`` consecutive free units."""
    start = 0
    for a, b in busy:
        if a - start >= size:
            return True
        start = max(start, b)
    return limit - start >= size


def _open(
    at: npt.NDArray[np.int64], size: int, busy: list[tuple[int, int]]
) -> npt.NDArray[np.int64]:
    """The starts in ``at`` whose span ``[start, start + size)`` misses every ``busy`` interval."""
    if not busy or not at.size:
        return at
    a = np.array([x for x, _ in busy])
    b = np.array([y for _, y in busy])
    hit = (a[None, :] < (at + size)[:, None]) & (at[:, None] < b[None, :])
    return at[~hit.any(axis=1)]


def _overlap(a0: int, an: int, b0: int, bn: int) -> bool:
    return a0 < b0 + bn and b0 < a0 + an


def compatible(t: Tile, placed: list[Tile], pairs: set[frozenset[str]]) -> bool:
    """Whether ``t`` may join a tile holding ``placed``.

    No shared cell; for rectangles that fire together, neither rows (inputs would mix) nor
    columns (currents would add) are shared.
    """
    for o in placed:
        rows = _overlap(t.trow, t.rows, o.trow, o.rows)
        cols = _overlap(t.tcol, t.cols, o.tcol, o.cols)
        if rows and cols:
            return False
        if fire_together(t, o, pairs) and (rows or cols):
            return False
    return True


@dataclass(frozen=True)
class Pack(Pass):
    """Shares tiles between small rectangles of different layers.

    Moves rectangles that leave a tile partly empty into shared tiles (first fit,
    largest first, bottom-left candidate positions) when a placement exists that keeps
    concurrently firing layers row- and column-disjoint and other layers cell-disjoint;
    renumbers tiles. ``mode="none"`` keeps one rectangle per tile. With ``tile_budget`` it
    checks that the final chip fits.
    """

    name = "pack"
    mode: str = "greedy"
    tile_budget: int = 0

    def run(self, g: Graph) -> bool:
        if self.mode not in ("none", "greedy"):
            raise ConfigError(f"pack mode must be 'none' or 'greedy', got {self.mode!r}")
        if self.mode == "none" or g.tile_shape is None or not g.tiles:
            return False
        tr, tc = g.tile_shape
        pairs = concurrent_layers(g)
        order = sorted(range(len(g.tiles)), key=lambda i: (-g.tiles[i].rows * g.tiles[i].cols, i))
        bins: list[list[Tile]] = []
        free: list[int] = []  # unused cells per bin: bins without room are skipped fast
        placed: dict[int, Tile] = {}
        spans = _Spans(pairs)
        for i in order:
            t = g.tiles[i]
            spot = None
            if t.rows < tr or t.cols < tc:
                spot = self._find(t, bins, tr, tc, pairs, free, spans)
            if spot is None:
                new = dataclasses.replace(t, tile=len(bins), trow=0, tcol=0)
                bins.append([new])
                free.append(tr * tc)
            else:
                new = spot
                bins[new.tile].append(new)
            spans.changed(new.tile)
            free[new.tile] -= new.rows * new.cols
            placed[i] = new
        new_tiles = [placed[i] for i in range(len(g.tiles))]
        changed = len(bins) != len({t.tile for t in g.tiles}) or new_tiles != g.tiles
        g.tiles = new_tiles
        return changed

    @staticmethod
    def _find(
        t: Tile,
        bins: list[list[Tile]],
        tr: int,
        tc: int,
        pairs: set[frozenset[str]],
        free: list[int] | None = None,
        spans: _Spans | None = None,
    ) -> Tile | None:
        need = t.rows * t.cols
        for k, content in enumerate(bins):
            if free is not None and free[k] < need:
                continue  # fewer unused cells than the rectangle has: no spot in this bin
            # Rows and columns that rectangles firing with ``t`` use are closed to it: only
            # candidates clear of them can pass ``compatible`` (an exact filter, so the
            # placement is the one the plain search finds, found without testing the rest).
            sp = spans or _Spans(pairs)
            key = (k, t.layer, t.rows, t.cols)
            if sp.full.get(key) == sp.version.get(k, 0):
                continue  # this bin had no spot for such a rectangle and has not changed
            busy_r, busy_c = sp.busy(k, t.layer, content)
            if not _gap(busy_r, t.rows, tr) or not _gap(busy_c, t.cols, tc):
                sp.full[key] = sp.version.get(k, 0)
                continue
            er, ec = sp.edges(k, content)
            r0 = _open(er[er + t.rows <= tr], t.rows, busy_r)
            c0 = _open(ec[ec + t.cols <= tc], t.cols, busy_c)
            if not r0.size or not c0.size:
                sp.full[key] = sp.version.get(k, 0)
                continue
            # the first candidate (row-major) whose cells are all unused, from the bin's
            # summed-area table (uint16: exact, a rectangle smaller than a tile has < 2**16
            # cells); with the filters above that is exactly what ``compatible`` accepts
            s = sp.summed(k, content, tr, tc)
            r1, c1 = (r0 + t.rows)[:, None], c0 + t.cols
            ra = r0[:, None]
            used = s[r1, c1] - s[ra, c1] - s[r1, c0] + s[ra, c0]
            hit = np.flatnonzero(used == 0)
            if hit.size:
                i, j = divmod(int(hit[0]), c0.size)
                return dataclasses.replace(t, tile=k, trow=int(r0[i]), tcol=int(c0[j]))
            sp.full[key] = sp.version.get(k, 0)
        return None

    def ensures(self, g: Graph) -> None:
        n_tiles = len({t.tile for t in g.tiles})
        if self.tile_budget and n_tiles > self.tile_budget:
            raise ConfigError(
                f"the mapped model needs {n_tiles} tiles but the tile budget is {self.tile_budget}"
            )
        pairs = concurrent_layers(g) if self.mode == "greedy" else set()
        by_tile: dict[int, list[Tile]] = {}
        for t in g.tiles:
            by_tile.setdefault(t.tile, []).append(t)
        for k, content in by_tile.items():
            for i, a in enumerate(content):
                if not compatible(a, content[:i] + content[i + 1 :], pairs):
                    raise VerifyError(f"tile {k}: packing conflict for {a.layer!r}")
