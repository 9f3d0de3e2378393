"""The crossbar runtime: executes a mapped program on simulated tiles.

``Engine.load(path, ideal=False, seed=0)`` reads a mapped.bin, programs every crossbar layer's
conductances with the device model (``program_weights``) and runs ``forward``. The engine
keeps execution only and composes the parts that do the work:

* crossbar layers go through :class:`~xbarc.runtime.crossbar.CrossbarReads` (``Engine.xbar``):
  the Cython kernels for DAC quantisation, tiled MVM with read noise and per-tile ADC, partial
  sums over row tiles, the transposed MVM of the backward pass; per-tile counters (MVMs,
  DAC/ADC conversions, cells read) accumulate across calls;
* digital ops run through the NumPy kernels of the reference interpreter (in inference, Erf,
  Gelu and Softmax through the faster float32 kernels of :mod:`~xbarc.runtime.digital`);
* converter ranges come from :mod:`~xbarc.runtime.calibration` (calibrated on the first batch
  a non-ideal engine sees, unless the program carries a calibration);
* ideal convs fuse a residual ``Add`` and a ``Relu`` into their output
  (:mod:`~xbarc.runtime.fusion`).

Ideal mode (``ideal=True``) switches every non-ideality off: float DAC/ADC, no read or
programming noise, no level quantisation, no stuck devices, no drift. Its outputs then equal
the reference interpreter's (and onnxruntime's) up to float rounding.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from xbarc.backend import lower as backend
from xbarc.backend.report import input_cycles
from xbarc.ir import interp
from xbarc.ir import ops as O
from xbarc.ir.core import Graph, Node, Value
from xbarc.passes.config import DeviceConfig
from xbarc.passes.lower_mvm import batch_of
from xbarc.runtime import calibration
from xbarc.runtime import device as dev_model
from xbarc.runtime.counters import DigitalCounters, TileCounters
from xbarc.runtime.crossbar import CrossbarReads, Layer
from xbarc.runtime.digital import FAST_DIGITAL
from xbarc.runtime.fusion import Epilogue, fusions_for
from xbarc.runtime.kernels import Kernels, get_kernels
from xbarc.runtime.process import keep_freed_memory, limit_other_blas

Array = np.ndarray[Any, Any]

__all__ = ["FAST_DIGITAL", "Engine", "Layer", "keep_freed_memory", "limit_other_blas"]


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
        self.xbar = CrossbarReads(self)
        self._build_layers()
        self.program_weights(seed)
        calibration.load(self)

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
        self.xbar.refresh(layer)

    def col_block(self, layer: Layer) -> int:
        """Logical columns of one layer a tile holds (for the transposed read's partial sums)."""
        return self.xbar.col_block(layer)

    def backward_xbar(
        self, node: Node, args: list[Array], gy: Array, xs: list[Array], *, need_dx: bool = True
    ) -> tuple[Array | None, Array, Array | None]:
        """Gradients of a crossbar layer (:meth:`CrossbarReads.backward`)."""
        return self.xbar.backward(node, args, gy, xs, need_dx=need_dx)

    # ------------------------------------------------------------------ calibration

    def calibrate(self, x: Array, *, percentile: float = 100.0) -> None:
        """Set converter full scales from an ideal-converter pass over ``x``.

        See :func:`~xbarc.runtime.calibration.calibrate`.
        """
        calibration.calibrate(self, x, percentile=percentile)

    def calibration(self) -> dict[str, Any]:
        """The converter ranges as JSON-able data (stored with trained programs)."""
        return calibration.to_json(self)

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
                    y, aux = self.xbar.run(node, args, keep=tape is not None)
                else:
                    res = None if epi.residual is None else fetch(epi.residual)
                    y, aux = self.xbar.run(node, args, keep=False, relu=epi.relu, residual=res)
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

    def _fusions_for(self, g: Graph) -> dict[int, Epilogue]:
        """Output epilogues of the ideal convs of ``g``, cached per graph and converter setting.

        See :func:`~xbarc.runtime.fusion.fusions_for`.
        """
        key = (id(g), self.xbar._ideal())
        cached = self._fusions.get(key)
        if cached is None or cached[0] is not g:
            cached = (g, fusions_for(g, self.xbar.runs_conv_ideal))
            self._fusions[key] = cached
        return cached[1]
