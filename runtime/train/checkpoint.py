"""Checkpoints and the trained program: device states, wear, optimiser state, history."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xbarc.backend import lower as backend
from xbarc.backend.conductance import join_planes, scatter
from xbarc.errors import XbarcError
from xbarc.runtime.counters import DigitalCounters, TileCounters
from xbarc.runtime.train.state import EpochRecord
from xbarc.runtime.train.wear import wear_tiles

if TYPE_CHECKING:
    from xbarc.runtime.train.loop import Trainer

Array = np.ndarray[Any, Any]


def trained_program(tr: Trainer) -> backend.Program:
    """The program with the current device states, wear, calibration and history."""
    eng = tr.engine
    p = eng.program
    rows, cols = p.tile_shape
    tiles_g = np.zeros((p.n_tiles, rows, cols), np.float32)
    for _name, layer in eng.layers.items():
        phys = join_planes(layer.gp, layer.gn, layer.lm)
        scatter(phys, layer.rects, tiles_g)
    extra = {k: v for k, v in p.extra.items() if k != "checkpoint"}
    extra["calibration"] = eng.calibration()
    tiles = eng.counters.to_dict()
    extra["training"] = {
        "runs": [
            *p.extra.get("training", {}).get("runs", []),
            {
                "config": asdict(tr.cfg),
                "epochs": len(tr.history),
                "final_test_acc": tr.history[-1].test_acc if tr.history else None,
                "tile_counters": {
                    f: tiles[f]
                    for f in (
                        "updates_requested",
                        "updates_applied",
                        "updates_skipped",
                        "write_pulses",
                    )
                },
            },
        ],
    }
    return backend.Program(
        p.graph,
        p.config,
        p.layers,
        p.source,
        tiles_g,
        "programmed",
        wear_tiles(tr),
        extra,
        {k: v for k, v in p.extra_arrays.items() if not k.startswith("train/")},
    )


def state_arrays(tr: Trainer) -> dict[str, Array]:
    """Optimiser and bookkeeping state as named arrays (for checkpoints)."""
    out: dict[str, Array] = {}
    for name, st in tr.states.items():
        for f in ("m", "v", "chi", "wear_p", "wear_n"):
            out[f"train/{name}/{f}"] = getattr(st, f)
    for i, key in enumerate(sorted(tr.params, key=lambda k: param_order(tr, k))):
        out[f"train/param/{i}/m"] = tr.param_m[key]
        out[f"train/param/{i}/v"] = tr.param_v[key]
    out["train/counters"] = np.stack([getattr(tr.engine.counters, f) for f in TileCounters.FIELDS])
    return out


def param_order(tr: Trainer, key: int) -> int:
    for i, v in enumerate(tr.engine.program.graph.constants()):
        if v.const is not None and id(v.const) == key:
            return i
    return -1


def checkpoint(tr: Trainer, path: Path) -> None:
    """Write an atomic checkpoint: trained program + training state (resumable)."""
    p = trained_program(tr)
    # wear in the checkpoint must stay the *initial* wear plus this run: store the run's
    # own wear separately so resuming does not count it twice.
    p.wear = tr.engine.program.wear
    # likewise the run list: this run is recorded once, when the trained program is written
    runs = tr.engine.program.extra.get("training")
    if runs is None:
        p.extra.pop("training", None)
    else:
        p.extra["training"] = runs
    p.extra["checkpoint"] = {
        "epoch": tr.epoch,
        "step": tr.step_count,
        "history": [asdict(h) for h in tr.history],
        "per_epoch_tiles": tr.per_epoch_tiles,
        "config": asdict(tr.cfg),
        "digital": tr.engine.digital.to_dict(),
        "samples": tr.engine.samples,
    }
    p.extra_arrays.update(state_arrays(tr))
    backend.save(p, path)


def restore(tr: Trainer, p: backend.Program) -> None:
    """Continue from a checkpoint program (its device states are already loaded)."""
    ck = p.extra.get("checkpoint")
    if not isinstance(ck, dict):
        raise XbarcError("the file to resume from is not a training checkpoint")
    saved_cfg = dict(ck["config"])
    mine = asdict(tr.cfg)
    diff = {k for k in mine if k not in ("epochs", "limit") and saved_cfg.get(k) != mine[k]}
    if diff:
        raise XbarcError(f"cannot resume: options differ from the checkpoint in {sorted(diff)}")
    a = p.extra_arrays
    for name, st in tr.states.items():
        for f in ("m", "v", "chi", "wear_p", "wear_n"):
            arr = a.get(f"train/{name}/{f}")
            if arr is None or arr.shape != getattr(st, f).shape:
                raise XbarcError(f"checkpoint lacks optimiser state train/{name}/{f}")
            getattr(st, f)[...] = arr
    for i, key in enumerate(sorted(tr.params, key=lambda k: param_order(tr, k))):
        tr.param_m[key][...] = a[f"train/param/{i}/m"]
        tr.param_v[key][...] = a[f"train/param/{i}/v"]
    counters = a["train/counters"]
    for j, f in enumerate(TileCounters.FIELDS):
        getattr(tr.engine.counters, f)[...] = counters[j]
    tr.engine.digital = DigitalCounters.from_dict(ck["digital"])
    tr.engine.samples = int(ck["samples"])
    tr.epoch = int(ck["epoch"])
    tr.step_count = int(ck["step"])
    tr.history = [EpochRecord(**h) for h in ck["history"]]
    tr.per_epoch_tiles = list(ck["per_epoch_tiles"])
