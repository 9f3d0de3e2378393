"""The default compile pipeline, wired from a :class:`ChipConfig`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from xbarc.passes.base import Pass, PassManager
from xbarc.passes.canonicalize import Canonicalize
from xbarc.passes.config import ChipConfig
from xbarc.passes.lower_mvm import LowerToMVM
from xbarc.passes.pack import Pack
from xbarc.passes.partition import PartitionTiles, SliceAndSign
from xbarc.passes.periphery import InsertPeriphery
from xbarc.passes.replicate import Replicate


def default_passes(cfg: ChipConfig) -> list[Pass]:
    """The default passes, with options taken from ``cfg``.

    canonicalize → lower-to-mvm → slice-and-sign → partition-tiles → replicate → pack →
    insert-periphery.
    """
    return [
        Canonicalize(),
        LowerToMVM(),
        SliceAndSign(weight_bits=cfg.weight_bits, cell_bits=cfg.cell_bits, signing=cfg.signing),
        PartitionTiles(rows=cfg.tile_rows, cols=cfg.tile_cols),
        Replicate(max_replicas=cfg.replicate, tile_budget=cfg.tile_budget),
        Pack(mode=cfg.pack, tile_budget=cfg.tile_budget),
        InsertPeriphery(dac_bits=cfg.dac_bits, adc_bits=cfg.adc_bits),
    ]


def default_pipeline(
    cfg: ChipConfig,
    *,
    verify_each: bool = True,
    dump_dir: Path | None = None,
    on_pass: Callable[[Pass, int], None] | None = None,
) -> PassManager:
    """The pass manager for the default pipeline."""
    return PassManager(
        default_passes(cfg), verify_each=verify_each, dump_dir=dump_dir, on_pass=on_pass
    )
