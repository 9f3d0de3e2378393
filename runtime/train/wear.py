"""Device wear: writes per tile cell, and how much of the endurance a run used."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from xbarc.backend.conductance import join_planes

if TYPE_CHECKING:
    from xbarc.runtime.train.loop import Trainer

Array = np.ndarray[Any, Any]


def wear_tiles(tr: Trainer) -> Array:
    """Writes per tile cell ``[T, rows, cols]`` including the program's earlier wear."""
    p = tr.engine.program
    t = p.n_tiles
    rows, cols = p.tile_shape
    wear = np.zeros((t, rows, cols), np.int64) if p.wear is None else np.array(p.wear, np.int64)
    for name, st in tr.states.items():
        layer = tr.engine.layers[name]
        g, s, r, c = layer.gp.shape
        wp = st.wear_p.reshape(g, s, r, c)
        wn = st.wear_n.reshape(g, s, r, c) if layer.gn is not None else None
        phys = join_planes(wp, wn, layer.lm).astype(np.int64)
        for t_ in layer.rects:  # every replica is written alike
            wear[t_.tile, t_.trow : t_.trow + t_.rows, t_.tcol : t_.tcol + t_.cols] += phys[
                t_.group, t_.row0 : t_.row0 + t_.rows, t_.col0 : t_.col0 + t_.cols
            ]
    return wear


def used_mask(tr: Trainer) -> Array:
    """Which tile cells hold a weight ``[T, rows, cols]``."""
    p = tr.engine.program
    rows, cols = p.tile_shape
    used = np.zeros((p.n_tiles, rows, cols), bool)
    for t in p.graph.tiles:
        used[t.tile, t.trow : t.trow + t.rows, t.tcol : t.tcol + t.cols] = True
    return used


def wear_summary(tr: Trainer, endurance: float) -> dict[str, Any]:
    """Writes per device (max, p99, mean over used devices) and remaining endurance."""
    wear = wear_tiles(tr)
    used = used_mask(tr)
    vals = wear[used] if used.any() else np.zeros(1, np.int64)
    per_tile = []
    for k in range(wear.shape[0]):
        u = used[k]
        w = wear[k][u] if u.any() else np.zeros(1, np.int64)
        per_tile.append(
            {
                "tile": k,
                "max": int(w.max()),
                "mean": float(w.mean()),
                "remaining": float(max(0.0, 1 - w.max() / endurance)),
            }
        )
    epochs = max(1, len(tr.history))
    worst_per_epoch = float(vals.max()) / epochs
    return {
        "endurance": endurance,
        "max": int(vals.max()),
        "p99": float(np.percentile(vals, 99)),
        "mean": float(vals.mean()),
        "epochs_to_endurance": (endurance / worst_per_epoch) if worst_per_epoch > 0 else None,
        "per_tile": per_tile,
    }
