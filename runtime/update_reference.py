"""NumPy twins of the training update kernels in ``_update.pyx`` (same signatures, same draws).

The counter-based generator is reproduced exactly (SplitMix64 over uint64 with wrap-around),
so the twin and the kernel make the same random decisions; results agree up to float rounding
of the transcendental functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

RULE_FLOAT = 0
RULE_BP = 1
RULE_EAPU = 2
RULE_MIXED = 3
OPT_SGD = 0
OPT_ADAM = 1
COMPILED = False

Array = np.ndarray[Any, Any]
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: Array) -> Array:
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def key(seed: int, stream: int) -> np.uint64:
    """The generator key of a (seed, stream) pair."""
    with np.errstate(over="ignore"):
        s = _mix(np.array([stream], np.uint64) + _GOLDEN)
        return np.uint64(_mix(np.array([seed], np.uint64) ^ s)[0])


def uniform(k: np.uint64, ctr: Array) -> Array:
    """53-bit uniforms in [0, 1) for counters ``ctr`` (uint64)."""
    with np.errstate(over="ignore"):
        z = _mix(k + (ctr.astype(np.uint64) + np.uint64(1)) * _GOLDEN)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def normal(k: np.uint64, ctr: Array) -> Array:
    """Standard normals (Box–Muller over counters ``ctr`` and ``ctr + 1``)."""
    u1 = 1.0 - uniform(k, ctr)
    u2 = uniform(k, ctr + np.uint64(1))
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def _write(
    gp: Array,
    gn: Array,
    wp: Array,
    wn: Array,
    idx: Array,
    d: Array,
    gmin: float,
    gmax: float,
    bounded: bool,
    pulses: Array,
) -> None:
    pair = gn.shape[0] > 0

    def clip(x: Array) -> Array:
        return np.clip(x, gmin, gmax) if bounded else x

    if not pair:
        gp[idx] = clip(gp[idx].astype(np.float64) + d).astype(np.float32)
        wp[idx] += pulses.astype(np.int32)
        return
    p, n = gp[idx].astype(np.float64), gn[idx].astype(np.float64)
    on_n = ((d >= 0) & (n - gmin >= d)) | ((d < 0) & (p - gmin < -d))
    on_p = ~on_n
    ip, ineg = idx[on_p], idx[~on_p]
    gp[ip] = clip(p[on_p] + d[on_p]).astype(np.float32)
    wp[ip] += pulses[on_p].astype(np.int32)
    gn[ineg] = clip(n[~on_p] - d[~on_p]).astype(np.float32)
    wn[ineg] += pulses[~on_p].astype(np.int32)


def _count(
    counts: Array, idx: Array, cols: int, col_block: int, field: int, amount: Array | None = None
) -> None:
    r, c = np.divmod(idx, cols)
    np.add.at(counts, (r, c // col_block, field), 1 if amount is None else amount)


def optimizer_rule_update(
    rule: int,
    optimizer: int,
    grad: Array,
    m: Array,
    v: Array,
    chi: Array,
    gp: Array,
    gn: Array,
    wp: Array,
    wn: Array,
    counts: Array,
    rows: int,
    cols: int,
    col_block: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    momentum: float,
    bias1: float,
    bias2: float,
    k: float,
    c: float,
    sigma: float,
    mixed_eps: float,
    gmin: float,
    gmax: float,
    bounded: bool,
    seed: int,
    stream: int,
    n_threads: int = 1,
) -> None:
    """Twin of ``_update.optimizer_rule_update`` (see its docstring)."""
    n = rows * cols
    for name, arr in (("grad", grad), ("m", m), ("gp", gp), ("wp", wp)):
        if arr.shape[0] != n:
            raise ValueError(f"{name} has length {arr.shape[0]}, expected {n}")
    g = grad.astype(np.float64)
    if optimizer == OPT_SGD:
        mm = momentum * m.astype(np.float64) + g
        m[:] = mm
        u = -lr * mm
    else:
        mm = beta1 * m.astype(np.float64) + (1 - beta1) * g
        vv = beta2 * v.astype(np.float64) + (1 - beta2) * g * g
        m[:] = mm
        v[:] = vv
        u = -lr * (mm / bias1) / (np.sqrt(vv / bias2) + eps)
    d = u / k
    if rule == RULE_MIXED:
        chi[:] = (chi.astype(np.float64) + d).astype(np.float32)
    req = np.flatnonzero(d != 0.0)
    _count(counts, req, cols, col_block, 0)
    if rule == RULE_FLOAT:
        _write(gp, gn, wp, wn, req, d[req], gmin, gmax, False, np.zeros(req.shape, np.int32))
        _count(counts, req, cols, col_block, 1)
        return
    kk = key(seed, stream)
    dd = d[req]
    write = np.ones(req.shape, bool)
    if rule == RULE_EAPU:
        t = np.abs(dd)
        small = t < c
        r = uniform(kk, 3 * req.astype(np.uint64))
        write = ~small | (t >= r * c)
        dd = np.where(small, np.sign(dd) * c, dd)
    elif rule == RULE_MIXED:
        a = np.abs(chi[req].astype(np.float64))
        write = a >= mixed_eps
        steps = np.floor(a / mixed_eps)
        dd = np.where(chi[req] > 0, steps * mixed_eps, -steps * mixed_eps)
        chi[req[write]] = (chi[req[write]].astype(np.float64) - dd[write]).astype(np.float32)
    _count(counts, req[~write], cols, col_block, 2)
    idx = req[write]
    dd = dd[write]
    if sigma > 0:
        dd = dd + sigma * normal(kk, 3 * idx.astype(np.uint64) + np.uint64(1))
    _write(gp, gn, wp, wn, idx, dd, gmin, gmax, bounded, np.ones(idx.shape, np.int32))
    _count(counts, idx, cols, col_block, 1)
    _count(counts, idx, cols, col_block, 3)


def poisson(k: np.uint64, ctr: Array, lam: Array) -> Array:
    """Poisson draws by inversion (λ < 30) or a rounded normal (λ ≥ 30), as the kernel."""
    lam = lam.astype(np.float64)
    out = np.zeros(lam.shape, np.int64)
    small = (lam > 0) & (lam < 30)
    if small.any():
        u = uniform(k, ctr[small])
        lm = lam[small]
        p = np.exp(-lm)
        f = p.copy()
        kk = np.zeros(lm.shape, np.int64)
        active = u > f
        it = 0
        while active.any() and it < 1000:
            it += 1
            kk[active] += 1
            p = np.where(active, p * lm / np.maximum(kk, 1), p)
            f = np.where(active, f + p, f)
            active = active & (u > f)
        out[small] = kk
    big = lam >= 30
    if big.any():
        z = normal(k, ctr[big])
        out[big] = np.maximum(np.floor(lam[big] + np.sqrt(lam[big]) * z + 0.5), 0).astype(np.int64)
    return out


def pulse_update(
    lam_up: Array,
    lam_down: Array,
    gp: Array,
    gn: Array,
    wp: Array,
    wn: Array,
    counts: Array,
    col_block: int,
    step: float,
    asymmetry: float,
    nonlinearity: float,
    noise_rel: float,
    gmin: float,
    gmax: float,
    seed: int,
    stream: int,
    n_threads: int = 1,
) -> None:
    """Twin of ``_update.pulse_update`` (see its docstring)."""
    cols = lam_up.shape[1]
    if lam_down.shape != lam_up.shape:
        raise ValueError(f"lam_down has shape {lam_down.shape}, expected {lam_up.shape}")
    lu, ld = lam_up.reshape(-1), lam_down.reshape(-1)
    req = np.flatnonzero((lu > 0) | (ld > 0))
    _count(counts, req, cols, col_block, 0)
    kk = key(seed, stream)
    c6 = 6 * req.astype(np.uint64)
    nu = poisson(kk, c6, lu[req])
    nd = poisson(kk, c6 + np.uint64(2), ld[req])
    tot = nu + nd
    fired = tot > 0
    _count(counts, req[~fired], cols, col_block, 2)
    idx = req[fired]
    nu, nd, tot = nu[fired], nd[fired], tot[fired]
    x = (gp[idx].astype(np.float64) - gmin) / (gmax - gmin)
    su = step * (1 + asymmetry) * (1 - nonlinearity * x)
    sd = step * (1 - asymmetry) * (1 - nonlinearity * (1 - x))
    d = nu * su - nd * sd
    if noise_rel > 0:
        d = d + noise_rel * step * np.sqrt(tot) * normal(
            kk, 6 * idx.astype(np.uint64) + np.uint64(4)
        )
    _write(gp, gn, wp, wn, idx, d, gmin, gmax, True, tot)
    _count(counts, idx, cols, col_block, 1)
    _count(counts, idx, cols, col_block, 3, tot)
