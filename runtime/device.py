"""The device model at programming time and over time.

Programming a target conductance ``G*`` (µS) gives the device state::

    G = clip(levels(G*) + N(0, σ_abs) + levels(G*)·N(0, σ_rel), g_min, g_max)

then a fraction of devices is stuck at ``g_min`` or ``g_max``. Over time the state drifts as
``G(t) = G·(t/t0)^-ν`` with ``ν ~ N(ν̄, σ_ν)`` per device (only for ``t > t0``). Parameters come
from :class:`~xbarc.passes.config.DeviceConfig`; all randomness comes from the given generator.
"""

from __future__ import annotations

import numpy as np

from xbarc.passes.config import DeviceConfig


def quantise_levels(g: np.ndarray, dev: DeviceConfig) -> np.ndarray:
    """Snap conductances to the device's ``levels`` (no-op for continuous devices)."""
    if dev.levels < 2:
        return g
    step = (dev.g_max - dev.g_min) / (dev.levels - 1)
    return (dev.g_min + np.rint((g - dev.g_min) / step) * step).astype(g.dtype, copy=False)


def program(target: np.ndarray, dev: DeviceConfig, rng: np.random.Generator) -> np.ndarray:
    """Device states after programming ``target`` (float32 µS, any shape)."""
    g = quantise_levels(np.asarray(target, np.float32).copy(), dev)
    level = g.copy() if dev.prog_noise_abs > 0 and dev.prog_noise_rel > 0 else g
    if dev.prog_noise_abs > 0:
        g += rng.standard_normal(g.shape, dtype=np.float32) * np.float32(dev.prog_noise_abs)
    if dev.prog_noise_rel > 0:  # relative to the level, not to the level plus absolute noise
        g += level * rng.standard_normal(g.shape, dtype=np.float32) * np.float32(dev.prog_noise_rel)
    np.clip(g, dev.g_min, dev.g_max, out=g)
    stuck = dev.stuck_at_gmin + dev.stuck_at_gmax
    if stuck > 0:
        u = rng.random(g.shape, dtype=np.float32)
        g[u < dev.stuck_at_gmin] = dev.g_min
        g[(u >= dev.stuck_at_gmin) & (u < stuck)] = dev.g_max
    return g


def drift_exponents(
    shape: tuple[int, ...], dev: DeviceConfig, rng: np.random.Generator
) -> np.ndarray | None:
    """Per-device drift exponents ν, or None when the device does not drift."""
    if dev.drift_nu == 0 and dev.drift_nu_std == 0:
        return None
    nu: np.ndarray = dev.drift_nu + dev.drift_nu_std * rng.standard_normal(shape, dtype=np.float32)
    out: np.ndarray = np.maximum(nu, 0).astype(np.float32)
    return out


def drift(g: np.ndarray, nu: np.ndarray | None, dev: DeviceConfig, t: float) -> np.ndarray:
    """Conductances at time ``t`` after programming (unchanged for ``t <= t0`` or no drift)."""
    if nu is None or t <= dev.drift_t0:
        return g
    factor: np.ndarray = np.power(np.float32(t / dev.drift_t0), -nu)
    out: np.ndarray = np.maximum(g * factor, np.float32(0)).astype(np.float32)
    return out
