"""insert-periphery: DAC/ADC resolution on every crossbar layer, device model on every tile."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from xbarc.ir import ops as O
from xbarc.ir.core import Graph
from xbarc.passes.base import Pass
from xbarc.passes.partition import crossbar_nodes


@dataclass(frozen=True)
class InsertPeriphery(Pass):
    """Sets converter resolution on crossbar layers and the device model on tiles.

    Sets ``dac_bits`` (input DACs) and ``adc_bits`` (column ADCs) on each ``xbar.mvm`` and
    names the device model of each tile. The converters sit inside the crossbar op because the
    ADC digitises each tile's partial sum before the digital accumulation over row tiles; the
    device parameters themselves live in the chip configuration stored with the program.
    """

    name = "insert-periphery"
    dac_bits: int = 8
    adc_bits: int = 8
    device: str = "default"

    def run(self, g: Graph) -> bool:
        for n in crossbar_nodes(g):
            assert isinstance(n.op, O.XbarMVM)
            g.replace_op(
                n, dataclasses.replace(n.op, dac_bits=self.dac_bits, adc_bits=self.adc_bits)
            )
        g.tiles = [dataclasses.replace(t, device=self.device) for t in g.tiles]
        return True
