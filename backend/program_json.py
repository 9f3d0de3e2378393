"""The IR as JSON (for the mapped.bin manifest) and back.

Values get integer ids; constants refer to named arrays stored beside the manifest, except the
weights of crossbar layers, which live in the tiles as conductances and are marked
``{"xbar": "<layer>"}``. Attribute tuples become JSON lists and come back as tuples.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from xbarc.errors import FormatError
from xbarc.ir import ops as O
from xbarc.ir.core import Graph, Node, Placement, Use, Value
from xbarc.ir.types import DType, TensorType, Tile

_TYPE = re.compile(r"^([a-z0-9]+)\[([0-9,]*)\]$")
TILE_FIELDS = (
    "tile",
    "layer",
    "group",
    "replica",
    "row0",
    "col0",
    "rows",
    "cols",
    "trow",
    "tcol",
    "device",
)


def type_from_str(s: str) -> TensorType:
    """Parse ``f32[1,64]``; FormatError if malformed."""
    m = _TYPE.match(s) if isinstance(s, str) else None
    if m is None:
        raise FormatError(f"malformed tensor type {s!r}")
    try:
        dtype = DType(m.group(1))
    except ValueError:
        raise FormatError(f"unknown element type in {s!r}") from None
    dims = tuple(int(d) for d in m.group(2).split(",") if d)
    return TensorType(dims, dtype)


def _jsonable(v: object) -> object:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


def _tupled(v: object) -> object:
    if isinstance(v, list):
        return tuple(_tupled(x) for x in v)
    return v


def graph_to_json(g: Graph, array_name: Callable[[Value], str | None]) -> dict[str, Any]:
    """Serialise ``g`` to JSON-able data.

    ``array_name(v)`` names the stored array of constant ``v``, or returns None when ``v`` is a
    crossbar weight (then it is recorded by layer).
    """
    ids: dict[int, int] = {}

    def vid(v: Value) -> int:
        if id(v) not in ids:
            ids[id(v)] = len(ids)
        return ids[id(v)]

    inputs = [{"id": vid(v), "name": v.name, "type": str(v.type)} for v in g.inputs]
    consts = []
    xbar_weights = {id(n.inputs[1]): n.op.layer for n in g.nodes if isinstance(n.op, O.XbarMVM)}
    for v in g.constants():
        entry: dict[str, Any] = {"id": vid(v), "name": v.name, "type": str(v.type)}
        if v.param:
            entry["param"] = True
        name = array_name(v)
        if name is None:
            if id(v) not in xbar_weights:
                raise FormatError(f"constant {v.name!r} has no stored array")
            entry["xbar"] = xbar_weights[id(v)]
        else:
            entry["array"] = name
        consts.append(entry)
    nodes = []
    for n in g.nodes:
        rec: dict[str, Any] = {
            "name": n.name,
            "op": n.op.NAME,
            "attrs": {k: _jsonable(v) for k, v in n.op.attrs().items()},
            "in": [vid(v) for v in n.inputs],
            "out": [{"id": vid(v), "name": v.name, "type": str(v.type)} for v in n.outputs],
        }
        if n.placement is not None:
            p = n.placement
            rec["placement"] = {"unit": p.unit, "macs": p.macs, "elem_ops": p.elem_ops}
        if n.batch_coef:
            rec["batch_coef"] = {k: list(c) for k, c in n.batch_coef.items()}
        nodes.append(rec)
    return {
        "name": g.name,
        "batch": g.batch,
        "inputs": inputs,
        "consts": consts,
        "nodes": nodes,
        "outputs": [vid(v) for v in g.outputs],
        "tile_shape": list(g.tile_shape) if g.tile_shape else None,
        "tiles": [[getattr(t, f) for f in TILE_FIELDS] for t in g.tiles],
    }


def graph_from_json(
    d: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    xbar_weight: Callable[[str, TensorType], np.ndarray],
) -> Graph:
    """Rebuild a graph; ``xbar_weight(layer, type)`` supplies crossbar weights.

    Raises:
        FormatError: anything inconsistent (unknown op, dangling id, bad attribute).
    """
    try:
        return _from_json(d, arrays, xbar_weight)
    except FormatError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise FormatError(f"program graph is malformed ({type(e).__name__}: {e})") from None


def _from_json(
    d: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    xbar_weight: Callable[[str, TensorType], np.ndarray],
) -> Graph:
    g = Graph(str(d["name"]))
    batch = d.get("batch")
    g.batch = None if batch is None else int(batch)
    env: dict[int, Value] = {}
    for e in d["inputs"]:
        env[int(e["id"])] = g.add_input(type_from_str(e["type"]), str(e["name"]))
    for e in d["consts"]:
        t = type_from_str(e["type"])
        if "array" in e:
            if e["array"] not in arrays:
                raise FormatError(f"constant {e['name']!r}: array {e['array']!r} missing")
            arr = arrays[e["array"]]
        else:
            arr = xbar_weight(str(e["xbar"]), t)
        if TensorType.of(arr) != t:
            raise FormatError(f"constant {e['name']!r}: array is {TensorType.of(arr)}, not {t}")
        v = Value(t, name=str(e["name"]), const=arr, param=bool(e.get("param", False)))
        env[int(e["id"])] = v
    for rec in d["nodes"]:
        cls = O.OPS.get(rec["op"])
        if cls is None:
            raise FormatError(f"node {rec['name']!r}: unknown op {rec['op']!r}")
        op = cls(**{k: _tupled(v) for k, v in rec["attrs"].items()})
        ins = [env[int(i)] for i in rec["in"]]
        node = Node(op, ins, [], str(rec["name"]), g)
        for j, o in enumerate(rec["out"]):
            v = Value(type_from_str(o["type"]), name=str(o["name"]), producer=node, index=j)
            env[int(o["id"])] = v
            node.outputs.append(v)
        for i, v in enumerate(ins):
            v._uses.append(Use(node, i))
        if "placement" in rec:
            p = rec["placement"]
            node.placement = Placement(str(p["unit"]), int(p["macs"]), int(p["elem_ops"]))
        node.batch_coef = {
            k: tuple(int(x) for x in c) for k, c in rec.get("batch_coef", {}).items()
        }
        g.nodes.append(node)
    g.outputs = [env[int(i)] for i in d["outputs"]]
    ts = d.get("tile_shape")
    g.tile_shape = None if ts is None else (int(ts[0]), int(ts[1]))
    g.tiles = [_tile(t) for t in d["tiles"]]
    g.verify()
    return g


def _tile(rec: object) -> Tile:
    if not isinstance(rec, list) or len(rec) != len(TILE_FIELDS):
        raise FormatError(f"malformed tile record {rec!r}")
    ints = [_cast(f, x) for f, x in zip(TILE_FIELDS, rec, strict=True)]
    return Tile(
        tile=int(ints[0]),
        layer=str(ints[1]),
        group=int(ints[2]),
        replica=int(ints[3]),
        row0=int(ints[4]),
        col0=int(ints[5]),
        rows=int(ints[6]),
        cols=int(ints[7]),
        trow=int(ints[8]),
        tcol=int(ints[9]),
        device=str(ints[10]),
    )


def _cast(field: str, x: object) -> int | str:
    if field in ("layer", "device"):
        return str(x)
    if not isinstance(x, int) or isinstance(x, bool):
        raise FormatError(f"tile field {field} must be an integer, got {x!r}")
    return x
