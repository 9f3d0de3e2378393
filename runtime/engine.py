"""The crossbar runtime: executes a mapped program on simulated tiles.

``Engine.load(path, ideal=False, seed=0)`` reads a mapped.bin, programs every crossbar layer's
conductances with the device model (``program_weights``) and runs ``forward``. Crossbar layers
go through the Cython kernels (DAC quantisation, tiled MVM with read noise and per-tile ADC,
partial sums over row tiles); digital ops run through the NumPy kernels of the reference
interpreter (in inference, Erf, Gelu and Softmax through faster float32 kernels of the engine,
:data:`FAST_DIGITAL`). Per-tile counters (MVMs, DAC/ADC conversions, cells read) accumulate
across calls.

Ideal mode (``ideal=True``) switches every non-ideality off: float DAC/ADC, no read or
programming noise, no level quantisation, no stuck devices, no drift. Its outputs then equal
the reference interpreter's (and onnxruntime's) up to float rounding.

Converter ranges: each layer's DAC full scale and each tile's ADC full scale are calibrated on
the first batch a non-ideal engine sees (``calibrate`` runs it through ideal converters and
takes the largest magnitude), unless the program already carries a calibration. An ideal
engine has no converter ranges to set and skips this.
"""

from __future__ import annotations

import ctypes
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


MALLOC_KEEP = (64 << 20, 512 << 20)
"""(mmap threshold, trim threshold) in bytes that :func:`keep_freed_memory` sets."""
_malloc_tuned = False


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    A forward allocates and frees many arrays of megabytes. By default glibc maps each large
    one afresh (``mmap``) or trims the heap after frees, so every new array costs a page fault
    per 4 KiB page: 40 % of a ViT's forward at batch 64. Arrays up to 64 MiB then come from
    the heap, and up to 512 MiB of free heap top is kept (the process's resident size stays
    near its peak). Called once by the first :class:`Engine`; a no-op without glibc, when the
    user set ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``, or when
    ``XBARC_MALLOC=system``. Returns whether the settings were applied.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    env = os.environ
    if env.get("XBARC_MALLOC") == "system" or any(
        k in env for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    mmap_at, trim_at = MALLOC_KEEP
    _malloc_tuned = bool(mallopt(m_mmap_threshold, mmap_at)) and bool(
        mallopt(m_trim_threshold, trim_at)
    )
    return _malloc_tuned


def limit_other_blas() -> bool:
    """Keep every BLAS but the kernels' own (SciPy's OpenBLAS) on one thread.

    NumPy and SciPy each bundle an OpenBLAS whose threads spin after a call; next to the
    kernels' OpenMP threads, three pools fight over the cores (measured on a 2-core machine: a
    training step of the 784-256-128-10 MLP took 21 ms with both BLAS pools on 2 threads and
    6.6 ms with them on 1). The kernels' sgemm (SciPy's OpenBLAS) keeps its threads. Called once
    by every :class:`Engine`; skipped when ``XBARC_BLAS_THREADS=keep``.
    """
    if os.environ.get("XBARC_BLAS_THREADS") == "keep":
        return False
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return False
    for lib in ThreadpoolController().lib_controllers:
        if lib.user_api == "blas" and "scipy" not in Path(lib.filepath).parent.name:
            lib.set_num_threads(1)
    return True


STREAM_BYTES = 1 << 21


def _window(op: O.XbarMVM) -> tuple[int, ...]:
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


@dataclass(frozen=True, slots=True)
class Epilogue:
    """What an ideal conv applies while writing its output (see ``Engine._fusions_for``)."""

    residual: Value | None
    """Added to the output (an ``Add`` operand of the same shape), or None."""
    relu: bool
    """Then ``max(·, 0)``."""
    passed: dict[int, int]
    """``id(node) → operand index`` of the fused nodes: each passes that operand through."""


_EMPTY3 = np.zeros((0, 0, 0), np.float32)
"""Target size of one chunk's im2col matrix in :meth:`Engine._conv_streamed`: about a core's
L2 cache (1 to 2 MiB measured best for ResNet-8 on a core with 1 MiB of L2)."""


def _peak(a: Array, percentile: float) -> float:
    """The ``percentile``-th percentile of ``|a|`` (the maximum for 100)."""
    if a.size == 0:
        return 0.0
    if percentile >= 100:
        return float(np.abs(a).max())
    return float(np.percentile(np.abs(a), percentile))


# ---------------------------------------------------------------------- fast digital kernels
# Float32 kernels for digital ops of a ViT where the reference interpreter's are slow (scipy's
# erf on float32 took a quarter of the forward), used in inference (no tape). Same results up
# to float rounding (onnxruntime agreement is tested per model); each allocates its output
# once, works in place on it, never writes to its inputs, and returns None (fall back to the
# interpreter) for other dtypes or variants.

_ERF_P = tuple(
    np.float32(c)
    for c in (
        -2.72614225801306e-10,
        2.77068142495902e-08,
        -2.10102402082508e-06,
        -5.69250639462346e-05,
        -7.34990630326855e-04,
        -2.95459980854025e-03,
        -1.60960333262415e-02,
    )
)
_ERF_Q = tuple(
    np.float32(c)
    for c in (
        -1.45660718464996e-05,
        -2.13374055278905e-04,
        -1.68282697438203e-03,
        -7.37332916720468e-03,
        -1.42647390514189e-02,
    )
)


def _erf32(x: Array) -> Array:
    """The error function of float32 ``x``, as a new array.

    The rational approximation Eigen and XLA use for float32 (``x·P(x²)/Q(x²)`` on
    ``[-4, 4]``, ±1 beyond), within 5e-7 of the exact value; an order of magnitude faster than
    ``scipy.special.erf`` on float32.
    """
    x = np.clip(x, np.float32(-4.0), np.float32(4.0))
    x2 = x * x
    p = np.full_like(x, _ERF_P[0])
    for c in _ERF_P[1:]:
        p *= x2
        p += c
    q = np.full_like(x, _ERF_Q[0])
    for c in _ERF_Q[1:]:
        q *= x2
        q += c
    p *= x
    p /= q
    return p


def _fast_erf(op: O.Op, a: list[Array]) -> tuple[Array, ...] | None:
    return (_erf32(a[0]),) if a[0].dtype == np.float32 else None


def _fast_gelu(op: O.Gelu, a: list[Array]) -> tuple[Array, ...] | None:
    x = a[0]
    if x.dtype != np.float32 or op.approximate != "none":
        return None
    y = _erf32(x * np.float32(1 / math.sqrt(2)))
    y += np.float32(1.0)
    y *= x
    y *= np.float32(0.5)
    return (y,)


def _fast_softmax(op: O.Softmax, a: list[Array]) -> tuple[Array, ...] | None:
    x = a[0]
    if x.dtype != np.float32:
        return None
    e = np.subtract(x, x.max(axis=op.axis, keepdims=True))
    np.exp(e, out=e)
    e /= e.sum(axis=op.axis, keepdims=True)
    return (e,)


FAST_DIGITAL: dict[type[O.Op], Any] = {
    O.Erf: _fast_erf,
    O.Gelu: _fast_gelu,
    O.Softmax: _fast_softmax,
}
"""Inference kernels (see above) that replace the interpreter's for these op kinds."""


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
        keep_freed_memory()
        limit_other_blas()
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
        self._use_counts: dict[int, tuple[Graph, dict[int, int]]] = {}
        self._fusions: dict[tuple[int, bool], tuple[Graph, dict[int, Epilogue]]] = {}
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

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Per-sample shape of the (first) output."""
        return self.program.graph.outputs[0].type.shape[1:]

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
        x = self._as_input(x, "forward")
        want = self.input_shape
        if not self.calibrated and not self.ideal:  # ideal converters need no ranges
            self.calibrate(x)
        g = self.program.graph
        if g.batch is None:
            b0 = g.inputs[0].type.shape[0]
            outs = []
            for i in range(0, x.shape[0], b0):
                chunk = x[i : i + b0]
                n = chunk.shape[0]
                if n < b0:
                    chunk = np.concatenate([chunk, np.zeros((b0 - n, *want), x.dtype)])
                outs.append(self._run(g, chunk, tape)[0][:n])
                # The padding ran on the tiles (its work stays in the counters) but is no sample.
                self.samples -= b0 - n
            return np.concatenate(outs)
        return self._run(self.graph_for(x.shape[0]), x, tape)[0]

    def _as_input(self, x: Array, fn: str) -> Array:
        """``x`` checked against the input's per-sample shape, in the input's dtype.

        Float inputs are float32; an integer input (token ids of an embedding) must hold
        integers.
        """
        dtype = self.program.graph.inputs[0].type.dtype.numpy
        arr = np.asarray(x)
        if (
            dtype.kind in "iu"
            and arr.dtype.kind not in "iub"
            and not np.array_equal(arr, np.round(arr))
        ):
            raise ValueError(f"{fn}: the model's input is {dtype}; x holds non-integers")
        x = np.ascontiguousarray(arr, dtype)
        want = self.input_shape
        if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"{fn}: x has shape {x.shape}, expected (N, {', '.join(map(str, want))})"
            )
        return x

    def _run(self, g: Graph, x: Array, tape: list[Any] | None) -> list[Array]:
        env: dict[int, Array] = {id(g.inputs[0]): x}
        batch = batch_of(g)
        # Without a tape, each value is dropped after its last use, so the allocator reuses
        # its memory (fresh pages cost a fault each; for a ViT that was half the forward).
        remaining = None if tape is not None else self._uses(g)
        fusions = self._fusions_for(g) if tape is None else {}
        passed = {k: i for f in fusions.values() for k, i in f.passed.items()}

        def fetch(v: Value) -> Array:
            return v.const if v.const is not None else env[id(v)]

        for node in g.nodes:
            args = [fetch(v) for v in node.inputs]
            if isinstance(node.op, O.XbarMVM):
                epi = fusions.get(id(node))
                if epi is None:
                    y, aux = self._xbar(node, args, keep=tape is not None)
                else:
                    res = None if epi.residual is None else fetch(epi.residual)
                    y, aux = self._xbar(node, args, keep=False, relu=epi.relu, residual=res)
                outs: tuple[Array, ...] = (y,)
            else:
                if id(node) in passed:  # a conv before it fused this node into its output
                    outs = (args[passed[id(node)]],)
                else:
                    fast = FAST_DIGITAL.get(type(node.op)) if tape is None else None
                    outs = (fast and fast(node.op, args)) or interp.eval_node(node, args)
                aux = None
                if node.placement is not None:
                    self.digital.macs += node.placement.macs * batch
                    self.digital.elem_ops += node.placement.elem_ops * batch
            for v, y in zip(node.outputs, outs, strict=True):
                env[id(v)] = y
            if tape is not None:
                tape.append((node, args, outs, aux))
            elif remaining is not None:
                del args, outs
                for v in node.inputs:
                    if v.const is None:
                        remaining[id(v)] -= 1
                        if remaining[id(v)] == 0:
                            env.pop(id(v), None)
        self.samples += batch
        return [fetch(v) for v in g.outputs]

    def _uses(self, g: Graph) -> dict[int, int]:
        """Uses of every computed value by the nodes of ``g`` (graph outputs count once more)."""
        key = id(g)
        if self._use_counts.get(key, (None,))[0] is not g:
            uses: dict[int, int] = {}
            for node in g.nodes:
                for v in node.inputs:
                    if v.const is None:
                        uses[id(v)] = uses.get(id(v), 0) + 1
            for v in g.outputs:
                uses[id(v)] = uses.get(id(v), 0) + 1
            self._use_counts[key] = (g, uses)
        return dict(self._use_counts[key][1])

    # ------------------------------------------------------------------ crossbar layers

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
        return 1 if self._ideal() else self.threads

    def _ideal(self) -> bool:
        """No DAC or ADC quantisation and no read noise: MVMs are exact products."""
        return not (self.dac_bits or self.adc_bits or self.read_noise)

    def _im2col_into(self, node: Node, x: Array, cols: Array, threads: int) -> None:
        op = node.op
        assert isinstance(op, O.XbarMVM)
        self.k.im2col(
            x,
            *_window(op),
            cols,
            threads,
        )

    def layer_inputs(self, node: Node, x: Array) -> tuple[list[Array], tuple[int, ...]]:
        """Per-group input matrices ``[P, R]`` of a crossbar layer (im2col for convs)."""
        op = node.op
        assert isinstance(op, O.XbarMVM)
        layer = self.layers[op.layer]
        r = layer.lm.rows
        if op.kind == "linear":
            flat = x.reshape(-1, r)
            # the DAC quantises in place: copy then; else the (contiguous) input itself
            xg = np.array(flat, np.float32) if self.dac_bits else np.ascontiguousarray(flat)
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
        layer = self.layers[op.layer]
        return op.kind == "conv" and layer.groups == 1 and len(op.kernel) == 2

    def _runs_conv_ideal(self, node: Node) -> bool:
        """Whether an inference forward runs ``node`` through :meth:`_conv_ideal`."""
        op = node.op
        assert isinstance(op, O.XbarMVM)
        return self._whole_conv(node) and self._ideal() and not self.layers[op.layer].lm.offset

    def _fusions_for(self, g: Graph) -> dict[int, Epilogue]:
        """Output epilogues of the ideal convs of ``g`` (``id(conv node) → Epilogue``).

        An ideal conv whose only use is ``Add(conv, r)`` with an ``r`` of the same shape that
        is already computed (a residual) adds ``r`` while writing its output, and applies the
        ReLU that is the add's (or else the conv's) only use. The fused nodes then pass the
        conv's output through (their digital work is still counted). Inference forwards only.
        """
        key = (id(g), self._ideal())
        cached = self._fusions.get(key)
        if cached is not None and cached[0] is g:
            return cached[1]
        users: dict[int, list[Node]] = {}
        made: dict[int, int] = {}  # id(value) → index of the node that computes it
        for i, node in enumerate(g.nodes):
            for v in node.inputs:
                users.setdefault(id(v), []).append(node)
            for v in node.outputs:
                made[id(v)] = i
        outputs = {id(v) for v in g.outputs}

        def only_use(v: Value) -> Node | None:
            use = users.get(id(v), [])
            return use[0] if id(v) not in outputs and len(use) == 1 else None

        fusions: dict[int, Epilogue] = {}
        for i, node in enumerate(g.nodes):
            if not isinstance(node.op, O.XbarMVM) or not self._runs_conv_ideal(node):
                continue
            y = node.outputs[0]
            residual, passed = None, {}
            nxt = only_use(y)
            if nxt is not None and isinstance(nxt.op, O.Add) and len(nxt.inputs) == 2:
                k = 0 if nxt.inputs[0] is y else 1
                r = nxt.inputs[1 - k]
                ready = made.get(id(r), -1) < i  # computed before the conv (or an input)
                if r is not y and r.type == y.type and ready:
                    residual, passed[id(nxt)] = r, k
                    y = nxt.outputs[0]
                    nxt = only_use(y)
            relu = nxt is not None and isinstance(nxt.op, O.Relu)
            if relu:
                assert nxt is not None
                passed[id(nxt)] = 0
            if passed:
                fusions[id(node)] = Epilogue(residual, relu, passed)
        self._fusions[key] = (g, fusions)
        return fusions

    def _xbar(
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
        and applies ``relu`` to its output, see :meth:`_fusions_for`); else a single-threaded
        engine streams it through im2col in chunks of images (:meth:`_conv_streamed`).
        Neither returns layer inputs.
        """
        op = node.op
        assert isinstance(op, O.XbarMVM)
        layer = self.layers[op.layer]
        if not keep and self._runs_conv_ideal(node):
            return self._conv_ideal(node, layer, args, relu=relu, residual=residual), None
        if relu or residual is not None:
            raise ValueError(f"layer {op.layer!r}: only an ideal convolution fuses an epilogue")
        whole = not keep and self._whole_conv(node)
        if whole and self.threads == 1:
            return self._conv_streamed(node, layer, args), None
        conv = op.kind == "conv"
        # im2col only copies values and inserts zeros (which the DAC maps to 0), so a conv's
        # input is quantised before im2col: kh·kw times fewer values than its columns.
        x = self._dac(layer, args[0]) if conv else args[0]
        xs, lead = self.layer_inputs(node, x)
        outs = []
        for gi, xg in enumerate(xs):
            if self.dac_bits and not conv:
                self.k.quantize(
                    xg.reshape(-1), self.dac_bits, layer.dac_range, layer.dac_signed, self.threads
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
        if not self.dac_bits:
            return np.ascontiguousarray(x, np.float32)
        xq = np.array(x, np.float32, order="C")
        self.k.quantize(
            xq.reshape(-1), self.dac_bits, layer.dac_range, layer.dac_signed, self.threads
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
        t = self.threads
        cols = np.empty((t, ho * wo, layer.lm.rows), np.float32)
        work = np.empty((t, ho * wo, layer.lm.cols), np.float32)
        out = np.empty((n, layer.lm.cols, ho * wo), np.float32)
        self.k.conv_ideal(
            x,
            layer.gdiff[0],
            np.asarray(layer.lm.slice_w, np.float32),
            *_window(op),
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
        if self.read_noise > 0:
            return self.rng.standard_normal(shape, dtype=np.float32), rms[gi]
        return np.zeros((0, 0, 0, 0), np.float32), np.zeros((0, 0, 0), np.float32)

    def mvm(self, layer: Layer, gi: int, x: Array) -> Array:
        """Forward MVM of one group on the tiles: ``[P, R] → [P, C]`` (no bias)."""
        lm = layer.lm
        p = x.shape[0]
        s, r, c = layer.gdiff.shape[1:]
        out = np.empty((p, c), np.float32)
        work = np.empty((p, c), np.float32)
        nr = math.ceil(r / self.tile_rows)
        noise, rms = self._read_noise((nr, s, p, c), layer.rms, gi)
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
            if need_dx:
                dxs.append(self.mvm_t(layer, gi, dyg))
        self.digital.macs += dy.shape[0] * groups * layer.lm.rows * cols
        if not need_dx:
            return None, gw, gb
        self._count_t(layer, dy.shape[0])
        if op.kind == "linear":
            return dxs[0].reshape(args[0].shape), gw, gb
        cols_all = dxs[0] if groups == 1 else np.concatenate(dxs, axis=1)
        x = args[0]
        gx = np.empty(x.shape, np.float32)
        self.k.col2im(
            np.ascontiguousarray(cols_all),
            *x.shape,
            *_window(op),
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
        scale = _row_absmax(dy)
        scale[scale == 0] = 1.0
        dyn = np.ascontiguousarray(dy / scale, np.float32)
        if self.dac_bits:
            self.k.quantize(dyn.reshape(-1), self.dac_bits, 1.0, True, self.threads)
        if self.adc_bits and layer.adc_range_t.size == 0:
            layer.adc_range_t = self._adc_ranges_t(layer, dyn)
        out = np.empty((p, r), np.float32)
        work = np.empty((p, r), np.float32)
        noise, rms = self._read_noise((nc, s, p, r), layer.rms_t, gi)
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
