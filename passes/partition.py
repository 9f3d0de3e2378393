"""slice-and-sign and partition-tiles: logical matrices → physical matrices → tile rectangles.

Physical column order of a layer (per group): logical column ``c``, then bit slice ``s``
(least significant first), then polarity ``p`` (G+ then G- for differential)::

    phys_col = (c * slices + s) * D + p        # D = 2 (differential) or 1 (offset)

so a weight's cells stay adjacent and a differential pair never straddles two tiles: a tile
holds ``floor(tile_cols / D) * D`` physical columns of a layer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from xbarc.errors import ConfigError, VerifyError
from xbarc.ir import ops as O
from xbarc.ir.core import Graph, Node
from xbarc.ir.types import Tile
from xbarc.passes.base import Pass


@dataclass(frozen=True, slots=True)
class Geometry:
    """Logical and physical shape of one crossbar layer."""

    layer: str
    groups: int
    rows: int
    """Logical (= physical) rows R per group."""
    cols: int
    """Logical columns C per group."""
    slices: int
    per_weight: int
    """Physical columns per weight and slice (D)."""

    @property
    def phys_cols(self) -> int:
        """C_phys = C · slices · D per group."""
        return self.cols * self.slices * self.per_weight

    def tile_cols(self, tile_cols: int) -> int:
        """Physical columns of this layer one tile can hold (whole differential pairs)."""
        return (tile_cols // self.per_weight) * self.per_weight

    def blocks(self, tile_rows: int, tile_cols: int) -> tuple[int, int]:
        """Row tiles and column tiles per group."""
        return (
            math.ceil(self.rows / tile_rows),
            math.ceil(self.phys_cols / self.tile_cols(tile_cols)),
        )

    def rectangles(self, tile_rows: int, tile_cols: int) -> Iterator[tuple[int, int, int, int]]:
        """``(row0, col0, rows, cols)`` of every tile-sized piece of one group, row-major."""
        tc = self.tile_cols(tile_cols)
        for r0 in range(0, self.rows, tile_rows):
            for c0 in range(0, self.phys_cols, tc):
                yield r0, c0, min(tile_rows, self.rows - r0), min(tc, self.phys_cols - c0)


def geometry(node: Node) -> Geometry:
    """The geometry of an ``xbar.mvm`` node."""
    op = node.op
    if not isinstance(op, O.XbarMVM):
        raise VerifyError(f"node {node.name!r} is not a crossbar layer")
    g, r, c = node.inputs[1].type.shape
    d = 2 if op.signing == "differential" else 1
    return Geometry(op.layer, g, r, c, op.slices, d)


def crossbar_nodes(g: Graph) -> list[Node]:
    """The ``xbar.mvm`` nodes in program order."""
    return [n for n in g.nodes if isinstance(n.op, O.XbarMVM)]


@dataclass(frozen=True)
class SliceAndSign(Pass):
    """Sets precision and signing of every ``xbar.mvm``.

    Weights of ``weight_bits`` over cells
    of ``cell_bits`` need ``slices = ceil((weight_bits - 1) / cell_bits)`` slices with a
    differential pair (``ceil(weight_bits / cell_bits)`` with an offset), so the physical
    matrix has ``C_phys = C · slices · D`` columns; ``weight_bits = 0`` keeps analog weights.
    """

    name = "slice-and-sign"
    weight_bits: int = 0
    cell_bits: int = 2
    signing: str = "differential"

    def slices(self) -> int:
        """Bit slices per weight."""
        if self.weight_bits == 0:
            return 1
        mag = self.weight_bits - 1 if self.signing == "differential" else self.weight_bits
        return max(1, math.ceil(mag / self.cell_bits))

    def run(self, g: Graph) -> bool:
        changed = False
        for n in crossbar_nodes(g):
            assert isinstance(n.op, O.XbarMVM)
            new = dataclasses.replace(
                n.op,
                weight_bits=self.weight_bits,
                cell_bits=self.cell_bits if self.weight_bits else 0,
                slices=self.slices(),
                signing=self.signing,
            )
            if new != n.op:
                g.replace_op(n, new)
                changed = True
        return changed


@dataclass(frozen=True)
class PartitionTiles(Pass):
    """Cuts each layer's physical matrix into tile-sized rectangles.

    Per group, rectangles of at most ``rows × cols``; gives each its own tile; partial sums
    over row tiles are added digitally (recorded as element ops on the layer's placement).
    """

    name = "partition-tiles"
    rows: int = 256
    cols: int = 256

    def requires(self, g: Graph) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ConfigError(f"tile must be at least 1x1, got {self.rows}x{self.cols}")
        for n in crossbar_nodes(g):
            geo = geometry(n)
            if geo.per_weight > self.cols:
                raise ConfigError(
                    f"layer {geo.layer!r}: differential signing needs at least 2 tile columns"
                )

    def run(self, g: Graph) -> bool:
        tiles: list[Tile] = []
        for n in crossbar_nodes(g):
            geo = geometry(n)
            for grp in range(geo.groups):
                for r0, c0, nr, nc in geo.rectangles(self.rows, self.cols):
                    tiles.append(Tile(len(tiles), geo.layer, grp, 0, r0, c0, nr, nc))
            self._partial_sums(n, geo)
        g.tiles = tiles
        g.tile_shape = (self.rows, self.cols)
        return True

    def _partial_sums(self, n: Node, geo: Geometry) -> None:
        from xbarc.passes.lower_mvm import batch_of, mvm_positions

        if n.placement is None or n.graph is None:
            return
        row_tiles = geo.blocks(self.rows, self.cols)[0]
        batch = batch_of(n.graph)  # as cost(): the layer input's axis 0 need not be the batch
        adds = (row_tiles - 1) * geo.cols * geo.groups * mvm_positions(n) // batch
        base = n.outputs[0].type.size // batch if len(n.inputs) == 3 else 0
        n.placement = dataclasses.replace(n.placement, elem_ops=base + adds)

    def ensures(self, g: Graph) -> None:
        check_tiles(g)


def check_tiles(g: Graph) -> None:
    """Every layer's physical matrix is covered exactly once per replica; no cell is shared."""
    if g.tile_shape is None:
        raise VerifyError("graph has tiles but no tile shape")
    tr, tc = g.tile_shape
    cover: dict[tuple[str, int, int], list[Tile]] = {}
    cells: dict[int, list[Tile]] = {}
    for t in g.tiles:
        if t.trow + t.rows > tr or t.tcol + t.cols > tc or min(t.trow, t.tcol) < 0:
            raise VerifyError(f"tile {t.tile}: rectangle of {t.layer!r} exceeds the tile")
        if t.rows < 1 or t.cols < 1:
            raise VerifyError(f"tile {t.tile}: empty rectangle of {t.layer!r}")
        cover.setdefault((t.layer, t.group, t.replica), []).append(t)
        for o in cells.get(t.tile, []):
            if (
                t.trow < o.trow + o.rows
                and o.trow < t.trow + t.rows
                and t.tcol < o.tcol + o.cols
                and o.tcol < t.tcol + t.cols
            ):
                raise VerifyError(f"tile {t.tile}: {t.layer!r} and {o.layer!r} overlap")
        cells.setdefault(t.tile, []).append(t)
    for n in crossbar_nodes(g):
        geo = geometry(n)
        assert isinstance(n.op, O.XbarMVM)
        for grp in range(geo.groups):
            for rep in range(n.op.replicas):
                where = f"layer {geo.layer!r} group {grp} replica {rep}"
                seen = np.zeros((geo.rows, geo.phys_cols), np.bool_)
                for t in cover.pop((geo.layer, grp, rep), []):
                    inside = t.row0 + t.rows <= geo.rows and t.col0 + t.cols <= geo.phys_cols
                    if min(t.row0, t.col0) < 0 or not inside:
                        raise VerifyError(f"tile {t.tile}: {where} rectangle is outside the layer")
                    part = seen[t.row0 : t.row0 + t.rows, t.col0 : t.col0 + t.cols]
                    if part.any():
                        raise VerifyError(f"tile {t.tile}: {where} covers some cells twice")
                    part[...] = True
                if not seen.all():
                    raise VerifyError(f"{where} is not covered by tiles")
    if cover:
        layer, grp, rep = min(cover)
        raise VerifyError(f"tiles refer to {layer!r} group {grp} replica {rep}, not mapped")
    ids = sorted(cells)
    if ids != list(range(len(ids))):
        raise VerifyError("tile ids are not 0..n-1")
