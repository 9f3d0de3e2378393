# cython: language_level=3
"""Training update kernels: optimiser + device update rule fused in one pass per layer.

Design
------
* Who allocates: the Python caller (``runtime/train.py``), always. Kernels never allocate.
* Dtypes: conductances, gradients and optimiser state are float32; per-device write counts
  int32; per-(row, column block) counters int64 ``[rows, n_col_blocks, 4]`` holding
  (requested, applied, skipped, pulses). Arithmetic inside is float64.
* Layout: one crossbar layer group with S = 1 slice, flattened row-major ``[R, C]`` (index
  ``i = r*C + c``). ``gn``/``wn`` are empty for offset signing (one device per weight).
* Randomness: a counter-based generator (SplitMix64 finaliser over ``(seed, stream, i)``), so
  every draw is a pure function of its index: results do not depend on thread count or order,
  and the NumPy twin in ``update_reference.py`` reproduces them. ``stream`` encodes layer and
  step. Uniform ``i`` uses counter ``3i``; the two normals of a write use ``3i+1``, ``3i+2``
  (Box–Muller). Draws happen only where needed (weights with a nonzero update; written weights).
* Threading: ``prange`` over rows; a thread owns whole rows, so counters need no atomics.
* Conductance writes on a differential pair: a positive change lowers G- when G- is at least
  that far above g_min, else raises G+; a negative change lowers G+ when it can, else raises
  G-. One device of each pair so stays near g_min (no common-mode drift). The written device
  is clipped to [g_min, g_max] when ``bounded``.
"""

from cython.parallel import prange
from libc.math cimport cos, fabs, floor, log, sqrt, exp, M_PI
from libc.stdint cimport uint64_t, int64_t, int32_t

RULE_FLOAT = 0
RULE_BP = 1
RULE_EAPU = 2
RULE_MIXED = 3
OPT_SGD = 0
OPT_ADAM = 1
COMPILED = True

cdef uint64_t GOLDEN = 0x9E3779B97F4A7C15ULL


cdef inline uint64_t _mix(uint64_t z) noexcept nogil:
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline uint64_t _key(uint64_t seed, uint64_t stream) noexcept nogil:
    return _mix(seed ^ _mix(stream + GOLDEN))


cdef inline double _uniform(uint64_t key, uint64_t ctr) noexcept nogil:
    # 53-bit uniform in [0, 1)
    return <double>(_mix(key + (ctr + 1) * GOLDEN) >> 11) * (1.0 / 9007199254740992.0)


cdef inline double _normal(uint64_t key, uint64_t ctr) noexcept nogil:
    # Box-Muller from counters ctr and ctr+1; u1 in (0, 1]
    cdef double u1 = 1.0 - _uniform(key, ctr)
    cdef double u2 = _uniform(key, ctr + 1)
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2)


cdef inline double _clip(double g, double gmin, double gmax, bint bounded) noexcept nogil:
    if not bounded:
        return g
    return gmin if g < gmin else (gmax if g > gmax else g)


cdef inline void _write(float* gp, float* gn, int32_t* wp, int32_t* wn, Py_ssize_t i, double d,
                        double gmin, double gmax, bint bounded, bint pair, int npulses) noexcept nogil:
    """Apply change ``d`` (µS) to weight ``i`` on the device with more room in that direction."""
    if not pair:
        gp[i] = <float>_clip(gp[i] + d, gmin, gmax, bounded)
        wp[i] += npulses
        return
    # Keep the pair canonical (one device near g_min): a change first lowers the device that
    # opposes it when that device has the room (d > 0 lowers G-, d < 0 lowers G+), else it
    # raises the other one. Raising the "wrong" device instead would ratchet both devices up
    # to g_max (common-mode drift) and freeze the weight.
    if (d >= 0 and gn[i] - gmin >= d) or (d < 0 and gp[i] - gmin < -d):
        gn[i] = <float>_clip(gn[i] - d, gmin, gmax, bounded)
        wn[i] += npulses
    else:
        gp[i] = <float>_clip(gp[i] + d, gmin, gmax, bounded)
        wp[i] += npulses


def _check(name, Py_ssize_t got, Py_ssize_t want):
    if got != want:
        raise ValueError(f"{name} has length {got}, expected {want}")


def optimizer_rule_update(
    int rule,
    int optimizer,
    const float[::1] grad,
    float[::1] m,
    float[::1] v,
    float[::1] chi,
    float[::1] gp,
    float[::1] gn,
    int32_t[::1] wp,
    int32_t[::1] wn,
    int64_t[:, :, ::1] counts,
    int rows,
    int cols,
    int col_block,
    double lr,
    double beta1,
    double beta2,
    double eps,
    double momentum,
    double bias1,
    double bias2,
    double k,
    double c,
    double sigma,
    double mixed_eps,
    double gmin,
    double gmax,
    bint bounded,
    uint64_t seed,
    uint64_t stream,
    int n_threads=1,
):
    """Optimiser step and device update rule for one layer group (see module docstring).

    Per weight: the optimiser (SGD with momentum, or Adam with bias correction ``bias1 =
    1 - beta1^t``, ``bias2 = 1 - beta2^t``) turns the gradient into the desired update ``u``;
    ``d = u / k`` is the change in µS. Then ``rule``:

    * float (0): ``d`` applied exactly (same device choice as the others), unbounded, no
      pulse or device write counted (an ideal, device-free update);
    * bp (1): every nonzero ``d`` written with write noise ``N(0, sigma)``;
    * eapu (2): ``t = |d|``; ``t >= c`` written as asked; else written as ``sign(d)*c`` with
      probability ``t/c``, else skipped; every write gets ``N(0, sigma)``;
    * mixed (3): ``chi += d``; when ``|chi| >= mixed_eps``, ``n = floor(|chi|/mixed_eps)`` steps
      ``n*mixed_eps`` are written in one event (with noise) and subtracted from ``chi``.
    """
    cdef Py_ssize_t n = <Py_ssize_t>rows * cols
    cdef bint pair = gn.shape[0] > 0
    if rows < 0 or cols < 0 or col_block < 1:
        raise ValueError("rows, cols must be >= 0 and col_block >= 1")
    if rule < 0 or rule > 3 or optimizer < 0 or optimizer > 1:
        raise ValueError(f"unknown rule {rule} or optimizer {optimizer}")
    if k <= 0:
        raise ValueError(f"k (weight per µS) must be > 0, got {k}")
    _check("grad", grad.shape[0], n)
    _check("m", m.shape[0], n)
    if optimizer == 1:
        _check("v", v.shape[0], n)
    if rule == 3:
        _check("chi", chi.shape[0], n)
        if mixed_eps <= 0:
            raise ValueError("mixed_eps must be > 0")
    if rule == 2 and c <= 0:
        raise ValueError("c must be > 0")
    _check("gp", gp.shape[0], n)
    _check("wp", wp.shape[0], n)
    if pair:
        _check("gn", gn.shape[0], n)
        _check("wn", wn.shape[0], n)
    ncb = (cols + col_block - 1) // col_block
    if counts.shape[0] != rows or counts.shape[1] != ncb or counts.shape[2] != 4:
        raise ValueError(f"counts has shape {(counts.shape[0], counts.shape[1], counts.shape[2])}, expected ({rows}, {ncb}, 4)")
    if n == 0:
        return
    cdef uint64_t key = _key(seed, stream)
    cdef Py_ssize_t r, cc, i, cb
    cdef double g, mm, vv, u, d, t, a, nsteps
    cdef float* pgp = &gp[0]
    cdef float* pgn = &gn[0] if pair else pgp
    cdef int32_t* pwp = &wp[0]
    cdef int32_t* pwn = &wn[0] if pair else pwp
    with nogil:
        for r in prange(rows, num_threads=n_threads, schedule="static"):
            for cc in range(cols):
                i = r * cols + cc
                cb = cc // col_block
                g = grad[i]
                if optimizer == 0:
                    mm = momentum * m[i] + g
                    m[i] = <float>mm
                    u = -lr * mm
                else:
                    mm = beta1 * m[i] + (1.0 - beta1) * g
                    vv = beta2 * v[i] + (1.0 - beta2) * g * g
                    m[i] = <float>mm
                    v[i] = <float>vv
                    u = -lr * (mm / bias1) / (sqrt(vv / bias2) + eps)
                d = u / k
                if rule == 3:
                    chi[i] = <float>(chi[i] + d)
                if d == 0.0:
                    continue
                counts[r, cb, 0] += 1
                if rule == 0:
                    _write(pgp, pgn, pwp, pwn, i, d, gmin, gmax, False, pair, 0)
                    counts[r, cb, 1] += 1
                    continue
                if rule == 2:
                    t = fabs(d)
                    if t < c:
                        if t < _uniform(key, 3 * <uint64_t>i) * c:
                            counts[r, cb, 2] += 1
                            continue
                        d = c if d > 0 else -c
                elif rule == 3:
                    a = fabs(chi[i])
                    if a < mixed_eps:
                        counts[r, cb, 2] += 1
                        continue
                    nsteps = floor(a / mixed_eps)
                    d = nsteps * mixed_eps if chi[i] > 0 else -nsteps * mixed_eps
                    chi[i] = <float>(chi[i] - d)
                if sigma > 0:
                    d = d + sigma * _normal(key, 3 * <uint64_t>i + 1)
                _write(pgp, pgn, pwp, pwn, i, d, gmin, gmax, bounded, pair, 1)
                counts[r, cb, 1] += 1
                counts[r, cb, 3] += 1


cdef inline int _poisson(uint64_t key, uint64_t ctr, double lam) noexcept nogil:
    cdef double u, p, f
    cdef int kk
    if lam <= 0:
        return 0
    if lam < 30.0:
        u = _uniform(key, ctr)
        p = exp(-lam)
        f = p
        kk = 0
        while u > f and kk < 1000:
            kk += 1
            p = p * lam / kk
            f = f + p
        return kk
    kk = <int>floor(lam + sqrt(lam) * _normal(key, ctr) + 0.5)
    return kk if kk > 0 else 0


def pulse_update(
    const float[:, ::1] lam_up,
    const float[:, ::1] lam_down,
    float[::1] gp,
    float[::1] gn,
    int32_t[::1] wp,
    int32_t[::1] wn,
    int64_t[:, :, ::1] counts,
    int col_block,
    double step,
    double asymmetry,
    double nonlinearity,
    double noise_rel,
    double gmin,
    double gmax,
    uint64_t seed,
    uint64_t stream,
    int n_threads=1,
):
    """Stochastic pulse-train update (aihwkit-style) for one layer group.

    ``lam_up``/``lam_down`` ``[R, C]`` are the expected numbers of up/down pulse coincidences
    of the step. Per weight, ``n_up ~ Poisson(lam_up)``, ``n_down ~ Poisson(lam_down)``
    (inversion below λ = 30, a rounded normal above; counters ``6i`` and ``6i+2``); the change is
    ``(n_up·s_up − n_down·s_down) + noise_rel·step·sqrt(n_up + n_down)·N(0,1)`` (counter ``6i+4``)
    where ``s_up = step·(1 + asymmetry)·(1 − nonlinearity·x)``, ``s_down = step·(1 − asymmetry)·
    (1 − nonlinearity·(1 − x))`` with ``x = (G_written − g_min)/(g_max − g_min)`` before the update
    (soft bounds). Every pulse counts as a write on the written device.
    """
    cdef Py_ssize_t rows = lam_up.shape[0], cols = lam_up.shape[1]
    cdef Py_ssize_t n = rows * cols
    cdef bint pair = gn.shape[0] > 0
    if lam_down.shape[0] != rows or lam_down.shape[1] != cols:
        raise ValueError(f"lam_down has shape {(lam_down.shape[0], lam_down.shape[1])}, expected ({rows}, {cols})")
    if col_block < 1:
        raise ValueError("col_block must be >= 1")
    _check("gp", gp.shape[0], n)
    _check("wp", wp.shape[0], n)
    if pair:
        _check("gn", gn.shape[0], n)
        _check("wn", wn.shape[0], n)
    ncb = (cols + col_block - 1) // col_block
    if counts.shape[0] != rows or counts.shape[1] != ncb or counts.shape[2] != 4:
        raise ValueError(f"counts has shape {(counts.shape[0], counts.shape[1], counts.shape[2])}, expected ({rows}, {ncb}, 4)")
    if n == 0:
        return
    cdef uint64_t key = _key(seed, stream)
    cdef Py_ssize_t r, cc, i, cb
    cdef int nu, nd
    cdef double x, su, sd, d, window = gmax - gmin
    cdef float* pgp = &gp[0]
    cdef float* pgn = &gn[0] if pair else pgp
    cdef int32_t* pwp = &wp[0]
    cdef int32_t* pwn = &wn[0] if pair else pwp
    with nogil:
        for r in prange(rows, num_threads=n_threads, schedule="static"):
            for cc in range(cols):
                i = r * cols + cc
                cb = cc // col_block
                if lam_up[r, cc] <= 0 and lam_down[r, cc] <= 0:
                    continue
                counts[r, cb, 0] += 1
                nu = _poisson(key, 6 * <uint64_t>i, lam_up[r, cc])
                nd = _poisson(key, 6 * <uint64_t>i + 2, lam_down[r, cc])
                if nu + nd == 0:
                    counts[r, cb, 2] += 1
                    continue
                # soft bounds on the device that the net change will be written to
                x = (pgp[i] - gmin) / window
                su = step * (1.0 + asymmetry) * (1.0 - nonlinearity * x)
                sd = step * (1.0 - asymmetry) * (1.0 - nonlinearity * (1.0 - x))
                d = nu * su - nd * sd
                if noise_rel > 0:
                    d = d + noise_rel * step * sqrt(<double>(nu + nd)) * _normal(key, 6 * <uint64_t>i + 4)
                _write(pgp, pgn, pwp, pwn, i, d, gmin, gmax, True, pair, nu + nd)
                counts[r, cb, 1] += 1
                counts[r, cb, 3] += nu + nd
