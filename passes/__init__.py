"""Compiler passes: canonicalize, lower to crossbar MVMs, slice/sign, tile, replicate, pack."""

from __future__ import annotations

from xbarc.passes.base import Pass, PassManager, PassResult, apply_rules
from xbarc.passes.canonicalize import Canonicalize
from xbarc.passes.config import ChipConfig, DeviceConfig, parse_tile
from xbarc.passes.lower_mvm import LowerToMVM
from xbarc.passes.pack import Pack
from xbarc.passes.partition import Geometry, PartitionTiles, SliceAndSign, geometry
from xbarc.passes.periphery import InsertPeriphery
from xbarc.passes.pipeline import default_passes, default_pipeline
from xbarc.passes.replicate import Replicate

__all__ = [
    "Canonicalize",
    "ChipConfig",
    "DeviceConfig",
    "Geometry",
    "InsertPeriphery",
    "LowerToMVM",
    "Pack",
    "PartitionTiles",
    "Pass",
    "PassManager",
    "PassResult",
    "Replicate",
    "SliceAndSign",
    "apply_rules",
    "default_passes",
    "default_pipeline",
    "geometry",
    "parse_tile",
]
