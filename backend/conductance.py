"""Weights ⇄ conductances, and physical matrices ⇄ tiles.

For every crossbar layer the runtime computes::

    y = Σ_s slice_w[s] · (x @ gdiff_s) − offset · Σ_i x_i

with ``gdiff_s = G+_s − G-_s`` (differential) or ``G_s`` (offset signing), conductances in µS.

* analog differential (``weight_bits = 0``): ``G± = g_min + max(±w, 0)/k``, ``slice_w = [k]``;
* quantised differential: ``q = round(|w|/step)`` in ``[0, 2^(B-1)-1]`` split into base
  ``2^b`` digits ``d_s``; ``G±_s = g_min + d_s·ΔG`` on the sign's side;
  ``slice_w[s] = step·2^(s·b)/ΔG`` with ``ΔG = (g_max − g_min)/(2^b − 1)``;
* offset signing stores ``w + w0`` in one column and subtracts the offset digitally.

``k`` (weight per µS, the EaPU paper's R_wg) is ``ChipConfig.weight_scale`` when set, else
``max|w| / (g_max − g_min)`` per layer so the largest weight spans the window.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from xbarc.errors import FormatError
from xbarc.ir.types import Tile
from xbarc.passes.config import ChipConfig


@dataclass(frozen=True)
class LayerMap:
    """How one crossbar layer's weights sit in conductances."""

    layer: str
    kind: str
    groups: int
    rows: int
    cols: int
    slices: int
    per_weight: int
    """Physical columns per weight and slice: 2 (differential) or 1 (offset)."""
    weight_bits: int
    cell_bits: int
    k: float
    """Weight per µS of the least significant slice scale (R_wg for analog layers)."""
    slice_w: tuple[float, ...]
    offset: float
    clipped: int
    """Weights beyond the conductance window (clipped at mapping)."""
    step: float = 0.0
    """Weight quantisation step (one LSB of the integer weight); 0 for analog layers."""

    @property
    def phys_cols(self) -> int:
        """C_phys per group."""
        return self.cols * self.slices * self.per_weight

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        d = asdict(self)
        d["slice_w"] = list(self.slice_w)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> LayerMap:
        """Inverse of :meth:`to_dict`; FormatError if fields are missing or wrong."""
        try:
            return LayerMap(
                layer=str(d["layer"]),
                kind=str(d["kind"]),
                groups=int(d["groups"]),
                rows=int(d["rows"]),
                cols=int(d["cols"]),
                slices=int(d["slices"]),
                per_weight=int(d["per_weight"]),
                weight_bits=int(d["weight_bits"]),
                cell_bits=int(d["cell_bits"]),
                k=float(d["k"]),
                slice_w=tuple(float(x) for x in d["slice_w"]),
                offset=float(d["offset"]),
                clipped=int(d["clipped"]),
                step=float(d.get("step", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"layer map is malformed ({type(e).__name__}: {e})") from None


def plan_layer(
    w: np.ndarray,
    *,
    layer: str,
    kind: str,
    cfg: ChipConfig,
    weight_bits: int,
    cell_bits: int,
    signing: str,
    slices: int,
) -> LayerMap:
    """The scale, slice weights, offset and clip count of a layer (no conductances yet)."""
    w32 = np.asarray(w)
    groups, rows, cols = w32.shape
    dev = cfg.device
    window = dev.g_max - dev.g_min
    wmax = float(np.abs(w32).max()) if w32.size else 0.0
    d = 2 if signing == "differential" else 1
    scale = cfg.weight_scale
    step = 0.0
    slice_w: tuple[float, ...]
    if weight_bits == 0:
        if signing == "differential":
            k = scale or (wmax / window if wmax > 0 else 1.0 / window)
            clipped = int((np.abs(w32) > k * window).sum()) if scale else 0
            slice_w, offset = (k,), 0.0
        else:
            k = scale or (2 * wmax / window if wmax > 0 else 1.0 / window)
            clipped = int((np.abs(w32) > k * window / 2).sum()) if scale else 0
            slice_w, offset = (k,), k * dev.g_min + k * window / 2
    else:
        base = 1 << cell_bits
        dg = window / (base - 1)
        if signing == "differential":
            top = (1 << (weight_bits - 1)) - 1
        else:
            top = (1 << (weight_bits - 1)) - 1 if weight_bits > 1 else 1
        step = scale * dg if scale else (wmax / top if wmax > 0 else 1.0)
        clipped = int((np.abs(w32) > (top + 0.5) * step).sum()) if scale else 0
        slice_w = tuple(step * float(base**s) / dg for s in range(slices))
        offset = 0.0
        if signing == "offset":
            offset = sum(slice_w) * dev.g_min + step * (1 << (weight_bits - 1))
        k = slice_w[0]
    return LayerMap(
        layer,
        kind,
        groups,
        rows,
        cols,
        slices,
        d,
        weight_bits,
        cell_bits if weight_bits else 0,
        float(k),
        tuple(float(x) for x in slice_w),
        float(offset),
        clipped,
        float(step),
    )


def conductances(w: np.ndarray, lm: LayerMap, cfg: ChipConfig) -> np.ndarray:
    """Target conductances ``phys[G, R, C·slices·D]`` (float32 µS) of weights ``w[G, R, C]``."""
    w = np.asarray(w)
    groups, rows, cols = w.shape
    dev = cfg.device
    window = dev.g_max - dev.g_min
    # Every (slice, polarity) plane goes straight into the interleaved float32 result
    # (phys_col = (c*S + s)*D + p): analog planes computed in float64 with in-place steps,
    # quantised ones looked up from the cell levels. Temporaries of one plane at a time only.
    out = np.empty((groups, rows, cols, lm.slices * lm.per_weight), np.float32)
    if lm.weight_bits == 0:
        if lm.per_weight == 2:
            w64 = np.array(w, np.float64)
            for p in range(2):
                t = np.maximum(np.negative(w64, out=w64) if p else w64, 0.0)  # (np.clip: slow)
                t /= lm.k
                np.minimum(t, window, out=t)
                t += dev.g_min
                out[..., p] = t
        else:
            t = np.array(w, np.float64)
            t += lm.k * window / 2
            t /= lm.k
            np.maximum(t, 0.0, out=t)
            np.minimum(t, window, out=t)
            t += dev.g_min
            out[..., 0] = t
    else:
        base = 1 << lm.cell_bits
        dg = window / (base - 1)
        half = 1 << (lm.weight_bits - 1)
        # the 2^b cell levels g_min + d·ΔG (float64, then rounded once), looked up per digit
        levels = (np.arange(base, dtype=np.float64) * dg + dev.g_min).astype(np.float32)
        t = np.array(w, np.float64)
        if lm.per_weight == 2:
            pos = t > 0
            np.abs(t, out=t)
            t /= lm.step
            np.rint(t, out=t)
            np.minimum(t, half - 1, out=t)
            q = t.astype(np.int64)
            del t
            sign = pos.astype(np.int64)  # digit d sits on G+ (d·1) or G- (d - d·1); the other: 0
            for s in range(lm.slices):
                d = (q >> (s * lm.cell_bits)) & (base - 1)
                dp = d * sign
                out[..., 2 * s] = levels[dp]
                d -= dp
                out[..., 2 * s + 1] = levels[d]
        else:
            t /= lm.step
            np.rint(t, out=t)
            t += half
            np.clip(t, 0, 2 * half - 1, out=t)
            q = t.astype(np.int64)
            del t
            for s in range(lm.slices):
                out[..., s] = levels[(q >> (s * lm.cell_bits)) & (base - 1)]
    return out.reshape(groups, rows, lm.phys_cols)


def map_weights(
    w: np.ndarray,
    *,
    layer: str,
    kind: str,
    cfg: ChipConfig,
    weight_bits: int,
    cell_bits: int,
    signing: str,
    slices: int,
) -> tuple[LayerMap, np.ndarray]:
    """``(plan_layer(...), conductances(...))`` in one call."""
    lm = plan_layer(
        w,
        layer=layer,
        kind=kind,
        cfg=cfg,
        weight_bits=weight_bits,
        cell_bits=cell_bits,
        signing=signing,
        slices=slices,
    )
    return lm, conductances(w, lm, cfg)


def split_planes(phys: np.ndarray, lm: LayerMap) -> tuple[np.ndarray, np.ndarray | None]:
    """``phys[G, R, Cp]`` → ``(gp[G, S, R, C], gn[G, S, R, C] or None)`` (copies)."""
    g, r, _ = phys.shape
    v = phys.reshape(g, r, lm.cols, lm.slices, lm.per_weight)
    gp = np.ascontiguousarray(v[..., 0].transpose(0, 3, 1, 2))
    gn = np.ascontiguousarray(v[..., 1].transpose(0, 3, 1, 2)) if lm.per_weight == 2 else None
    return gp, gn


def join_planes(gp: np.ndarray, gn: np.ndarray | None, lm: LayerMap) -> np.ndarray:
    """Inverse of :func:`split_planes`: ``phys[G, R, Cp]``."""
    g, s, r, c = gp.shape
    planes = [gp] if gn is None else [gp, gn]
    stack = np.stack([p.transpose(0, 2, 3, 1) for p in planes], axis=-1)  # G,R,C,S,D
    return np.ascontiguousarray(stack.reshape(g, r, c * s * lm.per_weight))


def effective_weights(gp: np.ndarray, gn: np.ndarray | None, lm: LayerMap) -> np.ndarray:
    """Weights the conductances represent: ``[G, R, C]`` (float64), offset included."""
    gd = gp.astype(np.float64) if gn is None else gp.astype(np.float64) - gn
    w: np.ndarray = np.einsum("s,gsrc->grc", np.asarray(lm.slice_w, np.float64), gd)
    return w - lm.offset


def tile_rects(tiles: Iterable[Tile], layer: str, replica: int = 0) -> list[Tile]:
    """The rectangles of one layer's replica."""
    return [t for t in tiles if t.layer == layer and t.replica == replica]


def scatter(phys: np.ndarray, rects: Iterable[Tile], out: np.ndarray) -> None:
    """Write a layer's ``phys[G, R, Cp]`` into the tile array ``out[T, Xr, Xc]``."""
    for t in rects:
        out[t.tile, t.trow : t.trow + t.rows, t.tcol : t.tcol + t.cols] = phys[
            t.group, t.row0 : t.row0 + t.rows, t.col0 : t.col0 + t.cols
        ]


def gather(tiles_g: np.ndarray, rects: Iterable[Tile], shape: tuple[int, int, int]) -> np.ndarray:
    """Read a layer's ``phys[G, R, Cp]`` back from the tile array (replica 0 rectangles)."""
    phys = np.full(shape, np.nan, np.float32)
    for t in rects:
        phys[t.group, t.row0 : t.row0 + t.rows, t.col0 : t.col0 + t.cols] = tiles_g[
            t.tile, t.trow : t.trow + t.rows, t.tcol : t.tcol + t.cols
        ]
    if np.isnan(phys).any():
        raise FormatError("tile table does not cover the layer's physical matrix")
    return phys
