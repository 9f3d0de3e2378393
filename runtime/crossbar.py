"""Crossbar layers on simulated tiles: the state of each layer and every read of its tiles.

:class:`Layer` holds one crossbar layer's device states (``G+``/``G-`` planes), what is read from
them (``gdiff``), the read-noise rms tables and the converter ranges. :class:`CrossbarReads` is
the engine's crossbar unit: the forward MVM (DAC → tiles → per-tile ADC, read noise), the
transposed MVM of the backward pass, convolutions through im2col (streamed, or as cache-sized
work items on ideal tiles), the digital weight gradient, and the per-tile counters of that work.
It reads the run's settings from its :class:`~xbarc.runtime.engine.Engine` (converter bits,
read noise, threads, kernels, the noise generator and the counters, which calibration and
evaluation swap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from xbarc.backend.conductance import LayerMap
from xbarc.backend.report import rect_counts
from xbarc.errors import XbarcError
from xbarc.ir import ops as O
from xbarc.ir.core import Node
from xbarc.ir.types import Tile
from xbarc.runtime import device as dev_model

if TYPE_CHECKING:
    from xbarc.runtime.engine import Engine

Array = np.ndarray[Any, Any]

STREAM_BYTES = 1 << 21
"""Target size of one chunk's im2col matrix in :meth:`CrossbarReads._conv_streamed`: about a
core's L2 cache (1 to 2 MiB measured best for ResNet-8 on a core with 1 MiB of L2)."""
_EMPTY3 = np.zeros((0, 0, 0), np.float32)


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


def window(op: O.XbarMVM) -> tuple[int, ...]:
    """A 2-D conv's window as the kernels take it: kh, kw, sh, sw, ph0, pw0, ph1, pw1, dh, dw."""
    kh, kw = op.kernel
    return (kh, kw, *op.strides, *op.pads, *op.dilations)


def _row_absmax(a: Array) -> Array:
    """``max(|a|, axis=1, keepdims=True)`` of a 2-D array (``[P, 1]``; zeros when 0 columns).

    NumPy reduces a short last axis row by row, slowly (about 1 ms for the 37k x 6 errors of a
    LeNet conv); for up to 64 columns a running maximum over the columns is used instead.
    """
    p, c = a.shape
    if c == 0 or p == 0:
        return np.zeros((p, 1), a.dtype)
    if c > 64:
        return np.asarray(np.abs(a).max(axis=1, keepdims=True))
    out = np.abs(a[:, 0])
    for j in range(1, c):
        np.maximum(out, np.abs(a[:, j]), out=out)
    return out.reshape(p, 1)


def _positions_split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if r < extra else 0) for r in range(parts)]


class CrossbarReads:
    """Every read of an engine's crossbar tiles (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.e = engine

    def refresh(self, layer: Layer) -> None:
        """Recompute ``gdiff`` and the read-noise rms after the conductances changed."""
        t = 0.0 if self.e.ideal else self.e.t_read
        gp = dev_model.drift(layer.gp, layer.nu_p, self.e.device, t)
        gn = None if layer.gn is None else dev_model.drift(layer.gn, layer.nu_n, self.e.device, t)
        layer.gdiff = np.ascontiguousarray(gp if gn is None else gp - gn, np.float32)
        if self.e.read_noise > 0:
            groups, s, r, c = gp.shape
            nr = math.ceil(r / self.e.tile_rows)
            rms = np.empty((groups, nr, s, c), np.float32)
            empty = np.zeros((0, 0, 0), np.float32)
            nc = math.ceil(c / self.col_block(layer))
            rms_t = np.empty((groups, nc, s, r), np.float32)
            for gi in range(groups):
                gpi = np.ascontiguousarray(gp[gi])
                gni = empty if gn is None else np.ascontiguousarray(gn[gi])
                self.e.k.rms_columns(gpi, gni, self.e.tile_rows, rms[gi], self.e.threads)
                self.e.k.rms_rows(gpi, gni, self.col_block(layer), rms_t[gi], self.e.threads)
            layer.rms = rms
            layer.rms_t = rms_t

    def _im2col(self, node: Node, x: Array) -> tuple[Array, tuple[int, ...]]:
        n, c = x.shape[:2]
        kh, kw = node.op.kernel  # type: ignore[attr-defined]
        ho, wo = node.outputs[0].type.shape[2:]
        cols = np.empty((n * ho * wo, c * kh * kw), np.float32)
        self._im2col_into(node, np.ascontiguousarray(x, np.float32), cols, self._omp_threads())
        return cols, (n, ho, wo)

    def _omp_threads(self) -> int:
        """OpenMP threads for im2col/quantize.

        An ideal engine's MVM is a BLAS call, threaded by BLAS: OpenMP regions between BLAS
        calls would leave the two thread pools spinning against each other (one level of
        parallelism per path, as in the kernels), so the ideal path's im2col runs on the
        calling thread. The non-ideal MVM is OpenMP-parallel itself.
        """
        return 1 if self._ideal() else self.e.threads

    def _ideal(self) -> bool:
        """No DAC or ADC quantisation and no read noise: MVMs are exact products."""
        return not (self.e.dac_bits or self.e.adc_bits or self.e.read_noise)

    def _im2col_into(self, node: Node, x: Array, cols: Array, threads: int) -> None:
        op = node.op
        assert isinstance(op, O.XbarMVM)
        self.e.k.im2col(
            x,
            *window(op),
            cols,
            threads,
        )

    def layer_inputs(self, node: Node, x: Array) -> tuple[list[Array], tuple[int, ...]]:
        """Per-group input matrices ``[P, R]`` of a crossbar layer (im2col for convs)."""
        op = node.op
        assert isinstance(op, O.XbarMVM)
        layer = self.e.layers[op.layer]
        r = layer.lm.rows
        if op.kind == "linear":
            flat = x.reshape(-1, r)
            # the DAC quantises in place: copy then; else the (contiguous) input itself
            xg = np.array(flat, np.float32) if self.e.dac_bits else np.ascontiguousarray(flat)
            return [xg], x.shape[:-1]
        if op.kind != "conv" or len(op.kernel) != 2:
            raise XbarcError(f"layer {op.layer!r}: unsupported crossbar op kind {op.kind!r}")
        cols, lead = self._im2col(node, x)
        if layer.groups == 1:
            return [cols], lead
        return [
            np.ascontiguousarray(cols[:, gi * r : (gi + 1) * r]) for gi in range(layer.groups)
        ], lead

    def _whole_conv(self, node: Node) -> bool:
        """A 2-D single-group convolution (it can run without materialising its im2col)."""
        op = node.op
        assert isinstance(op, O.XbarMVM)
        layer = self.e.layers[op.layer]
        return op.kind == "conv" and layer.groups == 1 and len(op.kernel) == 2

    def runs_conv_ideal(self, node: Node) -> bool:
        """Whether an inference forward runs ``node`` through :meth:`_conv_ideal`."""
        op = node.op
        assert isinstance(op, O.XbarMVM)
        return self._whole_conv(node) and self._ideal() and not self.e.layers[op.layer].lm.offset

    def run(
        self,
        node: Node,
        args: list[Array],
        *,
        keep: bool = True,
        relu: bool = False,
        residual: Array | None = None,
    ) -> tuple[Array, Any]:
        """Run one crossbar layer; returns its output and (with ``keep``) its layer inputs.

        Without ``keep`` (no tape), a single-group convolution runs as cache-sized work items
        when the engine is ideal (:meth:`_conv_ideal`, any thread count; it adds ``residual``
        and applies ``relu`` to its output, see :func:`~xbarc.runtime.fusion.fusions_for`);
        else a single-threaded
        engine streams it through im2col in chunks of images (:meth:`_conv_streamed`).
        Neither returns layer inputs.
        """
        op = node.op
        assert isinstance(op, O.XbarMVM)
        layer = self.e.layers[op.layer]
        if not keep and self.runs_conv_ideal(node):
            return self._conv_ideal(node, layer, args, relu=relu, residual=residual), None
        if relu or residual is not None:
            raise ValueError(f"layer {op.layer!r}: only an ideal convolution fuses an epilogue")
        whole = not keep and self._whole_conv(node)
        if whole and self.e.threads == 1:
            return self._conv_streamed(node, layer, args), None
        conv = op.kind == "conv"
        # im2col only copies values and inserts zeros (which the DAC maps to 0), so a conv's
        # input is quantised before im2col: kh·kw times fewer values than its columns.
        x = self._dac(layer, args[0]) if conv else args[0]
        xs, lead = self.layer_inputs(node, x)
        outs = []
        for gi, xg in enumerate(xs):
            if self.e.dac_bits and not conv:
                self.e.k.quantize(
                    xg.reshape(-1),
                    self.e.dac_bits,
                    layer.dac_range,
                    layer.dac_signed,
                    self.e.threads,
                )
            outs.append(self.mvm(layer, gi, xg))
        y = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)
        self._count(layer, xs[0].shape[0])
        if op.kind == "linear":
            if len(args) == 3:
                y += args[2]
            return y.reshape(*lead, -1), xs
        n, ho, wo = lead
        out = np.empty((n, y.shape[1], ho * wo), np.float32)
        self._to_nchw(y.reshape(n, ho * wo, -1), args[2] if len(args) == 3 else None, out)
        return out.reshape(n, -1, ho, wo), xs

    def _dac(self, layer: Layer, x: Array) -> Array:
        """``x`` as the layer's DAC applies it.

        A quantised copy, or with an ideal DAC ``x`` itself (made contiguous float32).
        """
        if not self.e.dac_bits:
            return np.ascontiguousarray(x, np.float32)
        xq = np.array(x, np.float32, order="C")
        self.e.k.quantize(
            xq.reshape(-1), self.e.dac_bits, layer.dac_range, layer.dac_signed, self.e.threads
        )
        return xq

    @staticmethod
    def _to_nchw(y: Array, bias: Array | None, out: Array) -> None:
        """``out[n, c, p] = y[n, p, c] + bias[c]``.

        ``y`` is scratch: the bias is added there, where the add is contiguous, then one
        strided copy changes the layout.
        """
        if bias is not None:
            y += bias
        np.copyto(out, y.transpose(0, 2, 1))

    def _conv_streamed(self, node: Node, layer: Layer, args: list[Array]) -> Array:
        """A single-group convolution, chunk of images by chunk of images.

        Each chunk's im2col matrix (about ``STREAM_BYTES``) stays in cache between im2col and
        the MVM, instead of a matrix of ``kh·kw`` times the input's size going through memory
        twice. Every row (output position) is computed exactly as in the unchunked path; with
        read noise, the draws are made per chunk. Used by single-threaded engines only: with
        thread pools, every kernel call is a synchronisation, and on a busy machine each one
        can wait a scheduler time slice for a descheduled thread (a ResNet-8 forward took about
        10× longer streamed than as one call per layer with 2 threads on a loaded 2-core
        machine).
        """
        op = node.op
        assert isinstance(op, O.XbarMVM)
        x = self._dac(layer, args[0])
        n = x.shape[0]
        ho, wo = node.outputs[0].type.shape[2:]
        hw, r, c = ho * wo, layer.lm.rows, layer.lm.cols
        per = max(1, STREAM_BYTES // (4 * hw * r))
        cols = np.empty((min(per, n) * hw, r), np.float32)
        out = np.empty((n, c, hw), np.float32)
        bias = args[2] if len(args) == 3 else None
        threads = self._omp_threads()
        for i in range(0, n, per):
            m = min(per, n - i)
            cm = cols[: m * hw]
            self._im2col_into(node, x[i : i + m], cm, threads)
            self._to_nchw(self.mvm(layer, 0, cm).reshape(m, hw, c), bias, out[i : i + m])
        self._count(layer, n * hw)
        return out.reshape(n, c, ho, wo)

    def _conv_ideal(
        self,
        node: Node,
        layer: Layer,
        args: list[Array],
        *,
        relu: bool = False,
        residual: Array | None = None,
    ) -> Array:
        """A single-group convolution on ideal tiles, written in NCHW.

        im2col, the sgemm and the layout change run per work item (an image's block of output
        rows) while its data are in cache, in parallel over items (see ``conv_ideal`` in
        ``_kernels.pyx``).
        """
        op = node.op
        assert isinstance(op, O.XbarMVM)
        x = np.ascontiguousarray(args[0], np.float32)
        n = x.shape[0]
        ho, wo = node.outputs[0].type.shape[2:]
        bias = args[2] if len(args) == 3 else np.zeros(0, np.float32)
        t = self.e.threads
        cols = np.empty((t, ho * wo, layer.lm.rows), np.float32)
        work = np.empty((t, ho * wo, layer.lm.cols), np.float32)
        out = np.empty((n, layer.lm.cols, ho * wo), np.float32)
        self.e.k.conv_ideal(
            x,
            layer.gdiff[0],
            np.asarray(layer.lm.slice_w, np.float32),
            *window(op),
            np.ascontiguousarray(bias, np.float32),
            cols,
            work,
            out,
            t,
            relu,
            _EMPTY3 if residual is None else np.ascontiguousarray(residual).reshape(out.shape),
        )
        self._count(layer, n * ho * wo)
        return out.reshape(n, -1, ho, wo)

    def _read_noise(self, shape: tuple[int, ...], rms: Array, gi: int) -> tuple[Array, Array]:
        """Read-noise draws of ``shape`` and group ``gi``'s rms table for a tiled MVM.

        Without read noise: empty arrays, which the kernels do not read.
        """
        if self.e.read_noise > 0:
            return self.e.rng.standard_normal(shape, dtype=np.float32), rms[gi]
        return np.zeros((0, 0, 0, 0), np.float32), np.zeros((0, 0, 0), np.float32)

    def mvm(self, layer: Layer, gi: int, x: Array) -> Array:
        """Forward MVM of one group on the tiles: ``[P, R] → [P, C]`` (no bias)."""
        lm = layer.lm
        p = x.shape[0]
        s, r, c = layer.gdiff.shape[1:]
        out = np.empty((p, c), np.float32)
        work = np.empty((p, c), np.float32)
        nr = math.ceil(r / self.e.tile_rows)
        noise, rms = self._read_noise((nr, s, p, c), layer.rms, gi)
        adc = layer.adc_range[gi] if self.e.adc_bits else np.zeros((nr, s), np.float32)
        self.e.k.mvm_forward(
            x,
            layer.gdiff[gi],
            np.asarray(lm.slice_w, np.float32),
            self.e.tile_rows,
            self.e.adc_bits,
            adc,
            self.e.read_noise,
            rms,
            noise,
            work,
            out,
            self.e.threads,
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
            d, a, c = rect_counts(t, layer.lm.per_weight, self.e.cycles)
            self.e.counters.mvm[t.tile] += n
            self.e.counters.dac[t.tile] += n * d
            self.e.counters.adc[t.tile] += n * a
            self.e.counters.cell_reads[t.tile] += n * c

    def col_block(self, layer: Layer) -> int:
        """Logical columns of one layer a tile holds (for the transposed read's partial sums)."""
        return max(1, (self.e.tile_cols // layer.lm.per_weight) // max(1, layer.lm.slices))

    def backward(
        self, node: Node, args: list[Array], gy: Array, xs: list[Array], *, need_dx: bool = True
    ) -> tuple[Array | None, Array, Array | None]:
        """Gradients of a crossbar layer: ``(dL/dx, dL/dW[G, R, C], dL/db)``.

        ``dL/dx`` comes from the transposed MVM on the same tiles (DAC on the errors, per-tile
        ADC on the row outputs, read noise); ``dL/dW`` is formed digitally from the applied
        inputs ``xs`` (as quantised by the DAC) and the errors. With ``need_dx=False`` (the
        layer reads the network input) no transposed MVM runs and ``dL/dx`` is None.
        """
        op = node.op
        assert isinstance(op, O.XbarMVM)
        layer = self.e.layers[op.layer]
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
            if need_dx:
                dxs.append(self.mvm_t(layer, gi, dyg))
        self.e.digital.macs += dy.shape[0] * groups * layer.lm.rows * cols
        if not need_dx:
            return None, gw, gb
        self._count_t(layer, dy.shape[0])
        if op.kind == "linear":
            return dxs[0].reshape(args[0].shape), gw, gb
        cols_all = dxs[0] if groups == 1 else np.concatenate(dxs, axis=1)
        x = args[0]
        gx = np.empty(x.shape, np.float32)
        self.e.k.col2im(
            np.ascontiguousarray(cols_all),
            *x.shape,
            *window(op),
            gx,
            self.e.threads,
        )
        return gx, gw, gb

    def mvm_t(self, layer: Layer, gi: int, dy: Array) -> Array:
        """Transposed MVM of one group on the tiles: ``[P, C] → [P, R]``."""
        lm = layer.lm
        p = dy.shape[0]
        s, r, c = layer.gdiff.shape[1:]
        cb = self.col_block(layer)
        nc = math.ceil(c / cb)
        scale = _row_absmax(dy)
        scale[scale == 0] = 1.0
        dyn = np.ascontiguousarray(dy / scale, np.float32)
        if self.e.dac_bits:
            self.e.k.quantize(dyn.reshape(-1), self.e.dac_bits, 1.0, True, self.e.threads)
        if self.e.adc_bits and layer.adc_range_t.size == 0:
            layer.adc_range_t = self._adc_ranges_t(layer, dyn)
        out = np.empty((p, r), np.float32)
        work = np.empty((p, r), np.float32)
        noise, rms = self._read_noise((nc, s, p, r), layer.rms_t, gi)
        adc = layer.adc_range_t[gi] if self.e.adc_bits else np.zeros((nc, s), np.float32)
        self.e.k.mvm_backward(
            dyn,
            layer.gdiff[gi],
            np.asarray(lm.slice_w, np.float32),
            cb,
            self.e.adc_bits,
            adc,
            self.e.read_noise,
            rms,
            noise,
            work,
            out,
            self.e.threads,
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
            self.e.counters.mvm_t[t.tile] += n
            self.e.counters.dac[t.tile] += n * (t.cols // layer.lm.per_weight) * self.e.cycles
            self.e.counters.adc[t.tile] += n * t.rows * self.e.cycles
            self.e.counters.cell_reads[t.tile] += n * t.rows * t.cols * self.e.cycles
