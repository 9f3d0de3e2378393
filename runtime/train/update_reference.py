"""NumPy twins of the training update kernels in ``_update.pyx`` (same signatures, same draws).

The counter-based generator is reproduced exactly (SplitMix64 over uint64 with wrap-around),
so the twin and the kernel make the same random decisions (EaPU's thinned candidate draws
are replayed segment by segment, vectorised across segments); results agree up to float
rounding of the transcendental functions (``log``, ``cos`` in NumPy vs libm).
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


_CAND = np.uint64(0xD1B54A32D192ED03)
_ACCEPT = np.uint64(0x8CB92BA72F3D8DD7)
_KMAX = 24


def raw(k: np.uint64, ctr: Array) -> Array:
    """The generator's raw 64-bit words for counters ``ctr`` (``uniform`` uses their top bits)."""
    with np.errstate(over="ignore"):
        return _mix(k + (ctr.astype(np.uint64) + np.uint64(1)) * _GOLDEN)


def _candidates(
    kk: np.uint64, d: Array, rows: int, cols: int, col_block: int, c: float
) -> tuple[Array, Array]:
    """EaPU thinning below ``c`` (see ``_update.pyx``).

    Returns the indices written and the 32-bit draws per segment (``[rows * n_col_blocks]``).
    """
    ncb = -(-cols // col_block)
    fc = np.float32(c)
    dd = d.reshape(rows, cols).astype(np.float32)
    t = np.abs(dd)
    small = np.where((dd != 0) & (t < fc), t, np.float32(0))
    pad = np.zeros((rows, ncb * col_block), np.float32)
    pad[:, :cols] = small
    qmax = pad.reshape(rows, ncb, col_block).max(axis=2).reshape(-1).astype(np.float64)
    draws = np.zeros(rows * ncb, np.int64)
    seg = np.flatnonzero(qmax > 0)
    if seg.size == 0:
        return np.zeros(0, np.int64), draws
    ckey = np.uint64(_mix(np.array([kk ^ _CAND], np.uint64))[0])
    akey = np.uint64(_mix(np.array([kk ^ _ACCEPT], np.uint64))[0])
    _, e2 = np.frexp(qmax[seg] / c)
    k = np.clip(-e2, 0, _KMAX).astype(np.int64)
    qc = np.ldexp(c, -k)
    r, cb = np.divmod(seg, ncb)
    c0 = cb * col_block
    c1 = np.minimum(c0 + col_block, cols)
    sbase = seg.astype(np.uint64) << np.uint64(32)
    # one row per (segment, run of 64 weights)
    nrun = (c1 - c0 + 63) // 64
    sid = np.repeat(np.arange(seg.size), nrun)
    off = np.concatenate([np.arange(n) * 64 for n in nrun]).astype(np.int64)
    length = np.minimum(64, (c1 - c0)[sid] - off)
    bits = np.where(
        length >= 64,
        np.uint64(0xFFFFFFFFFFFFFFFF),
        (np.uint64(1) << np.minimum(length, 63).astype(np.uint64)) - np.uint64(1),
    ).astype(np.uint64)
    kr = k[sid]
    for b in range(int(k.max())):
        on = kr > b
        bits[on] &= raw(ckey, sbase[sid[on]] + (off[on] + b).astype(np.uint64))
    np.add.at(draws, seg[sid], 2 * kr)
    # set bits → candidate positions (little-endian bit order: bit b is weight off + b)
    mask = np.unpackbits(bits.astype("<u8").view(np.uint8).reshape(-1, 8), axis=1,
                         bitorder="little").astype(bool)  # fmt: skip
    run, b = np.nonzero(mask)
    s_of = sid[run]
    pos = off[run] + b  # within the segment
    j = c0[s_of] + pos
    i = r[s_of] * cols + j
    ti = np.abs(d[i].astype(np.float32))
    elig = (ti != 0) & (ti < fc)
    s_of, pos, i, ti = s_of[elig], pos[elig], i[elig], ti[elig]
    np.add.at(draws, seg[s_of], 1)
    u = uniform(akey, sbase[s_of] + pos.astype(np.uint64))
    acc = u * qc[s_of] < ti.astype(np.float64)
    return i[acc], draws


def _set_gdiff(gdiff: Array, gp: Array, gn: Array, idx: Array) -> None:
    if gdiff.shape[0]:
        gdiff[idx] = gp[idx] - gn[idx] if gn.shape[0] else gp[idx]


def _check_len(name: str, arr: Array, n: int) -> None:
    if arr.shape[0] != n:
        raise ValueError(f"{name} has length {arr.shape[0]}, expected {n}")


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
    work: Array,
    gdiff: Array,
    n_threads: int = 1,
) -> None:
    """Twin of ``_update.optimizer_rule_update`` (see its docstring)."""
    n = rows * cols
    pair = gn.shape[0] > 0
    if rows < 0 or cols < 0 or col_block < 1:
        raise ValueError("rows, cols must be >= 0 and col_block >= 1")
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    if rule not in (0, 1, 2, 3) or optimizer not in (0, 1):
        raise ValueError(f"unknown rule {rule} or optimizer {optimizer}")
    if k <= 0:
        raise ValueError(f"k (weight per µS) must be > 0, got {k}")
    _check_len("grad", grad, n)
    _check_len("m", m, n)
    if optimizer == OPT_ADAM:
        _check_len("v", v, n)
    if rule == RULE_MIXED:
        _check_len("chi", chi, n)
        if mixed_eps <= 0:
            raise ValueError("mixed_eps must be > 0")
    if rule == RULE_EAPU and c <= 0:
        raise ValueError("c must be > 0")
    _check_len("gp", gp, n)
    _check_len("wp", wp, n)
    if pair:
        _check_len("gn", gn, n)
        _check_len("wn", wn, n)
    ncb = -(-cols // col_block)
    if counts.shape != (rows, ncb, 5):
        raise ValueError(f"counts has shape {counts.shape}, expected ({rows}, {ncb}, 5)")
    if gdiff.shape[0] != 0:
        _check_len("gdiff", gdiff, n)
    if work.shape[0] < n_threads * cols:
        raise ValueError(
            f"work has length {work.shape[0]}, expected at least {n_threads * cols} "
            "(n_threads * cols)"
        )
    if n == 0:
        return
    f32 = np.float32
    g = np.asarray(grad, f32)
    if optimizer == OPT_SGD:
        mm = f32(momentum) * m + g
        m[:] = mm
        d32 = mm * f32(-lr / k)
    else:
        mm = f32(beta1) * m + f32(1.0 - beta1) * g
        vv = f32(beta2) * v + (f32(1.0 - beta2) * g) * g
        m[:] = mm
        v[:] = vv
        d32 = (mm * f32(-lr / (bias1 * k))) / (np.sqrt(vv * f32(1.0 / bias2)) + f32(eps))
    if rule == RULE_MIXED:
        chi[:] = chi + d32
    d = d32.astype(np.float64)
    req = np.flatnonzero(d != 0.0)
    _count(counts, req, cols, col_block, 0)
    if rule == RULE_FLOAT:
        _write(gp, gn, wp, wn, req, d[req], gmin, gmax, False, np.zeros(req.shape, np.int32))
        _count(counts, req, cols, col_block, 1)
        _set_gdiff(gdiff, gp, gn, req)
        return
    kk = key(seed, stream)
    pulses = None
    if rule == RULE_BP:
        idx = req
        dd = d[idx]
    elif rule == RULE_EAPU:
        big = req[np.abs(d32[req]) >= np.float32(c)]
        small, draws = _candidates(kk, d, rows, cols, col_block, c)
        counts[..., 4] += draws.reshape(rows, ncb)
        idx = np.concatenate([big, small])
        dd = np.concatenate([d[big], np.where(d[small] > 0, c, -c)])
    else:
        a = np.abs(chi[req].astype(np.float64))
        hit = a >= mixed_eps
        idx = req[hit]
        steps = np.floor(a[hit] / mixed_eps)
        dd = np.where(chi[idx] > 0, steps * mixed_eps, -steps * mixed_eps)
        chi[idx] = (chi[idx].astype(np.float64) - dd).astype(np.float32)
        pulses = steps.astype(np.int32)
    if pulses is None:
        pulses = np.ones(idx.shape, np.int32)
    if sigma > 0:
        z = normal(kk, 2 * idx.astype(np.uint64))
        dd = dd + (sigma * np.sqrt(steps) if rule == RULE_MIXED else sigma) * z
    _write(gp, gn, wp, wn, idx, dd, gmin, gmax, bounded, pulses)
    _set_gdiff(gdiff, gp, gn, idx)
    _count(counts, idx, cols, col_block, 1)
    _count(counts, idx, cols, col_block, 3, pulses.astype(np.int64))
    skipped = np.ones(n, bool)
    skipped[idx] = False
    skipped &= d != 0.0
    _count(counts, np.flatnonzero(skipped), cols, col_block, 2)


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
    rows, cols = lam_up.shape
    if lam_down.shape != lam_up.shape:
        raise ValueError(f"lam_down has shape {lam_down.shape}, expected {lam_up.shape}")
    if col_block < 1:
        raise ValueError("col_block must be >= 1")
    n = rows * cols
    _check_len("gp", gp, n)
    _check_len("wp", wp, n)
    if gn.shape[0] > 0:
        _check_len("gn", gn, n)
        _check_len("wn", wn, n)
    ncb = -(-cols // col_block)
    if counts.shape != (rows, ncb, 5):
        raise ValueError(f"counts has shape {counts.shape}, expected ({rows}, {ncb}, 5)")
    lu, ld = lam_up.reshape(-1), lam_down.reshape(-1)
    req = np.flatnonzero((lu > 0) | (ld > 0))
    _count(counts, req, cols, col_block, 0)
    _count(counts, req, cols, col_block, 4, np.full(req.shape, 2, np.int64))
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
