"""Update rules, chosen by name (``TrainConfig.rule``): what a desired update writes to the tiles.

* ``eapu`` — error-aware probabilistic update (Liu et al., Nat. Commun. 2025): an update smaller
  than the clip value ``c`` is written as one update of size ``c`` with probability ``|u|/c``
  (else skipped); every write lands with the device's write noise.
* ``bp`` — every nonzero update is written, with write noise (the paper's noisy-BP baseline).
* ``mixed`` — mixed-precision accumulate-and-threshold (Nandakumar et al.): updates accumulate in
  a digital ``χ`` and are written in steps of ``c`` once ``|χ| ≥ c``.
* ``float`` — exact updates, no device limits (the ceiling).
* ``pulse`` — stochastic pulse trains as in aihwkit's pulsed devices (SGD semantics).

The first four share one Cython kernel with the optimiser step (``_update.optimizer_rule_update``,
selected by :attr:`KernelRule.code`); ``pulse`` has its own (``_update.pulse_update``). A rule
is one entry of :data:`RULES`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from xbarc.runtime.crossbar import Layer
    from xbarc.runtime.train.loop import Trainer
    from xbarc.runtime.train.state import LayerState

Array = np.ndarray[Any, Any]

PARALLEL_UPDATE = 1 << 20
"""Weights of one layer group from which the update kernel runs on ``Engine.threads``
threads (results are the same for every thread count)."""


class UpdateRule(abc.ABC):
    """How one layer's gradient becomes conductance writes."""

    name: str
    write_noise: bool = True
    """Writes land with the device's write noise (``float`` writes exactly)."""
    accumulates: bool = False
    """Keeps a digital accumulator ``χ`` per weight (``mixed``)."""

    @abc.abstractmethod
    def apply(
        self, tr: Trainer, layer: Layer, st: LayerState, gw: Array, lr: float, li: int
    ) -> bool:
        """Write the update of a layer's gradient ``gw[G, R, C]``; True if ``gdiff`` is current."""


RULES: dict[str, UpdateRule] = {}
"""Every update rule by name."""


def register(rule: UpdateRule) -> UpdateRule:
    """Add ``rule`` to :data:`RULES`."""
    RULES[rule.name] = rule
    return rule


@dataclass(frozen=True)
class KernelRule(UpdateRule):
    """A rule of the fused optimiser + rule kernel (``_update.optimizer_rule_update``)."""

    name: str
    code: int
    """The rule's number in the kernel (``update_reference.RULE_*``)."""
    bounded: bool = True
    """Conductances stay within the device's [g_min, g_max]."""
    write_noise: bool = True
    accumulates: bool = False

    def apply(
        self, tr: Trainer, layer: Layer, st: LayerState, gw: Array, lr: float, li: int
    ) -> bool:
        """Run the update kernel on every group; True if it also kept ``gdiff`` current."""
        eng, cfg, dev = tr.engine, tr.cfg, tr.engine.device
        g, _, r, c = layer.gp.shape
        cb = eng.col_block(layer)
        pair = layer.gn is not None
        opt = tr.optimizer
        t = tr.step_count + 1
        bias1, bias2 = 1 - cfg.beta1**t, 1 - cfg.beta2**t
        empty_f = np.zeros(0, np.float32)
        empty_i = np.zeros(0, np.int32)
        # the kernel updates gdiff = G+ - G- of the written weights in place when gdiff is a
        # plain (undrifted) copy of the planes (see Trainer.refresh_gdiff)
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
            tr.k.optimizer_rule_update(
                self.code,
                opt.code,
                np.ascontiguousarray(gw[gi].reshape(-1), np.float32),
                st.m[gi],
                st.v[gi] if opt.second_moment else empty_f,
                st.chi[gi] if self.accumulates else empty_f,
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
                tr.sigma,
                cfg.clip,
                dev.g_min,
                dev.g_max,
                self.bounded,
                cfg.seed,
                tr.stream(li, gi),
                tr.scratch(nt * c),
                gd,
                nt,
            )
        return keep


@dataclass(frozen=True)
class PulseRule(UpdateRule):
    """Stochastic pulse trains: expected coincidences from the gradient (SGD, lr).

    The expected change ``-lr·grad/k`` µS becomes ``|Δ|/step`` expected pulses, split into up
    and down coincidence counts; the kernel draws them (aihwkit-style ConstantStep with
    cycle-to-cycle noise; update management keeps each pulse probability ≤ 1 per BL).
    """

    name: str = "pulse"

    def apply(
        self, tr: Trainer, layer: Layer, st: LayerState, gw: Array, lr: float, li: int
    ) -> bool:
        eng, cfg, dev = tr.engine, tr.cfg, tr.engine.device
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
            tr.k.pulse_update(
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
                tr.stream(li, gi),
                eng.threads,
            )
            eng.digital.macs += gw[gi].size  # the outer product's expectation
        return False


# the order users read in help and error messages
register(KernelRule("eapu", 2))
register(KernelRule("bp", 1))
register(PulseRule())
register(KernelRule("mixed", 3, accumulates=True))
register(KernelRule("float", 0, bounded=False, write_noise=False))
