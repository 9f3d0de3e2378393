"""pack: share physical tiles between small rectangles of different layers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import networkx as nx

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
        for i in order:
            t = g.tiles[i]
            spot = None
            if t.rows < tr or t.cols < tc:
                spot = self._find(t, bins, tr, tc, pairs, free)
            if spot is None:
                new = dataclasses.replace(t, tile=len(bins), trow=0, tcol=0)
                bins.append([new])
                free.append(tr * tc)
            else:
                new = spot
                bins[new.tile].append(new)
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
    ) -> Tile | None:
        need = t.rows * t.cols
        for k, content in enumerate(bins):
            if free is not None and free[k] < need:
                continue  # fewer unused cells than the rectangle has: no spot in this bin
            rows = sorted({0, *(o.trow + o.rows for o in content)})
            cols = sorted({0, *(o.tcol + o.cols for o in content)})
            for r in rows:
                if r + t.rows > tr:
                    continue
                for c in cols:
                    if c + t.cols > tc:
                        continue
                    cand = dataclasses.replace(t, tile=k, trow=r, tcol=c)
                    if compatible(cand, content, pairs):
                        return cand
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
