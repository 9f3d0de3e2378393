"""The crossbar runtime: executes a mapped program on simulated tiles.

``Engine.load(path, ideal=False, seed=0)`` reads a mapped.bin, programs every crossbar layer's
conductances with the device model (``program_weights``) and runs ``forward``. Crossbar layers
go through the Cython kernels (DAC quantisation, tiled MVM with read noise and per-tile ADC,
partial sums over row tiles); digital ops run through the NumPy kernels of the reference
interpreter. Per-tile counters (MVMs, DAC/ADC conversions, cells read) accumulate across calls.

Ideal mode (``ideal=True``) switches every non-ideality off: float DAC/ADC, no read or
programming noise, no level quantisation, no stuck devices, no drift. Its outputs then equal
the reference interpreter's (and onnxruntime's) up to float rounding.

Converter ranges: each layer's DAC full scale and each tile's ADC full scale are calibrated on
the first batch the engine sees (``calibrate`` runs it through ideal converters and takes the
largest magnitude), unless the program already carries a calibration.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xbarc.backend import lower as backend
from xbarc.backend.conductance import LayerMap
from xbarc.backend.report import input_cycles, rect_counts
from xbarc.errors import XbarcError
from xbarc.ir import interp
from xbarc.ir import ops as O
from xbarc.ir.core import Graph, Node, Value
from xbarc.ir.types import Tile
from xbarc.passes.config import DeviceConfig
from xbarc.passes.lower_mvm import batch_of
from xbarc.runtime import device as dev_model
from xbarc.runtime.counters import DigitalCounters, TileCounters
from xbarc.runtime.kernels import Kernels, get_kernels

Array = np.ndarray[Any, Any]


@dataclass
class Layer:
    """Runtime state of one crossbar layer."""

    node_name: str
    op: O.XbarMVM
    lm: LayerMap
    rects: list[Tile]
    """All rectangles (every replica)."""
    gp: Array
    """Device states of the G+ (or offset) cells, ``[G, S, R, C]`` float32 µS."""
    gn: Array | None
    """Device states of the G- cells (differential), same shape, or None."""
    nu_p: Array | None = None
    nu_n: Array | None = None
    gdiff: Array = field(default_factory=lambda: np.zeros((0, 0, 0, 0), np.float32))
    """``gp - gn`` (or ``gp``) as read at the current time, ``[G, S, R, C]``."""
    rms: Array = field(default_factory=lambda: np.zeros((0, 0, 0, 0), np.float32))
    """rms conductance per (group, row block, slice, column) for the read-noise model."""
    dac_range: float = 0.0
    dac_signed: bool = True
    adc_range: Array = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))
    """ADC full scale per (group, row block, slice)."""
    rms_t: Array = field(default_factory=lambda: np.zeros((0, 0, 0, 0), np.float32))
    """rms conductance per (group, column block, slice, row) for the transposed read."""
    adc_range_t: Array = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))
    """ADC full scale of the transposed read per (group, column block, slice), for errors
    normalised to unit abs-max per vector (aihwkit-style noise management)."""

    @property
    def groups(self) -> int:
        return self.lm.groups

    @property
    def bias_index(self) -> int | None:
        return 2


def _peak(a: Array, percentile: float) -> float:
    """The ``percentile``-th percentile of ``|a|`` (the maximum for 100)."""
    if a.size == 0:
        return 0.0
    if percentile >= 100:
        return float(np.abs(a).max())
    return float(np.percentile(np.abs(a), percentile))


def _positions_split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if r < extra else 0) for r in range(parts)]


class Engine:
    """Executes a :class:`~xbarc.backend.lower.Program` on simulated crossbar tiles."""

    def __init__(
        self,
        program: backend.Program,
        *,
        ideal: bool = False,
        seed: int = 0,
        threads: int | None = None,
        kernels: str = "cython",
        t_read: float | None = None,
    ) -> None:
        self.program = program
        self.ideal = ideal
        self.seed = seed
        self.threads = threads or os.cpu_count() or 1
        self.k: Kernels = get_kernels(kernels)
        cfg = program.config
        self.device: DeviceConfig = cfg.device
        self.t_read = self.device.t_read if t_read is None else t_read
        self.dac_bits = 0 if ideal else cfg.dac_bits
        self.adc_bits = 0 if ideal else cfg.adc_bits
        self.read_noise = 0.0 if ideal else self.device.read_noise
        self.cycles = input_cycles(program)
        self.tile_rows, self.tile_cols = program.tile_shape
        self.counters = TileCounters.zeros(program.n_tiles)
        self.digital = DigitalCounters.zeros()
        self.samples = 0
        self.calibrated = False
        self.rng = np.random.default_rng([seed, 1])
        self._graphs: dict[int, Graph] = {}
        self.layers: dict[str, Layer] = {}
        self._build_layers()
        self.program_weights(seed)
        self._load_calibration()

    # ------------------------------------------------------------------ construction

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        ideal: bool = False,
        seed: int = 0,
        threads: int | None = None,
        kernels: str = "cython",
    ) -> Engine:
        """Read a mapped.bin and program its conductances."""
        return cls(backend.load(path), ideal=ideal, seed=seed, threads=threads, kernels=kernels)

    def _build_layers(self) -> None:
        g = self.program.graph
        for n in g.nodes:
            if not isinstance(n.op, O.XbarMVM):
                continue
            lm = self.program.layers[n.op.layer]
            gp, gn = self.program.layer_planes(n.op.layer)
            rects = [t for t in g.tiles if t.layer == n.op.layer]
            self.layers[n.op.layer] = Layer(n.name, n.op, lm, rects, gp, gn)
        self._targets = {
            k: (v.gp.copy(), None if v.gn is None else v.gn.copy()) for k, v in self.layers.items()
        }

    def program_weights(self, seed: int | None = None) -> None:
        """(Re)program every crossbar layer from its target conductances.

        A trained program (``state == "programmed"``) already holds device states; they are
        kept as they are. In ideal mode the targets are used exactly.
        """
        rng = np.random.default_rng([self.seed if seed is None else seed, 0])
        for name in sorted(self.layers):
            layer = self.layers[name]
            tp, tn = self._targets[name]
            if self.ideal or self.program.state == "programmed":
                layer.gp, layer.gn = tp.copy(), None if tn is None else tn.copy()
            else:
                layer.gp = dev_model.program(tp, self.device, rng)
                layer.gn = None if tn is None else dev_model.program(tn, self.device, rng)
            if not self.ideal:
                layer.nu_p = dev_model.drift_exponents(layer.gp.shape, self.device, rng)
                layer.nu_n = (
                    None
                    if layer.gn is None
                    else dev_model.drift_exponents(layer.gn.shape, self.device, rng)
                )
            self.refresh(layer)

    def refresh(self, layer: Layer) -> None:
        """Recompute ``gdiff`` and the read-noise rms after the conductances changed."""
        t = 0.0 if self.ideal else self.t_read
        gp = dev_model.drift(layer.gp, layer.nu_p, self.device, t)
        gn = None if layer.gn is None else dev_model.drift(layer.gn, layer.nu_n, self.device, t)
        layer.gdiff = np.ascontiguousarray(gp if gn is None else gp - gn, np.float32)
        if self.read_noise > 0:
            groups, s, r, c = gp.shape
            nr = math.ceil(r / self.tile_rows)
            rms = np.empty((groups, nr, s, c), np.float32)
            empty = np.zeros((0, 0, 0), np.float32)
            nc = math.ceil(c / self.col_block(layer))
            rms_t = np.empty((groups, nc, s, r), np.float32)
            for gi in range(groups):
                gpi = np.ascontiguousarray(gp[gi])
                gni = empty if gn is None else np.ascontiguousarray(gn[gi])
                self.k.rms_columns(gpi, gni, self.tile_rows, rms[gi], self.threads)
                self.k.rms_rows(gpi, gni, self.col_block(layer), rms_t[gi], self.threads)
            layer.rms = rms
            layer.rms_t = rms_t

    def _load_calibration(self) -> None:
        cal = self.program.extra.get("calibration")
        if not isinstance(cal, dict):
            return
        for name, c in cal.items():
            if name in self.layers:
                layer = self.layers[name]
                layer.dac_range = float(c["dac_range"])
                layer.dac_signed = bool(c["dac_signed"])
                layer.adc_range = np.asarray(c["adc_range"], np.float32)
                if "adc_range_t" in c:
                    layer.adc_range_t = np.asarray(c["adc_range_t"], np.float32)
        self.calibrated = all(layer.dac_range > 0 for layer in self.layers.values())

    def calibration(self) -> dict[str, Any]:
        """The converter ranges as JSON-able data (stored with trained programs)."""
        return {
            name: {
                "dac_range": layer.dac_range,
                "dac_signed": layer.dac_signed,
                "adc_range": layer.adc_range.tolist(),
                "adc_range_t": layer.adc_range_t.tolist(),
            }
            for name, layer in self.layers.items()
        }

    # ------------------------------------------------------------------ execution

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample input shape."""
        return self.program.graph.inputs[0].type.shape[1:]

    def graph_for(self, batch: int) -> Graph:
        """The program graph instantiated at ``batch`` (cached)."""
        g = self.program.graph
        if g.batch is None:
            return g
        if batch not in self._graphs:
            self._graphs[batch] = g if batch == g.batch else g.at_batch(batch)
        return self._graphs[batch]

    def forward(self, x: Array, *, tape: list[Any] | None = None) -> Array:
        """Run the program on a batch ``x[N, ...]``; returns the first graph output.

        Programs with a fixed batch size run in chunks of that size (the last one padded).
        """
        x = np.ascontiguousarray(x, np.float32)
        want = self.input_shape
        if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"forward: x has shape {x.shape}, expected (N, {', '.join(map(str, want))})"
            )
        if not self.calibrated:
            self.calibrate(x)
        g = self.program.graph
        if g.batch is None:
            b0 = g.inputs[0].type.shape[0]
            outs = []
            for i in range(0, x.shape[0], b0):
                chunk = x[i : i + b0]
                n = chunk.shape[0]
                if n < b0:
                    chunk = np.concatenate([chunk, np.zeros((b0 - n, *want), np.float32)])
                outs.append(self._run(g, chunk, tape)[0][:n])
            return np.concatenate(outs)
        return self._run(self.graph_for(x.shape[0]), x, tape)[0]

    def _run(self, g: Graph, x: Array, tape: list[Any] | None) -> list[Array]:
        env: dict[int, Array] = {id(g.inputs[0]): x}
        batch = batch_of(g)

        def fetch(v: Value) -> Array:
            return v.const if v.const is not None else env[id(v)]

        for node in g.nodes:
            args = [fetch(v) for v in node.inputs]
            if isinstance(node.op, O.XbarMVM):
                y, aux = self._xbar(node, args)
                outs: tuple[Array, ...] = (y,)
            else:
                outs = interp.eval_node(node, args)
                aux = None
                if node.placement is not None:
                    self.digital.macs += node.placement.macs * batch
                    self.digital.elem_ops += node.placement.elem_ops * batch
            for v, y in zip(node.outputs, outs, strict=True):
                env[id(v)] = y
            if tape is not None:
                tape.append((node, args, outs, aux))
        self.samples += batch
        return [fetch(v) for v in g.outputs]

    # ------------------------------------------------------------------ crossbar layers

    def _im2col(self, node: Node, x: Array) -> tuple[Array, tuple[int, ...]]:
        op = node.op
        assert isinstance(op, O.XbarMVM)
        n, c = x.shape[:2]
        kh, kw = op.kernel
        ho, wo = node.outputs[0].type.shape[2:]
        cols = np.empty((n * ho * wo, c * kh * kw), np.float32)
        self.k.im2col(
            np.ascontiguousarray(x, np.float32),
            kh,
            kw,
            op.strides[0],
            op.strides[1],
            op.pads[0],
            op.pads[1],
            op.pads[2],
            op.pads[3],
            op.dilations[0],
            op.dilations[1],
            cols,
            self.threads,
        )
        return cols, (n, ho, wo)

    def layer_inputs(self, node: Node, x: Array) -> tuple[list[Array], tuple[int, ...]]:
        """Per-group input matrices ``[P, R]`` of a crossbar layer (im2col for convs)."""
        op = node.op
        assert isinstance(op, O.XbarMVM)
        layer = self.layers[op.layer]
        r = layer.lm.rows
        if op.kind == "linear":
            return [np.array(x.reshape(-1, r), np.float32)], x.shape[:-1]
        if op.kind != "conv" or len(op.kernel) != 2:
            raise XbarcError(f"layer {op.layer!r}: unsupported crossbar op kind {op.kind!r}")
        cols, lead = self._im2col(node, x)
        if layer.groups == 1:
            return [cols], lead
        return [
            np.ascontiguousarray(cols[:, gi * r : (gi + 1) * r]) for gi in range(layer.groups)
        ], lead

    def _xbar(self, node: Node, args: list[Array]) -> tuple[Array, Any]:
        op = node.op
        assert isinstance(op, O.XbarMVM)
        layer = self.layers[op.layer]
        xs, lead = self.layer_inputs(node, args[0])
        outs = []
        for gi, xg in enumerate(xs):
            if self.dac_bits:
                self.k.quantize(
                    xg.reshape(-1), self.dac_bits, layer.dac_range, layer.dac_signed, self.threads
                )
            outs.append(self.mvm(layer, gi, xg))
        y = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)
        if len(args) == 3:
            y += args[2]
        self._count(layer, xs[0].shape[0])
        if op.kind == "linear":
            return y.reshape(*lead, -1), xs
        n, ho, wo = lead
        out = np.ascontiguousarray(y.reshape(n, ho * wo, -1).transpose(0, 2, 1))
        return out.reshape(n, -1, ho, wo), xs

    def mvm(self, layer: Layer, gi: int, x: Array) -> Array:
        """Forward MVM of one group on the tiles: ``[P, R] → [P, C]`` (no bias)."""
        lm = layer.lm
        p = x.shape[0]
        s, r, c = layer.gdiff.shape[1:]
        out = np.empty((p, c), np.float32)
        work = np.empty((p, c), np.float32)
        nr = math.ceil(r / self.tile_rows)
        if self.read_noise > 0:
            noise = self.rng.standard_normal((nr, s, p, c), dtype=np.float32)
            rms = layer.rms[gi]
        else:
            noise = np.zeros((0, 0, 0, 0), np.float32)
            rms = np.zeros((0, 0, 0), np.float32)
        adc = layer.adc_range[gi] if self.adc_bits else np.zeros((nr, s), np.float32)
        self.k.mvm_forward(
            x,
            layer.gdiff[gi],
            np.asarray(lm.slice_w, np.float32),
            self.tile_rows,
            self.adc_bits,
            adc,
            self.read_noise,
            rms,
            noise,
            work,
            out,
            self.threads,
        )
        if lm.offset:
            out -= np.float32(lm.offset) * x.sum(axis=1, keepdims=True)
        return out

    def _count(self, layer: Layer, positions: int) -> None:
        """Add one execution's per-tile work: ``positions`` MVMs per group, split over replicas."""
        reps = layer.op.replicas
        share = _positions_split(positions, reps)
        for t in layer.rects:
            n = share[t.replica]
            d, a, c = rect_counts(t, layer.lm.per_weight, self.cycles)
            self.counters.mvm[t.tile] += n
            self.counters.dac[t.tile] += n * d
            self.counters.adc[t.tile] += n * a
            self.counters.cell_reads[t.tile] += n * c

    def col_block(self, layer: Layer) -> int:
        """Logical columns of one layer a tile holds (for the transposed read's partial sums)."""
        return max(1, (self.tile_cols // layer.lm.per_weight) // max(1, layer.lm.slices))

    def backward_xbar(
        self, node: Node, args: list[Array], gy: Array, xs: list[Array]
    ) -> tuple[Array, Array, Array | None]:
        """Gradients of a crossbar layer: ``(dL/dx, dL/dW[G, R, C], dL/db)``.

        ``dL/dx`` comes from the transposed MVM on the same tiles (DAC on the errors, per-tile
        ADC on the row outputs, read noise); ``dL/dW`` is formed digitally from the applied
        inputs ``xs`` (as quantised by the DAC) and the errors.
        """
        op = node.op
        assert isinstance(op, O.XbarMVM)
        layer = self.layers[op.layer]
        groups, cols = layer.groups, layer.lm.cols
        if op.kind == "linear":
            dy = np.ascontiguousarray(gy.reshape(-1, cols), np.float32)
        else:
            n, gc = gy.shape[:2]
            dy = np.ascontiguousarray(
                gy.reshape(n, gc, -1).transpose(0, 2, 1).reshape(-1, gc), np.float32
            )
        gb = dy.sum(axis=0) if len(args) == 3 else None
        gw = np.empty((groups, layer.lm.rows, cols), np.float32)
        dxs = []
        for gi in range(groups):
            dyg = dy if groups == 1 else np.ascontiguousarray(dy[:, gi * cols : (gi + 1) * cols])
            np.matmul(xs[gi].T, dyg, out=gw[gi])
            dxs.append(self.mvm_t(layer, gi, dyg))
        self._count_t(layer, dy.shape[0])
        self.digital.macs += dy.shape[0] * groups * layer.lm.rows * cols
        if op.kind == "linear":
            return dxs[0].reshape(args[0].shape), gw, gb
        cols_all = dxs[0] if groups == 1 else np.concatenate(dxs, axis=1)
        x = args[0]
        gx = np.empty(x.shape, np.float32)
        kh, kw = op.kernel
        self.k.col2im(
            np.ascontiguousarray(cols_all),
            x.shape[0],
            x.shape[1],
            x.shape[2],
            x.shape[3],
            kh,
            kw,
            op.strides[0],
            op.strides[1],
            op.pads[0],
            op.pads[1],
            op.pads[2],
            op.pads[3],
            op.dilations[0],
            op.dilations[1],
            gx,
            self.threads,
        )
        return gx, gw, gb

    def mvm_t(self, layer: Layer, gi: int, dy: Array) -> Array:
        """Transposed MVM of one group on the tiles: ``[P, C] → [P, R]``."""
        lm = layer.lm
        p = dy.shape[0]
        s, r, c = layer.gdiff.shape[1:]
        cb = self.col_block(layer)
        nc = math.ceil(c / cb)
        scale = np.abs(dy).max(axis=1, keepdims=True) if p else np.zeros((0, 1), np.float32)
        scale[scale == 0] = 1.0
        dyn = np.ascontiguousarray(dy / scale, np.float32)
        if self.dac_bits:
            self.k.quantize(dyn.reshape(-1), self.dac_bits, 1.0, True, self.threads)
        if self.adc_bits and layer.adc_range_t.size == 0:
            layer.adc_range_t = self._adc_ranges_t(layer, dyn)
        out = np.empty((p, r), np.float32)
        work = np.empty((p, r), np.float32)
        if self.read_noise > 0:
            noise = self.rng.standard_normal((nc, s, p, r), dtype=np.float32)
            rms = layer.rms_t[gi]
        else:
            noise = np.zeros((0, 0, 0, 0), np.float32)
            rms = np.zeros((0, 0, 0), np.float32)
        adc = layer.adc_range_t[gi] if self.adc_bits else np.zeros((nc, s), np.float32)
        self.k.mvm_backward(
            dyn,
            layer.gdiff[gi],
            np.asarray(lm.slice_w, np.float32),
            cb,
            self.adc_bits,
            adc,
            self.read_noise,
            rms,
            noise,
            work,
            out,
            self.threads,
        )
        out *= scale
        if lm.offset:
            out -= np.float32(lm.offset) * dy.sum(axis=1, keepdims=True)
        return out

    def _adc_ranges_t(self, layer: Layer, dyn: Array) -> Array:
        s, _, c = layer.gdiff.shape[1:]
        cb = self.col_block(layer)
        nc = math.ceil(c / cb)
        out = np.zeros((layer.groups, nc, s), np.float32)
        for gi in range(layer.groups):
            for b in range(nc):
                cols = slice(b * cb, min(c, (b + 1) * cb))
                for si in range(s):
                    part = dyn[:, cols] @ layer.gdiff[gi, si][:, cols].T
                    out[gi, b, si] = max(float(np.abs(part).max()) if part.size else 0.0, 1e-12)
        return out

    def _count_t(self, layer: Layer, positions: int) -> None:
        share = _positions_split(positions, layer.op.replicas)
        for t in layer.rects:
            n = share[t.replica]
            self.counters.mvm_t[t.tile] += n
            self.counters.dac[t.tile] += n * (t.cols // layer.lm.per_weight) * self.cycles
            self.counters.adc[t.tile] += n * t.rows * self.cycles
            self.counters.cell_reads[t.tile] += n * t.rows * t.cols * self.cycles

    # ------------------------------------------------------------------ calibration

    def calibrate(self, x: Array, *, percentile: float = 100.0) -> None:
        """Set converter full scales from an ideal-converter pass over ``x``.

        The DAC range of a layer is the largest |input|; the ADC range of each (group, row
        block, slice) the largest |partial sum| (both at ``percentile``).
        """
        saved = (self.dac_bits, self.adc_bits, self.read_noise)
        self.dac_bits, self.adc_bits, self.read_noise = 0, 0, 0.0
        self.calibrated = True  # so forward does not recurse
        counters, digital, samples = self.counters.copy(), self.digital.copy(), self.samples
        tape: list[Any] = []
        try:
            self.forward(x, tape=tape)
        finally:
            self.dac_bits, self.adc_bits, self.read_noise = saved
            self.counters, self.digital, self.samples = counters, digital, samples
        for node, _args, _outs, xs in tape:
            if not isinstance(node.op, O.XbarMVM):
                continue
            layer = self.layers[node.op.layer]
            layer.dac_range = max(max(_peak(xg, percentile) for xg in xs), 1e-12)
            layer.dac_signed = any(bool((xg < 0).any()) for xg in xs)
            layer.adc_range = self._adc_ranges(layer, xs, percentile)
        # Read-noise needs rms; refresh in case it was off before.
        for layer in self.layers.values():
            if self.read_noise > 0 and layer.rms.size == 0:
                self.refresh(layer)

    def _adc_ranges(self, layer: Layer, xs: Sequence[Array], percentile: float) -> Array:
        s, r = layer.gdiff.shape[1:3]
        nr = math.ceil(r / self.tile_rows)
        out = np.zeros((layer.groups, nr, s), np.float32)
        for gi, xg in enumerate(xs):
            xq = xg.copy()
            if self.dac_bits:
                self.k.quantize(xq.reshape(-1), self.dac_bits, layer.dac_range, layer.dac_signed, 1)
            for b in range(nr):
                rows = slice(b * self.tile_rows, min(r, (b + 1) * self.tile_rows))
                for si in range(s):
                    part = xq[:, rows] @ layer.gdiff[gi, si, rows]
                    out[gi, b, si] = max(_peak(part, percentile), 1e-12)
        return out
