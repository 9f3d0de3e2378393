"""Deterministic text form of a graph.

Values are numbered ``%0, %1, ...`` in order (inputs, constants by first use, node results);
attributes are sorted by name. Example line::

    %7 = conv(%0, %1, %2) {group=1, pads=[1,1,1,1], strides=[1,1]} : f32[1,16,32,32]  # c1
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from xbarc.ir.ops import AttrValue

if TYPE_CHECKING:
    from xbarc.ir.core import Graph, Node, Value


def format_attr(v: AttrValue) -> str:
    """One attribute value: ints, floats (shortest round-trip), bools, strings, lists."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, tuple):
        return "[" + ",".join(format_attr(x) for x in v) + "]"
    if isinstance(v, float) and float(np.float32(v)) == v and np.isfinite(v):
        return str(np.float32(v))  # shortest form that round-trips the float32 value
    return repr(v)


def _dense(arr: np.ndarray) -> str:
    flat = arr.reshape(-1)
    items = ",".join(format_attr(x.item()) for x in flat)
    return f"dense<[{items}]> "


def print_graph(g: Graph, *, const_values: int = 8) -> str:
    """Render ``g``; constants with at most ``const_values`` elements show their data."""
    names: dict[int, str] = {}

    def name(v: Value) -> str:
        if id(v) not in names:
            names[id(v)] = f"%{len(names)}"
        return names[id(v)]

    args = ", ".join(f"{name(v)}: {v.type}" for v in g.inputs)
    batch = "fixed" if g.batch is None else str(g.batch)
    lines = [f'graph "{g.name}" ({args}) batch={batch} {{']
    for c in g.constants():
        assert c.const is not None
        data = _dense(c.const) if c.const.size <= const_values else ""
        label = f'"{c.name}" ' if c.name else ""
        lines.append(f"  {name(c)} = const {label}{data}: {c.type}")
    for n in g.nodes:
        lines.append("  " + _node_line(n, name))
    lines.append("  return " + ", ".join(name(v) for v in g.outputs))
    lines.append("}")
    if g.tiles and g.tile_shape is not None:
        tr, tc = g.tile_shape
        lines.append(f"tiles {tr}x{tc}:")
        for t in g.tiles:
            lines.append(
                f"  tile {t.tile}: {t.layer} g{t.group} rep{t.replica} "
                f"rows[{t.row0}:{t.row0 + t.rows}] cols[{t.col0}:{t.col0 + t.cols}] "
                f"at ({t.trow},{t.tcol})"
            )
    return "\n".join(lines) + "\n"


def _node_line(n: Node, name: object) -> str:
    assert callable(name)
    ins = ", ".join(name(v) for v in n.inputs)
    outs = ", ".join(name(v) for v in n.outputs)
    attrs = n.op.attrs()
    attr_s = ""
    if attrs:
        attr_s = " {" + ", ".join(f"{k}={format_attr(attrs[k])}" for k in sorted(attrs)) + "}"
    types = ", ".join(str(v.type) for v in n.outputs)
    if n.batch_coef:
        coef = ", ".join(f"{k}={format_attr(n.batch_coef[k])}" for k in sorted(n.batch_coef))
        attr_s += f" batch{{{coef}}}"
    place = ""
    if n.placement is not None:
        p = n.placement
        place = f" @{p.unit}(macs={p.macs}, ops={p.elem_ops})"
    return f"{outs} = {n.op.NAME}({ins}){attr_s} : {types}{place}  # {n.name}"
