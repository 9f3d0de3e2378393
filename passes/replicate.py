"""replicate: copy the hottest crossbar layers to balance a layer pipeline."""

from __future__ import annotations

import dataclasses
import heapq
import math
from dataclasses import dataclass

from xbarc.ir import ops as O
from xbarc.ir.core import Graph
from xbarc.ir.types import Tile
from xbarc.passes.base import Pass
from xbarc.passes.lower_mvm import batch_of, mvm_positions
from xbarc.passes.partition import crossbar_nodes


@dataclass(frozen=True)
class Replicate(Pass):
    """Copies the hottest layers to balance a layer pipeline.

    Gives layer ``l`` ``r_l`` copies of its tiles so that the per-replica load
    ``MVMs_l / r_l`` (MVMs per inference) is as even as possible. With only ``max_replicas``,
    ``r_l = min(max_replicas, ceil(MVMs_l / min MVMs))`` (ISAAC/PIMCOMP-style balance); with a
    ``tile_budget`` the bottleneck layer gets one more copy while the copies fit, so the
    rectangles never exceed the budget. Replicas are new ``Tile`` records (``replica > 0``).
    """

    name = "replicate"
    max_replicas: int = 1
    tile_budget: int = 0

    def run(self, g: Graph) -> bool:
        if self.max_replicas <= 1 and self.tile_budget == 0:
            return False
        nodes = crossbar_nodes(g)
        if not nodes:
            return False
        batch = batch_of(g)
        load = {}
        for n in nodes:
            assert isinstance(n.op, O.XbarMVM)
            load[n.op.layer] = max(1, mvm_positions(n) * n.inputs[1].type.shape[0] // batch)
        size = {k: 0 for k in load}
        for t in g.tiles:
            if t.replica == 0:
                size[t.layer] += 1
        reps = self._replicas(load, size, len(g.tiles))
        if all(r == 1 for r in reps.values()):
            return False
        tiles = list(g.tiles)
        base = [t for t in g.tiles if t.replica == 0]
        for layer, r in reps.items():
            for k in range(1, r):
                for t in base:
                    if t.layer == layer:
                        tiles.append(dataclasses.replace(t, tile=len(tiles), replica=k))
        g.tiles = tiles
        for n in nodes:
            assert isinstance(n.op, O.XbarMVM)
            g.replace_op(n, dataclasses.replace(n.op, replicas=reps[n.op.layer]))
        return True

    def _replicas(self, load: dict[str, int], size: dict[str, int], used: int) -> dict[str, int]:
        cap = self.max_replicas if self.max_replicas > 1 else 1 << 30
        if self.tile_budget == 0:
            low = min(load.values())
            return {k: min(cap, math.ceil(v / low)) for k, v in load.items()}
        reps = dict.fromkeys(load, 1)
        heap: list[tuple[float, str]] = [(-float(v), k) for k, v in load.items()]
        heapq.heapify(heap)
        while heap:
            _, k = heapq.heappop(heap)
            if reps[k] >= cap or used + size[k] > self.tile_budget:
                break  # the bottleneck cannot be relieved; more copies elsewhere do not help
            reps[k] += 1
            used += size[k]
            heapq.heappush(heap, (-load[k] / reps[k], k))
        return reps


def tiles_of(tiles: list[Tile], layer: str) -> list[Tile]:
    """The rectangles of one layer."""
    return [t for t in tiles if t.layer == layer]
