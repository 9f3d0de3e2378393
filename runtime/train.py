"""On-chip training of a mapped program with EaPU and baseline update rules.

One step (per batch):

1. forward through the engine with every configured non-ideality, recording a tape;
2. loss (softmax cross-entropy or MSE) and backward: crossbar layers use the transposed MVM on
   the same tiles (``Engine.backward_xbar``), digital ops their VJPs (``runtime.autodiff``);
   weight gradients are formed digitally from the applied inputs and the errors;
3. the optimiser (SGD with momentum or Adam) turns each gradient into a desired update ``u``
   and the update rule (``--rule``) decides what is written to the conductance pairs, with the
   device's write model — all in one Cython kernel per layer group (``_update.pyx``);
4. digital parameters (biases, normalisation, embeddings) are updated exactly in float;
5. counters: per tile and per epoch (requested / applied / skipped updates, pulses, MVMs and
   conversions), and writes per device (wear, persistent across runs).

Every random draw is a function of ``(seed, epoch, step)``, so a run resumed from an epoch
checkpoint ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from xbarc.backend import lower as backend
from xbarc.backend.conductance import join_planes, scatter
from xbarc.errors import ConfigError, DataError, XbarcError
from xbarc.ir import ops as O
from xbarc.ir.core import Graph
from xbarc.runtime import autodiff
from xbarc.runtime.counters import DigitalCounters, TileCounters
from xbarc.runtime.data import Dataset, batches, check_classes
from xbarc.runtime.energy import EnergyModel
from xbarc.runtime.engine import Engine, Layer

Array = np.ndarray[Any, Any]

RULES = ("eapu", "bp", "pulse", "mixed", "float")
OPTIMIZERS = ("sgd", "adam")
RECAL_EVERY = 5
"""Steps between re-calibrations of the converter ranges while training. The read-noise rms
of the conductances (``Engine.refresh``) is recomputed on the same schedule and before every
evaluation; between those steps a layer's update only refreshes ``gdiff`` (exact), so the
read-noise scale lags the ~1 % of devices written per step by at most RECAL_EVERY - 1 steps."""
_RULE_CODE = {"float": 0, "bp": 1, "eapu": 2, "mixed": 3}
PARALLEL_UPDATE = 1 << 20
"""Weights of one layer group from which the update kernel runs on ``Engine.threads``
threads (results are the same for every thread count)."""


@dataclass(frozen=True)
class TrainConfig:
    """Training options (CLI flags and the ``[train]`` TOML table set the same fields)."""

    rule: str = "eapu"
    """eapu | bp | pulse | mixed | float."""
    optimizer: str = "adam"
    """sgd | adam."""
    lr: float = 1e-3
    momentum: float = 0.9
    """SGD momentum (the EaPU paper's SGD runs use 0.9)."""
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    epochs: int = 10
    batch: int = 64
    seed: int = 0
    schedule: str = "constant"
    """constant | step | cosine."""
    step_size: int = 30
    """Epochs between learning-rate drops for ``schedule="step"`` (the paper: StepLR(30, 0.1))."""
    gamma: float = 0.1
    clip: float = 2.0
    """EaPU threshold c in µS (ΔW_th / R_wg); also the mixed rule's threshold."""
    write_noise: float = -1.0
    """σ of one write in µS; negative = the device config's ``write_noise`` (2 µS)."""
    pulse_bl: int = 31
    """Pulse-train length of the ``pulse`` rule (aihwkit's default BL)."""
    pulse_noise: float = 0.3
    """Relative cycle-to-cycle std of one pulse step (aihwkit ConstantStep dw_min_std)."""
    loss: str = "auto"
    """auto (cross-entropy for classification, MSE for regression) | xent | mse."""
    limit: int = 0
    """Use only the first N training and test samples (0 = all)."""
    eval_batch: int = 256

    def validate(self) -> None:
        """ConfigError naming the field if a value is out of range."""

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"train option {name}: {why}")

        if self.rule not in RULES:
            raise bad("rule", f"must be one of {', '.join(RULES)}, got {self.rule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"must be sgd or adam, got {self.optimizer!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise bad("lr", f"must be > 0, got {self.lr}")
        if self.epochs < 0 or self.batch < 1:
            raise bad("epochs/batch", "need epochs >= 0 and batch >= 1")
        if self.clip <= 0:
            raise bad("clip", f"must be > 0 µS, got {self.clip}")
        if self.schedule not in ("constant", "step", "cosine"):
            raise bad("schedule", f"must be constant, step or cosine, got {self.schedule!r}")
        if self.loss not in ("auto", "xent", "mse"):
            raise bad("loss", f"must be auto, xent or mse, got {self.loss!r}")
        if self.pulse_bl < 1:
            raise bad("pulse_bl", "must be >= 1")

    @staticmethod
    def from_mapping(d: dict[str, Any], where: str = "train options") -> TrainConfig:
        """Build from a TOML table / JSON dict; unknown keys are errors."""
        names = {f.name: f for f in fields(TrainConfig)}
        unknown = set(d) - set(names)
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
        defaults = TrainConfig()
        kwargs: dict[str, Any] = {}
        for k, v in d.items():
            want = type(getattr(defaults, k))
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, want) or isinstance(v, bool) != (want is bool):
                raise ConfigError(f"{where}: field {k} must be {want.__name__}, got {v!r}")
            kwargs[k] = v
        cfg = TrainConfig(**kwargs)
        cfg.validate()
        return cfg


@dataclass
class LayerState:
    """Optimiser state and write bookkeeping of one crossbar layer."""

    m: Array
    v: Array
    chi: Array
    wear_p: Array
    """Writes per G+ (or offset) device ``[G, R*C]`` int32 (this run)."""
    wear_n: Array
    counts: Array
    """``[G, R, n_col_blocks, 5]``: requested, applied, skipped, pulses, rule draws (this epoch)."""


@dataclass
class EpochRecord:
    """Metrics of one epoch."""

    epoch: int
    loss: float
    train_acc: float
    test_acc: float
    test_loss: float
    lr: float
    requested: int
    applied: int
    skipped: int
    pulses: int
    energy_j: float
    max_writes: int


@dataclass
class TrainResult:
    """What ``train`` returns: history, counters, energy, wear."""

    history: list[EpochRecord]
    counters: TileCounters
    digital: DigitalCounters
    energy: dict[str, Any]
    wear: dict[str, Any]
    samples: int
    final_test_acc: float
    config: TrainConfig
    per_epoch_tiles: list[dict[str, list[int]]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "config": asdict(self.config),
            "history": [asdict(h) for h in self.history],
            "final_test_acc": self.final_test_acc,
            "samples_seen": self.samples,
            "tile_counters": self.counters.to_dict(),
            "tile_counters_totals": self.counters.totals(),
            "digital_counters": self.digital.to_dict(),
            "energy": self.energy,
            "wear": self.wear,
            "per_epoch_tiles": self.per_epoch_tiles,
        }


def softmax_xent(logits: Array, y: Array) -> tuple[float, Array, Array]:
    """Mean cross-entropy, its gradient w.r.t. the logits, and the predictions."""
    z = logits.reshape(logits.shape[0], -1).astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = z.shape[0]
    loss = float(-np.log(np.maximum(p[np.arange(n), y], 1e-300)).mean())
    g = p
    g[np.arange(n), y] -= 1.0
    return loss, (g / n).astype(np.float32).reshape(logits.shape), z.argmax(axis=1)


def mse(out: Array, y: Array) -> tuple[float, Array]:
    """Mean squared error and its gradient."""
    d = out.astype(np.float64) - y.reshape(out.shape)
    return float((d * d).mean()), (2 * d / d.size).astype(np.float32)


class Trainer:
    """Trains the crossbar layers of an engine on-chip and its digital parameters exactly."""

    def __init__(self, engine: Engine, cfg: TrainConfig, data: Dataset) -> None:
        cfg.validate()
        self.engine = engine
        self.cfg = cfg
        self.data = data
        self.k = self._update_kernels(engine)
        dev = engine.device
        self.sigma = dev.write_noise if cfg.write_noise < 0 else cfg.write_noise
        if cfg.rule == "float":
            self.sigma = 0.0
        self.classification = cfg.loss == "xent" or (cfg.loss == "auto" and data.classes > 0)
        g = engine.program.graph
        # A model exported without a dynamic batch axis runs in chunks of its own batch size;
        # a training step must be exactly one chunk so the tape matches the gradient.
        self.fixed_batch = g.inputs[0].type.shape[0] if g.batch is None else 0
        if self.fixed_batch and cfg.batch != self.fixed_batch:
            raise ConfigError(
                f"the model has a fixed batch size of {self.fixed_batch} (exported without a "
                f"dynamic batch axis): train with --batch {self.fixed_batch}"
            )
        for name, layer in engine.layers.items():
            if layer.lm.slices != 1:
                raise XbarcError(
                    f"layer {name!r} is bit-sliced ({layer.lm.slices} slices); on-chip training "
                    "needs analog cells: compile with --weight-bits 0"
                )
        self.states: dict[str, LayerState] = {}
        for name in sorted(engine.layers):
            layer = engine.layers[name]
            g, _, r, c = layer.gp.shape
            n = r * c
            ncb = math.ceil(c / engine.col_block(layer))
            pair = layer.gn is not None
            self.states[name] = LayerState(
                m=np.zeros((g, n), np.float32),
                v=np.zeros((g, n), np.float32)
                if cfg.optimizer == "adam"
                else np.zeros((g, 0), np.float32),
                chi=np.zeros((g, n), np.float32)
                if cfg.rule == "mixed"
                else np.zeros((g, 0), np.float32),
                wear_p=np.zeros((g, n), np.int32),
                wear_n=np.zeros((g, n if pair else 0), np.int32),
                counts=np.zeros((g, r, ncb, 5), np.int64),
            )
        self._scratch = np.empty(0, np.float32)
        self.params = self._digital_params(engine.program.graph)
        self.param_m = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.param_v = {k: np.zeros_like(v) for k, v in self.params.items()}
        engine._graphs.clear()
        self.step_count = 0
        self.epoch = 0
        self.history: list[EpochRecord] = []
        self.per_epoch_tiles: list[dict[str, list[int]]] = []
        self.energy_model = (
            EnergyModel.default().with_overrides(
                engine.program.config.energy, where="chip config [energy]"
            )
            if engine.program.config.energy
            else EnergyModel.default()
        )

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _update_kernels(engine: Engine) -> Any:
        if engine.k.__name__.endswith("reference"):
            from xbarc.runtime import update_reference

            return update_reference
        from xbarc.runtime import _update

        return _update

    @staticmethod
    def _digital_params(g: Graph) -> dict[int, Array]:
        """Trainable digital parameters: float initializer constants not stored on tiles.

        Excluded: scalars and exponents. Exporters store literals as initializers too
        (torch's dynamo exporter writes the attention scale, GELU's 0.5 or a ``** 2`` as
        ``val_N`` scalars), and those are constants of the model, not parameters; a learned
        scalar (a temperature) is the rare exception that this rule freezes.

        Each becomes a writable array owned by the graph (updated in place, so the graphs the
        engine instantiates at other batch sizes see the same data).
        """
        xbar_w = {id(n.inputs[1]) for n in g.nodes if isinstance(n.op, O.XbarMVM)}
        exponent = {id(n.inputs[1]) for n in g.nodes if isinstance(n.op, O.Pow)}
        params: dict[int, Array] = {}
        for v in g.constants():
            if not v.param or id(v) in xbar_w or v.const is None or not v.type.dtype.is_float:
                continue
            if v.type.size <= 1 or id(v) in exponent:
                continue
            arr = np.array(v.const, dtype=np.float32)
            v.const = arr
            params[id(arr)] = arr
        return params

    # ------------------------------------------------------------------ one step

    def lr_at(self, epoch: int) -> float:
        """Learning rate of an epoch under the schedule."""
        c = self.cfg
        if c.schedule == "step":
            return c.lr * c.gamma ** (epoch // max(1, c.step_size))
        if c.schedule == "cosine":
            return c.lr * 0.5 * (1 + math.cos(math.pi * epoch / max(1, c.epochs)))
        return c.lr

    def step(self, x: Array, y: Array, *, epoch: int, index: int) -> tuple[float, int]:
        """One training step on a batch; returns (loss, correct predictions)."""
        eng = self.engine
        eng.rng = np.random.default_rng([self.cfg.seed, epoch, index, 11])
        tape: list[Any] = []
        out = eng.forward(x, tape=tape)
        if self.classification:
            loss, gout, pred = softmax_xent(out, y)
            correct = int((pred == y).sum())
        else:
            loss, gout = mse(out, y)
            correct = 0
        if not math.isfinite(loss):
            raise XbarcError(
                f"training diverged at epoch {epoch + 1}, batch {index + 1}: the loss is {loss} "
                f"(rule {self.cfg.rule}, lr {self.lr_at(epoch):g}); lower --lr or check the model"
            )
        if self.fixed_batch and gout.shape[0] < self.fixed_batch:  # the epoch's last batch
            pad = np.zeros((self.fixed_batch - gout.shape[0], *gout.shape[1:]), gout.dtype)
            gout = np.concatenate([gout, pad])  # the padding rows carry no gradient
        wgrads, pgrads = self._backward(tape, gout)
        self._apply(wgrads, pgrads, self.lr_at(epoch))
        self.step_count += 1
        return loss, correct

    def _backward(self, tape: list[Any], gout: Array) -> tuple[dict[str, Array], dict[int, Array]]:
        grads: dict[int, Array] = {}
        node0 = tape[-1][0]
        graph = node0.graph
        assert graph is not None
        grads[id(graph.outputs[0])] = gout
        wgrads: dict[str, Array] = {}
        pgrads: dict[int, Array] = {}
        eng = self.engine
        for node, args, outs, aux in reversed(tape):
            gys = [grads.pop(id(v), None) for v in node.outputs]
            if all(gy is None for gy in gys):
                continue
            if isinstance(node.op, O.XbarMVM):
                gy = gys[0]
                assert gy is not None
                x0 = node.inputs[0]
                need_dx = not (x0.producer is None and x0.const is None)
                gx, gw, gb = eng.backward_xbar(node, args, gy, aux, need_dx=need_dx)
                wgrads[node.op.layer] = gw
                gins: list[Array | None] = [gx, None, gb]
            else:
                gins = autodiff.vjp(node.op, args, outs, gys)
                eng.digital.elem_ops += 2 * sum(o.size for o in outs)
            for v, gi in zip(node.inputs, gins, strict=False):
                if gi is None:
                    continue
                if v.const is not None:
                    if id(v.const) in self.params:
                        key = id(v.const)
                        pgrads[key] = pgrads[key] + gi if key in pgrads else gi
                    continue
                if v.producer is None and v in graph.inputs:
                    continue
                k = id(v)
                grads[k] = grads[k] + gi if k in grads else gi
        return wgrads, pgrads

    def _apply(self, wgrads: dict[str, Array], pgrads: dict[int, Array], lr: float) -> None:
        eng = self.engine
        cfg = self.cfg
        t = self.step_count + 1
        bias1, bias2 = 1 - cfg.beta1**t, 1 - cfg.beta2**t
        for li, name in enumerate(sorted(eng.layers)):
            if name not in wgrads:
                continue
            layer = eng.layers[name]
            st = self.states[name]
            gw = wgrads[name]
            if cfg.rule == "pulse":
                self._pulse(layer, st, gw, lr, li)
                self._refresh_gdiff(layer)
            elif not self._rule(layer, st, gw, lr, bias1, bias2, li):
                self._refresh_gdiff(layer)
            n = gw.size
            eng.digital.elem_ops += n * (12 if cfg.optimizer == "adam" else 3)
        for key, g in pgrads.items():
            p = self.params[key]
            g = g.reshape(p.shape).astype(np.float32)
            if cfg.optimizer == "adam":
                m, v = self.param_m[key], self.param_v[key]
                m *= cfg.beta1
                m += (1 - cfg.beta1) * g
                v *= cfg.beta2
                v += (1 - cfg.beta2) * g * g
                p -= (lr * (m / bias1) / (np.sqrt(v / bias2) + cfg.eps)).astype(np.float32)
            else:
                m = self.param_m[key]
                m *= cfg.momentum
                m += g
                p -= np.float32(lr) * m
            eng.digital.elem_ops += p.size * 12

    def _stream(self, layer_index: int, group: int) -> int:
        return (self.step_count * 4096 + layer_index) * 256 + group

    def _rule(
        self,
        layer: Layer,
        st: LayerState,
        gw: Array,
        lr: float,
        bias1: float,
        bias2: float,
        li: int,
    ) -> bool:
        """Run the update kernel on every group; True if it also kept ``gdiff`` current."""
        eng, cfg, dev = self.engine, self.cfg, self.engine.device
        g, _, r, c = layer.gp.shape
        cb = eng.col_block(layer)
        bounded = cfg.rule != "float"
        pair = layer.gn is not None
        empty_f = np.zeros(0, np.float32)
        empty_i = np.zeros(0, np.int32)
        # the kernel updates gdiff = G+ - G- of the written weights in place when gdiff is a
        # plain (undrifted) copy of the planes (see _refresh_gdiff)
        keep = (
            pair
            and layer.nu_p is None
            and layer.nu_n is None
            and layer.gdiff.shape == layer.gp.shape
            and layer.gdiff.flags.c_contiguous
        )
        for gi in range(g):
            gp = layer.gp[gi, 0].reshape(-1)
            gn = layer.gn[gi, 0].reshape(-1) if pair else empty_f  # type: ignore[index]
            gd = layer.gdiff[gi, 0].reshape(-1) if keep else empty_f
            # threads only pay off for big layers: an OpenMP region per call costs a barrier,
            # and OpenMP threads spinning after it slow the BLAS calls that follow
            nt = eng.threads if r * c >= PARALLEL_UPDATE else 1
            self.k.optimizer_rule_update(
                _RULE_CODE[cfg.rule],
                0 if cfg.optimizer == "sgd" else 1,
                np.ascontiguousarray(gw[gi].reshape(-1), np.float32),
                st.m[gi],
                st.v[gi] if cfg.optimizer == "adam" else empty_f,
                st.chi[gi] if cfg.rule == "mixed" else empty_f,
                gp,
                gn,
                st.wear_p[gi],
                st.wear_n[gi] if pair else empty_i,
                st.counts[gi],
                r,
                c,
                cb,
                lr,
                cfg.beta1,
                cfg.beta2,
                cfg.eps,
                cfg.momentum,
                bias1,
                bias2,
                layer.lm.k,
                cfg.clip,
                self.sigma,
                cfg.clip,
                dev.g_min,
                dev.g_max,
                bounded,
                cfg.seed,
                self._stream(li, gi),
                self._work(nt * c),
                gd,
                nt,
            )
        return keep

    def _refresh_gdiff(self, layer: Layer) -> None:
        """After an update: ``gdiff`` exactly as ``Engine.refresh`` computes it.

        The read-noise rms is left for the next full refresh (see :data:`RECAL_EVERY`); a
        drifting device falls back to ``Engine.refresh``.
        """
        if layer.nu_p is not None or layer.nu_n is not None or layer.gdiff.shape != layer.gp.shape:
            self.engine.refresh(layer)
        elif layer.gn is not None:
            np.subtract(layer.gp, layer.gn, out=layer.gdiff)
        elif layer.gdiff is not layer.gp:
            layer.gdiff[...] = layer.gp

    def _refresh_all(self) -> None:
        for layer in self.engine.layers.values():
            self.engine.refresh(layer)

    def _work(self, size: int) -> Array:
        """float32 scratch of the update kernel (grown on demand, reused across calls)."""
        if self._scratch.shape[0] < size:
            self._scratch = np.empty(size, np.float32)
        return self._scratch

    def _pulse(self, layer: Layer, st: LayerState, gw: Array, lr: float, li: int) -> None:
        """Stochastic pulse trains: expected coincidences from the gradient (SGD, lr).

        The expected change ``-lr·grad/k`` µS becomes ``|Δ|/step`` expected pulses, split into
        up and down coincidence counts; the kernel draws them (aihwkit-style ConstantStep with
        cycle-to-cycle noise; update management keeps each pulse probability ≤ 1 per BL).
        """
        eng, cfg, dev = self.engine, self.cfg, self.engine.device
        g = layer.gp.shape[0]
        step = dev.step()
        cb = eng.col_block(layer)
        pair = layer.gn is not None
        for gi in range(g):
            want = (-lr * gw[gi] / layer.lm.k / step).astype(np.float32)  # expected net pulses
            # each weight can receive at most BL coincidences per step
            np.clip(want, -cfg.pulse_bl, cfg.pulse_bl, out=want)
            up = np.maximum(want, 0)
            down = np.maximum(-want, 0)
            gp = layer.gp[gi, 0].reshape(-1)
            gn = layer.gn[gi, 0].reshape(-1) if pair else np.zeros(0, np.float32)  # type: ignore[index]
            self.k.pulse_update(
                np.ascontiguousarray(up),
                np.ascontiguousarray(down),
                gp,
                gn,
                st.wear_p[gi],
                st.wear_n[gi] if pair else np.zeros(0, np.int32),
                st.counts[gi],
                cb,
                step,
                dev.pulse_asymmetry,
                dev.pulse_nonlinearity,
                cfg.pulse_noise,
                dev.g_min,
                dev.g_max,
                cfg.seed,
                self._stream(li, gi),
                eng.threads,
            )
            eng.digital.macs += gw[gi].size  # the outer product's expectation

    # ------------------------------------------------------------------ epochs

    def _flush_counts(self) -> dict[str, int]:
        """Move this epoch's per-(row, column block) counts onto the tile counters."""
        eng = self.engine
        tot = {"requested": 0, "applied": 0, "skipped": 0, "pulses": 0}
        rng_draws = 0
        for name, st in self.states.items():
            layer = eng.layers[name]
            cb = eng.col_block(layer)
            d = layer.lm.per_weight
            for t in layer.rects:
                blk = st.counts[t.group, t.row0 : t.row0 + t.rows, (t.col0 // d) // cb]
                s = blk.sum(axis=0)
                eng.counters.updates_requested[t.tile] += int(s[0])
                eng.counters.updates_applied[t.tile] += int(s[1])
                eng.counters.updates_skipped[t.tile] += int(s[2])
                eng.counters.write_pulses[t.tile] += int(s[3])
            s_all = st.counts.sum(axis=(0, 1, 2))
            reps = layer.op.replicas
            tot["requested"] += int(s_all[0]) * reps
            tot["applied"] += int(s_all[1]) * reps
            tot["skipped"] += int(s_all[2]) * reps
            tot["pulses"] += int(s_all[3]) * reps
            # the random numbers the rule needs in hardware (EaPU's thinned decisions, the pulse
            # trains), as the kernels count them; the normals that simulate the device's write
            # error are physics, not periphery work, and bp/mixed/float draw nothing. A decision
            # is drawn once and written to every replica.
            rng_draws += int(s_all[4])
            st.counts[...] = 0
        eng.digital.rng_draws += rng_draws
        return tot

    def evaluate(self, x: Array, y: Array) -> tuple[float, float]:
        """Loss and accuracy (classification) or MSE (regression) on a data split."""
        if x.shape[0] == 0:
            return 0.0, 0.0
        eng = self.engine
        saved = (eng.counters.copy(), eng.digital.copy(), eng.samples, eng.rng)
        eng.rng = np.random.default_rng([self.cfg.seed, 99991, self.epoch])
        losses, correct = 0.0, 0
        for i in range(0, x.shape[0], self.cfg.eval_batch):
            xb, yb = x[i : i + self.cfg.eval_batch], y[i : i + self.cfg.eval_batch]
            out = eng.forward(xb)
            if self.classification:
                loss, _, pred = softmax_xent(out, yb)
                correct += int((pred == yb).sum())
            else:
                loss, _ = mse(out, yb)
            losses += loss * xb.shape[0]
        eng.counters, eng.digital, eng.samples, eng.rng = saved
        n = x.shape[0]
        return losses / n, (correct / n if self.classification else -losses / n)

    def run_epoch(
        self, epoch: int, progress: Callable[[dict[str, Any]], None] | None = None
    ) -> EpochRecord:
        """Train one epoch and evaluate on the test split."""
        d = self.data
        rng = np.random.default_rng([self.cfg.seed, epoch, 7])
        before_tiles = self.engine.counters.copy()
        before_dig = self.engine.digital.copy()
        loss_sum, correct, seen = 0.0, 0, 0
        for i, (xb, yb) in enumerate(
            batches(d.x_train, d.y_train, self.cfg.batch, shuffle=True, rng=rng)
        ):
            if i % RECAL_EVERY == 0 and not self.engine.ideal:
                self._refresh_all()
                self.engine.calibrate(xb)
                for layer in self.engine.layers.values():
                    layer.adc_range_t = np.zeros((0, 0, 0), np.float32)
            loss, ok = self.step(xb, yb, epoch=epoch, index=i)
            loss_sum += loss * xb.shape[0]
            correct += ok
            seen += xb.shape[0]
            if progress is not None:
                progress(
                    {
                        "epoch": epoch,
                        "seen": seen,
                        "total": d.x_train.shape[0],
                        "loss": loss_sum / seen,
                        "acc": correct / seen,
                    }
                )
        tot = self._flush_counts()
        self._refresh_all()
        test_loss, test_acc = self.evaluate(d.x_test, d.y_test)
        delta_t = self.engine.counters.minus(before_tiles)
        delta_d = self.engine.digital.minus(before_dig)
        energy = self._energy(delta_t, delta_d, max(seen, 1))
        self.per_epoch_tiles.append(
            {
                f: list(map(int, getattr(delta_t, f)))
                for f in ("write_pulses", "updates_applied", "updates_requested")
            }
        )
        rec = EpochRecord(
            epoch=epoch,
            loss=loss_sum / max(seen, 1),
            train_acc=correct / max(seen, 1),
            test_acc=test_acc,
            test_loss=test_loss,
            lr=self.lr_at(epoch),
            energy_j=energy.total,
            max_writes=self.max_writes(),
            **tot,
        )
        self.history.append(rec)
        self.epoch = epoch + 1
        return rec

    def max_writes(self) -> int:
        """Most writes any device has seen (this run plus the program's earlier wear)."""
        wear = self.wear_tiles()
        return int(wear.max()) if wear.size else 0

    def _energy(self, tiles: TileCounters, digital: DigitalCounters, samples: int) -> Any:
        p = self.engine.program
        cfg = p.config
        n = p.n_tiles
        return self.energy_model.breakdown(
            tiles,
            digital,
            dac_bits=np.full(n, 1 if cfg.input_mode == "bit-serial" else cfg.dac_bits),
            adc_bits=np.full(n, cfg.adc_bits),
            samples=samples,
            gpu_flops_per_sample=3 * 2 * self.forward_macs(),
            training=True,
        )

    def forward_macs(self) -> int:
        """MACs of one inference (crossbar and digital), from the placements."""
        g = self.engine.program.graph
        return sum(n.placement.macs for n in g.nodes if n.placement is not None)

    # ------------------------------------------------------------------ wear and state

    def wear_tiles(self) -> Array:
        """Writes per tile cell ``[T, rows, cols]`` including the program's earlier wear."""
        p = self.engine.program
        t = p.n_tiles
        rows, cols = p.tile_shape
        wear = np.zeros((t, rows, cols), np.int64) if p.wear is None else np.array(p.wear, np.int64)
        for name, st in self.states.items():
            layer = self.engine.layers[name]
            g, s, r, c = layer.gp.shape
            wp = st.wear_p.reshape(g, s, r, c)
            wn = st.wear_n.reshape(g, s, r, c) if layer.gn is not None else None
            phys = join_planes(wp, wn, layer.lm).astype(np.int64)
            for t_ in layer.rects:  # every replica is written alike
                wear[t_.tile, t_.trow : t_.trow + t_.rows, t_.tcol : t_.tcol + t_.cols] += phys[
                    t_.group, t_.row0 : t_.row0 + t_.rows, t_.col0 : t_.col0 + t_.cols
                ]
        return wear

    def wear_summary(self, endurance: float) -> dict[str, Any]:
        """Writes per device (max, p99, mean over used devices) and remaining endurance."""
        wear = self.wear_tiles()
        used = self._used_mask()
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
        epochs = max(1, len(self.history))
        worst_per_epoch = float(vals.max()) / epochs
        return {
            "endurance": endurance,
            "max": int(vals.max()),
            "p99": float(np.percentile(vals, 99)),
            "mean": float(vals.mean()),
            "epochs_to_endurance": (endurance / worst_per_epoch) if worst_per_epoch > 0 else None,
            "per_tile": per_tile,
        }

    def _used_mask(self) -> Array:
        p = self.engine.program
        rows, cols = p.tile_shape
        used = np.zeros((p.n_tiles, rows, cols), bool)
        for t in p.graph.tiles:
            used[t.tile, t.trow : t.trow + t.rows, t.tcol : t.tcol + t.cols] = True
        return used

    def trained_program(self) -> backend.Program:
        """The program with the current device states, wear, calibration and history."""
        eng = self.engine
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
                    "config": asdict(self.cfg),
                    "epochs": len(self.history),
                    "final_test_acc": self.history[-1].test_acc if self.history else None,
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
            self.wear_tiles(),
            extra,
            {k: v for k, v in p.extra_arrays.items() if not k.startswith("train/")},
        )

    # ------------------------------------------------------------------ checkpoints

    def state_arrays(self) -> dict[str, Array]:
        """Optimiser and bookkeeping state as named arrays (for checkpoints)."""
        out: dict[str, Array] = {}
        for name, st in self.states.items():
            for f in ("m", "v", "chi", "wear_p", "wear_n"):
                out[f"train/{name}/{f}"] = getattr(st, f)
        for i, key in enumerate(sorted(self.params, key=lambda k: self._param_order(k))):
            out[f"train/param/{i}/m"] = self.param_m[key]
            out[f"train/param/{i}/v"] = self.param_v[key]
        out["train/counters"] = np.stack(
            [getattr(self.engine.counters, f) for f in TileCounters.FIELDS]
        )
        return out

    def _param_order(self, key: int) -> int:
        for i, v in enumerate(self.engine.program.graph.constants()):
            if v.const is not None and id(v.const) == key:
                return i
        return -1

    def checkpoint(self, path: Path) -> None:
        """Write an atomic checkpoint: trained program + training state (resumable)."""
        p = self.trained_program()
        # wear in the checkpoint must stay the *initial* wear plus this run: store the run's
        # own wear separately so resuming does not count it twice.
        p.wear = self.engine.program.wear
        # likewise the run list: this run is recorded once, when the trained program is written
        runs = self.engine.program.extra.get("training")
        if runs is None:
            p.extra.pop("training", None)
        else:
            p.extra["training"] = runs
        p.extra["checkpoint"] = {
            "epoch": self.epoch,
            "step": self.step_count,
            "history": [asdict(h) for h in self.history],
            "per_epoch_tiles": self.per_epoch_tiles,
            "config": asdict(self.cfg),
            "digital": self.engine.digital.to_dict(),
            "samples": self.engine.samples,
        }
        p.extra_arrays.update(self.state_arrays())
        backend.save(p, path)

    def restore(self, p: backend.Program) -> None:
        """Continue from a checkpoint program (its device states are already loaded)."""
        ck = p.extra.get("checkpoint")
        if not isinstance(ck, dict):
            raise XbarcError("the file to resume from is not a training checkpoint")
        saved_cfg = dict(ck["config"])
        mine = asdict(self.cfg)
        diff = {k for k in mine if k not in ("epochs", "limit") and saved_cfg.get(k) != mine[k]}
        if diff:
            raise XbarcError(f"cannot resume: options differ from the checkpoint in {sorted(diff)}")
        a = p.extra_arrays
        for name, st in self.states.items():
            for f in ("m", "v", "chi", "wear_p", "wear_n"):
                arr = a.get(f"train/{name}/{f}")
                if arr is None or arr.shape != getattr(st, f).shape:
                    raise XbarcError(f"checkpoint lacks optimiser state train/{name}/{f}")
                getattr(st, f)[...] = arr
        for i, key in enumerate(sorted(self.params, key=lambda k: self._param_order(k))):
            self.param_m[key][...] = a[f"train/param/{i}/m"]
            self.param_v[key][...] = a[f"train/param/{i}/v"]
        counters = a["train/counters"]
        for j, f in enumerate(TileCounters.FIELDS):
            getattr(self.engine.counters, f)[...] = counters[j]
        self.engine.digital = DigitalCounters.from_dict(ck["digital"])
        self.engine.samples = int(ck["samples"])
        self.epoch = int(ck["epoch"])
        self.step_count = int(ck["step"])
        self.history = [EpochRecord(**h) for h in ck["history"]]
        self.per_epoch_tiles = list(ck["per_epoch_tiles"])

    def result(self) -> TrainResult:
        """Summary of the run so far."""
        eng = self.engine
        energy = self._energy(eng.counters, eng.digital, max(1, self.samples_trained()))
        return TrainResult(
            history=list(self.history),
            counters=eng.counters.copy(),
            digital=eng.digital.copy(),
            energy=energy.to_dict(),
            wear=self.wear_summary(eng.device.endurance),
            samples=self.samples_trained(),
            final_test_acc=self.history[-1].test_acc if self.history else float("nan"),
            config=self.cfg,
            per_epoch_tiles=self.per_epoch_tiles,
        )

    def samples_trained(self) -> int:
        """Training samples processed so far."""
        return len(self.history) * self.data.x_train.shape[0]


def prepare_data(data: Dataset, engine: Engine, cfg: TrainConfig) -> Dataset:
    """Adapt a data set to the program's input and output shapes and apply ``limit``."""
    check_classes(data, engine.output_shape)
    d = data.adapted(engine.input_shape)
    if cfg.limit:
        d = d.limited(cfg.limit)
    if d.x_train.shape[0] == 0:
        raise DataError(f"data set {d.name} has no training samples")
    return d


def dump_json(obj: Any) -> str:
    """Compact deterministic JSON."""
    return json.dumps(obj, sort_keys=True, default=float)
