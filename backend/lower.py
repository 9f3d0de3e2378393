"""Graph → Program, and Program ⇄ mapped.bin.

A :class:`Program` is what the runtime executes: the final IR (digital ops with their
constants, ``xbar.mvm`` layers), one :class:`LayerMap` per crossbar layer, and the conductance
of every cell of every tile (``tiles_g``, float32 µS, ``[T, rows, cols]``). A freshly compiled
program holds *target* conductances (the runtime programs them with the device model); a
trained one holds the device states themselves (``state == "programmed"``) and the write count
of every device (``wear``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xbarc import __version__
from xbarc.backend import container
from xbarc.backend.conductance import (
    LayerMap,
    conductances,
    effective_weights,
    gather,
    plan_layer,
    scatter,
    split_planes,
    tile_rects,
)
from xbarc.backend.program_json import graph_from_json, graph_to_json
from xbarc.errors import FormatError
from xbarc.ir import ops as O
from xbarc.ir.core import Graph, Value
from xbarc.ir.types import TensorType, Tile
from xbarc.passes.config import ChipConfig
from xbarc.passes.partition import crossbar_nodes

KIND = "xbarc.mapped"


@dataclass
class Program:
    """A mapped network: IR, layer maps, tile conductances and optional device wear."""

    graph: Graph
    config: ChipConfig
    layers: dict[str, LayerMap]
    source: dict[str, str]
    tiles_g: np.ndarray | None = None
    """Conductances ``[T, rows, cols]`` (µS); None until materialised (see ``save``)."""
    state: str = "targets"
    """``targets`` (compiled) or ``programmed`` (device states after on-chip training)."""
    wear: np.ndarray | None = None
    """Writes per device ``[T, rows, cols]`` (int64), accumulated over training runs."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Further manifest sections (calibration, training history, reports)."""
    extra_arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_tiles(self) -> int:
        """Number of physical tiles."""
        return len({t.tile for t in self.graph.tiles})

    @property
    def tile_shape(self) -> tuple[int, int]:
        """Rows and columns of a tile."""
        assert self.graph.tile_shape is not None
        return self.graph.tile_shape

    def layer_planes(self, layer: str) -> tuple[np.ndarray, np.ndarray | None]:
        """``(gp, gn)`` of one layer, ``[G, S, R, C]`` each, from the tile conductances."""
        if self.tiles_g is None:
            raise FormatError("program has no tile conductances")
        lm = self.layers[layer]
        phys = gather(
            self.tiles_g, tile_rects(self.graph.tiles, layer), (lm.groups, lm.rows, lm.phys_cols)
        )
        return split_planes(phys, lm)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lower(g: Graph, cfg: ChipConfig, *, source: str | Path | None = None) -> Program:
    """Build the program of a fully mapped graph (after the default pipeline)."""
    if g.tile_shape is None:
        raise FormatError("graph is not partitioned into tiles; run the compile pipeline first")
    layers: dict[str, LayerMap] = {}
    for n in crossbar_nodes(g):
        op = n.op
        assert isinstance(op, O.XbarMVM) and n.inputs[1].const is not None
        layers[op.layer] = plan_layer(
            n.inputs[1].const,
            layer=op.layer,
            kind=op.kind,
            cfg=cfg,
            weight_bits=op.weight_bits,
            cell_bits=op.cell_bits,
            signing=op.signing,
            slices=op.slices,
        )
    src: dict[str, str] = {"name": g.name}
    if source is not None:
        src["file"] = Path(source).name
        src["sha256"] = file_sha256(source)
    return Program(g, cfg, layers, src)


def _fill_tiles(p: Program) -> Callable[[np.ndarray], None]:
    def fill(out: np.ndarray) -> None:
        # The container hands over a region of a pre-sized (zero-filled) file.
        rects: dict[str, list[Tile]] = {}
        for t in p.graph.tiles:
            rects.setdefault(t.layer, []).append(t)
        for n in crossbar_nodes(p.graph):
            op = n.op
            assert isinstance(op, O.XbarMVM) and n.inputs[1].const is not None
            phys = conductances(n.inputs[1].const, p.layers[op.layer], p.config)
            scatter(phys, rects.get(op.layer, []), out)
            del phys
            container.release(out)

    return fill


def manifest(p: Program, const_names: dict[int, str]) -> dict[str, Any]:
    """The JSON manifest of a program."""
    g = p.graph
    schedule = []
    for n in g.nodes:
        entry: dict[str, Any] = {"node": n.name, "unit": n.placement.unit if n.placement else ""}
        if isinstance(n.op, O.XbarMVM):
            entry["tiles"] = sorted({t.tile for t in g.tiles if t.layer == n.op.layer})
        schedule.append(entry)
    return {
        "kind": KIND,
        "xbarc_version": __version__,
        "source": p.source,
        "config": p.config.to_dict(),
        "config_hash": p.config.hash(),
        "state": p.state,
        "program": graph_to_json(g, lambda v: const_names.get(id(v))),
        "layers": [lm.to_dict() for lm in p.layers.values()],
        "schedule": schedule,
        **p.extra,
    }


def save(p: Program, path: str | Path) -> None:
    """Write the program as mapped.bin (atomically; tiles streamed layer by layer)."""
    xbar_weights = {id(n.inputs[1]) for n in crossbar_nodes(p.graph)}
    arrays: dict[str, np.ndarray | container.ArraySpec] = {}
    const_names: dict[int, str] = {}
    for i, v in enumerate(p.graph.constants()):
        if id(v) in xbar_weights and not _used_digitally(v):
            continue
        name = f"const/{i}"
        const_names[id(v)] = name
        assert v.const is not None
        arrays[name] = v.const
    t = p.n_tiles
    rows, cols = p.tile_shape
    if p.tiles_g is not None:
        arrays["tiles/g"] = np.ascontiguousarray(p.tiles_g, np.float32)
    else:
        arrays["tiles/g"] = container.ArraySpec(np.dtype("<f4"), (t, rows, cols), _fill_tiles(p))
    if p.wear is not None:
        arrays["tiles/writes"] = np.ascontiguousarray(p.wear, np.int64)
    arrays.update(p.extra_arrays)
    container.write(path, manifest(p, const_names), arrays)


def _used_digitally(v: Value) -> bool:
    return any(not isinstance(u.node.op, O.XbarMVM) or u.index != 1 for u in v.uses)


def load(path: str | Path, *, verify: bool = True) -> Program:
    """Read a mapped.bin written by :func:`save`; ``verify`` checks every array's CRC-32.

    Raises:
        FormatError: not a mapped.bin, inconsistent content, or (with ``verify``) an array whose
            bytes do not match their checksum.
    """
    c = container.read(path, verify=verify)
    m = c.manifest
    if m.get("kind") != KIND:
        raise FormatError(f"{path}: not an xbarc mapped program (kind={m.get('kind')!r})")
    try:
        cfg = ChipConfig.from_dict(m["config"], where=f"{path} config")
        layers = {d["layer"]: LayerMap.from_dict(d) for d in m["layers"]}
        tiles_g = c.arrays["tiles/g"]
    except KeyError as e:
        raise FormatError(f"{path}: manifest lacks {e.args[0]!r}") from None
    except Exception as e:
        if isinstance(e, FormatError):
            raise
        raise FormatError(f"{path}: invalid manifest ({e})") from e
    if tiles_g.ndim != 3 or tiles_g.dtype != np.float32:
        raise FormatError(f"{path}: tiles/g must be float32 [T, rows, cols]")
    program_json = m.get("program")
    if not isinstance(program_json, dict):
        raise FormatError(f"{path}: manifest has no program")
    ts = program_json.get("tile_shape")
    if not ts or tuple(tiles_g.shape[1:]) != tuple(ts):
        raise FormatError(f"{path}: tiles/g shape {tiles_g.shape} does not match the tile shape")

    def xbar_weight(layer: str, t: TensorType) -> np.ndarray:
        if layer not in layers:
            raise FormatError(f"{path}: no layer map for crossbar layer {layer!r}")
        lm = layers[layer]
        rects = [tuple(x) for x in program_json["tiles"] if x[1] == layer and x[3] == 0]

        phys = gather(tiles_g, [Tile(*r) for r in rects], (lm.groups, lm.rows, lm.phys_cols))
        gp, gn = split_planes(phys, lm)
        w = effective_weights(gp, gn, lm).astype(t.dtype.numpy)
        if w.shape != t.shape:
            raise FormatError(f"{path}: layer {layer!r} weight shape {w.shape} != {t}")
        w.flags.writeable = False
        return w

    g = graph_from_json(program_json, c.arrays, xbar_weight)
    known = {
        "kind",
        "xbarc_version",
        "source",
        "config",
        "config_hash",
        "state",
        "program",
        "layers",
        "schedule",
        "arrays",
        "format_version",
    }
    extra = {k: v for k, v in m.items() if k not in known}
    wear = c.arrays.get("tiles/writes")
    extra_arrays = {
        k: v
        for k, v in c.arrays.items()
        if not k.startswith("const/") and k not in ("tiles/g", "tiles/writes")
    }
    n_tiles = len({t.tile for t in g.tiles})
    if tiles_g.shape[0] != n_tiles:
        raise FormatError(f"{path}: {tiles_g.shape[0]} tiles stored, tile table has {n_tiles}")
    return Program(
        g,
        cfg,
        layers,
        dict(m.get("source", {})),
        tiles_g,
        str(m.get("state", "targets")),
        wear,
        extra,
        extra_arrays,
    )
