"""Converter ranges: DAC and per-tile ADC full scales, calibrated on data or loaded from a file.

A non-ideal engine calibrates on the first batch it sees (:func:`calibrate` runs it through
ideal converters and takes the largest magnitude, or a percentile), unless the program already
carries a calibration (:func:`load`, written by :func:`to_json` with trained programs). An
ideal engine has no converter ranges to set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from xbarc.ir import ops as O
from xbarc.runtime.crossbar import Layer

if TYPE_CHECKING:
    from xbarc.runtime.engine import Engine

Array = np.ndarray[Any, Any]


def _peak(a: Array, percentile: float) -> float:
    """The ``percentile``-th percentile of ``|a|`` (the maximum for 100)."""
    if a.size == 0:
        return 0.0
    if percentile >= 100:
        return float(np.abs(a).max())
    return float(np.percentile(np.abs(a), percentile))


def calibrate(eng: Engine, x: Array, *, percentile: float = 100.0) -> None:
    """Set converter full scales from an ideal-converter pass over ``x``.

    The DAC range of a layer is the largest |input|; the ADC range of each (group, row block,
    slice) the largest |partial sum| (both at ``percentile``).
    """
    saved = (eng.dac_bits, eng.adc_bits, eng.read_noise)
    eng.dac_bits, eng.adc_bits, eng.read_noise = 0, 0, 0.0
    eng.calibrated = True  # so forward does not recurse
    counters, digital, samples = eng.counters.copy(), eng.digital.copy(), eng.samples
    tape: list[Any] = []
    try:
        eng.forward(x, tape=tape)
    finally:
        eng.dac_bits, eng.adc_bits, eng.read_noise = saved
        eng.counters, eng.digital, eng.samples = counters, digital, samples
    for node, _args, _outs, xs in tape:
        if not isinstance(node.op, O.XbarMVM):
            continue
        layer = eng.layers[node.op.layer]
        layer.dac_range = max(max(_peak(xg, percentile) for xg in xs), 1e-12)
        layer.dac_signed = any(bool((xg < 0).any()) for xg in xs)
        layer.adc_range = _adc_ranges(eng, layer, xs, percentile)
    # Read-noise needs rms; refresh in case it was off before.
    for layer in eng.layers.values():
        if eng.read_noise > 0 and layer.rms.size == 0:
            eng.refresh(layer)


def _adc_ranges(eng: Engine, layer: Layer, xs: Sequence[Array], percentile: float) -> Array:
    s, r = layer.gdiff.shape[1:3]
    nr = math.ceil(r / eng.tile_rows)
    out = np.zeros((layer.groups, nr, s), np.float32)
    for gi, xg in enumerate(xs):
        xq = xg.copy()
        if eng.dac_bits:
            eng.k.quantize(xq.reshape(-1), eng.dac_bits, layer.dac_range, layer.dac_signed, 1)
        for b in range(nr):
            rows = slice(b * eng.tile_rows, min(r, (b + 1) * eng.tile_rows))
            for si in range(s):
                part = xq[:, rows] @ layer.gdiff[gi, si, rows]
                out[gi, b, si] = max(_peak(part, percentile), 1e-12)
    return out


def load(eng: Engine) -> None:
    """Take the converter ranges a program carries (``extra["calibration"]``), if any."""
    cal = eng.program.extra.get("calibration")
    if not isinstance(cal, dict):
        return
    for name, c in cal.items():
        if name in eng.layers:
            layer = eng.layers[name]
            layer.dac_range = float(c["dac_range"])
            layer.dac_signed = bool(c["dac_signed"])
            layer.adc_range = np.asarray(c["adc_range"], np.float32)
            if "adc_range_t" in c:
                layer.adc_range_t = np.asarray(c["adc_range_t"], np.float32)
    eng.calibrated = all(layer.dac_range > 0 for layer in eng.layers.values())


def to_json(eng: Engine) -> dict[str, Any]:
    """The converter ranges as JSON-able data (stored with trained programs)."""
    return {
        name: {
            "dac_range": layer.dac_range,
            "dac_signed": layer.dac_signed,
            "adc_range": layer.adc_range.tolist(),
            "adc_range_t": layer.adc_range_t.tolist(),
        }
        for name, layer in eng.layers.items()
    }
