"""The training loop: one :class:`Trainer` per run, stepping batches through the chip.

One step (per batch), as :meth:`Trainer.step` names them:

1. **forward** through the engine with every configured non-ideality, recording a tape;
2. **loss** (:mod:`~xbarc.runtime.train.losses`) and its gradient at the output;
3. **backward**: crossbar layers use the transposed MVM on the same tiles, digital ops their
   VJPs (:mod:`~xbarc.runtime.train.backward`); weight **gradients** are formed digitally from
   the applied inputs and the errors;
4. **rule** and **write**: the optimiser (:mod:`~xbarc.runtime.train.optimizers`) turns each
   gradient into a desired update and the update rule (:mod:`~xbarc.runtime.train.rules`)
   decides what is written to the conductance pairs, with the device's write model; digital
   parameters (biases, normalisation, embeddings) are updated exactly in float;
5. **count**: per tile and per epoch (requested / applied / skipped updates, pulses, MVMs and
   conversions), and writes per device (wear, persistent across runs).

Every random draw is a function of ``(seed, epoch, step)``, so a run resumed from an epoch
checkpoint ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xbarc.backend import lower as backend
from xbarc.errors import ConfigError, DataError, XbarcError
from xbarc.ir import ops as O
from xbarc.ir.core import Graph
from xbarc.runtime.counters import DigitalCounters, TileCounters
from xbarc.runtime.crossbar import Layer
from xbarc.runtime.data import Dataset, batches, check_classes
from xbarc.runtime.energy import EnergyModel
from xbarc.runtime.engine import Engine
from xbarc.runtime.train import checkpoint as ckpt
from xbarc.runtime.train import losses, wear
from xbarc.runtime.train.backward import backward
from xbarc.runtime.train.config import RECAL_EVERY, TrainConfig
from xbarc.runtime.train.optimizers import OPTIMIZERS
from xbarc.runtime.train.rules import RULES
from xbarc.runtime.train.state import EpochRecord, LayerState, TrainResult

Array = np.ndarray[Any, Any]


class Trainer:
    """Trains the crossbar layers of an engine on-chip and its digital parameters exactly."""

    def __init__(self, engine: Engine, cfg: TrainConfig, data: Dataset) -> None:
        cfg.validate()
        self.engine = engine
        self.cfg = cfg
        self.data = data
        self.k = self._update_kernels(engine)
        self.rule = RULES[cfg.rule]
        self.optimizer = OPTIMIZERS[cfg.optimizer]
        self.loss = losses.resolve(cfg.loss, data.classes)
        self.classification = self.loss.classification
        dev = engine.device
        self.sigma = dev.write_noise if cfg.write_noise < 0 else cfg.write_noise
        if not self.rule.write_noise:
            self.sigma = 0.0
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
        self.states = {
            name: self._layer_state(engine.layers[name]) for name in sorted(engine.layers)
        }
        self._scratch = np.empty(0, np.float32)
        self.params = self._digital_params(engine.program.graph)
        self.param_m = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.param_v = {k: np.zeros_like(v) for k, v in self.params.items()}
        engine._graphs.clear()
        self.step_count = 0
        self.epoch = 0
        self.history: list[EpochRecord] = []
        self.per_epoch_tiles: list[dict[str, list[int]]] = []
        energy = engine.program.config.energy
        self.energy_model = (
            EnergyModel.default().with_overrides(energy, where="chip config [energy]")
            if energy
            else EnergyModel.default()
        )

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _update_kernels(engine: Engine) -> Any:
        if engine.k.__name__.endswith("reference"):
            from xbarc.runtime.train import update_reference

            return update_reference
        from xbarc.runtime.train import _update  # type: ignore[attr-defined]

        return _update

    def _layer_state(self, layer: Layer) -> LayerState:
        g, _, r, c = layer.gp.shape
        n = r * c
        ncb = math.ceil(c / self.engine.col_block(layer))
        pair = layer.gn is not None
        return LayerState(
            m=np.zeros((g, n), np.float32),
            v=np.zeros((g, n if self.optimizer.second_moment else 0), np.float32),
            chi=np.zeros((g, n if self.rule.accumulates else 0), np.float32),
            wear_p=np.zeros((g, n), np.int32),
            wear_n=np.zeros((g, n if pair else 0), np.int32),
            counts=np.zeros((g, r, ncb, 5), np.int64),
        )

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
        out = eng.forward(x, tape=tape)  # forward
        loss, gout, correct = self.loss(out, y)  # loss
        self._check_finite(loss, epoch, index)
        gout = self._pad_to_fixed_batch(gout)
        wgrads, pgrads = backward(eng, tape, gout, self.params)  # backward, gradients
        lr = self.lr_at(epoch)
        self._write(wgrads, lr)  # rule, write
        self._update_digital(pgrads, lr)
        self.step_count += 1  # count
        return loss, correct

    def _check_finite(self, loss: float, epoch: int, index: int) -> None:
        if not math.isfinite(loss):
            raise XbarcError(
                f"training diverged at epoch {epoch + 1}, batch {index + 1}: the loss is {loss} "
                f"(rule {self.cfg.rule}, lr {self.lr_at(epoch):g}); lower --lr or check the model"
            )

    def _pad_to_fixed_batch(self, gout: Array) -> Array:
        """The epoch's last batch of a fixed-batch model: padding rows carry no gradient."""
        if self.fixed_batch and gout.shape[0] < self.fixed_batch:
            pad = np.zeros((self.fixed_batch - gout.shape[0], *gout.shape[1:]), gout.dtype)
            return np.concatenate([gout, pad])
        return gout

    def _write(self, wgrads: dict[str, Array], lr: float) -> None:
        """Each crossbar layer's gradient through the optimiser and the rule onto its tiles."""
        eng = self.engine
        for li, name in enumerate(sorted(eng.layers)):
            if name not in wgrads:
                continue
            layer, gw = eng.layers[name], wgrads[name]
            if not self.rule.apply(self, layer, self.states[name], gw, lr, li):
                self.refresh_gdiff(layer)
            eng.digital.elem_ops += gw.size * self.optimizer.ops_per_weight

    def _update_digital(self, pgrads: dict[int, Array], lr: float) -> None:
        """Digital parameters: the optimiser step, exactly, in float."""
        t = self.step_count + 1
        for key, g in pgrads.items():
            p = self.params[key]
            g = g.reshape(p.shape).astype(np.float32)
            self.optimizer.step(p, g, self.param_m[key], self.param_v[key], lr, t, self.cfg)
            self.engine.digital.elem_ops += p.size * 12

    def stream(self, layer_index: int, group: int) -> int:
        """The update kernels' random stream of a layer group at this step."""
        return (self.step_count * 4096 + layer_index) * 256 + group

    def scratch(self, size: int) -> Array:
        """float32 scratch of the update kernel (grown on demand, reused across calls)."""
        if self._scratch.shape[0] < size:
            self._scratch = np.empty(size, np.float32)
        return self._scratch

    def refresh_gdiff(self, layer: Layer) -> None:
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
        total, correct = 0.0, 0
        for i in range(0, x.shape[0], self.cfg.eval_batch):
            xb, yb = x[i : i + self.cfg.eval_batch], y[i : i + self.cfg.eval_batch]
            loss, _, ok = self.loss(eng.forward(xb), yb)
            correct += ok
            total += loss * xb.shape[0]
        eng.counters, eng.digital, eng.samples, eng.rng = saved
        n = x.shape[0]
        return total / n, (correct / n if self.classification else -total / n)

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
                self._recalibrate(xb)
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

    def _recalibrate(self, xb: Array) -> None:
        """Converter ranges and read-noise rms from the current conductances and batch."""
        self._refresh_all()
        self.engine.calibrate(xb)
        for layer in self.engine.layers.values():
            layer.adc_range_t = np.zeros((0, 0, 0), np.float32)

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

    # ------------------------------------------------------------------ wear, state, results

    def max_writes(self) -> int:
        """Most writes any device has seen (this run plus the program's earlier wear)."""
        w = self.wear_tiles()
        return int(w.max()) if w.size else 0

    def wear_tiles(self) -> Array:
        """Writes per tile cell (see :func:`~xbarc.runtime.train.wear.wear_tiles`)."""
        return wear.wear_tiles(self)

    def wear_summary(self, endurance: float) -> dict[str, Any]:
        """Writes per device and endurance left (:func:`~xbarc.runtime.train.wear.wear_summary`)."""
        return wear.wear_summary(self, endurance)

    def trained_program(self) -> backend.Program:
        """The program with the current device states (:func:`.checkpoint.trained_program`)."""
        return ckpt.trained_program(self)

    def checkpoint(self, path: Path) -> None:
        """Write an atomic, resumable checkpoint (:func:`.checkpoint.checkpoint`)."""
        ckpt.checkpoint(self, path)

    def restore(self, p: backend.Program) -> None:
        """Continue from a checkpoint program (:func:`.checkpoint.restore`)."""
        ckpt.restore(self, p)

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
