# cython: language_level=3
# distutils: extra_compile_args = -fno-math-errno -ffp-contract=off
"""Training update kernels: optimiser + device update rule fused in one pass per layer.

Design
------
* Who allocates: the Python caller (``runtime/train.py``), always. Kernels never allocate.
* Dtypes: conductances, gradients and optimiser state are float32; per-device write counts
  int32; per-(row, column block) counters int64 ``[rows, n_col_blocks, 5]`` holding
  (requested, applied, skipped, pulses, draws): ``draws`` counts the uniform random numbers the
  update rule itself needs (EaPU's thinned decisions; the pulse trains), not the normals that
  simulate the device's write error. The optimiser pass computes in float32 (vectorised,
  no FMA contraction, so the NumPy twin matches it bit for bit); the rule and the writes in
  float64.
* Layout: one crossbar layer group with S = 1 slice, flattened row-major ``[R, C]`` (index
  ``i = r*C + c``). ``gn``/``wn`` are empty for offset signing (one device per weight).
* Randomness: a counter-based generator (SplitMix64 finaliser over ``(seed, stream, counter)``),
  so every draw is a pure function of its counter: results do not depend on thread count or
  order, and the NumPy twin in ``update_reference.py`` reproduces them. ``stream`` encodes layer
  and step. The write noise of weight ``i`` uses counters ``2i``, ``2i+1`` of the key
  ``(seed, stream)`` (Box–Muller); EaPU's probabilistic decisions use a second key and, per
  (row, column block) segment ``s``, the counters ``s·2^32 + 0, 1, 2, …`` in order of use.
  Draws happen only where needed: normals only for written weights, uniforms only for EaPU
  candidates (below).
* EaPU thinning (``t = |d|`` in float32, compared with ``c`` rounded to float32): in a
  segment, let ``qmax`` be the largest ``t < c`` and ``k`` the
  integer with ``2^-k >= qmax/c > 2^-(k+1)`` (``frexp``; at most 24). For each run of 64
  weights the candidate mask is the AND of ``k`` random 64-bit words (counters
  ``s·2^32 + offset + b`` of the candidate key), so each weight is a candidate with
  probability ``2^-k``; a candidate with ``0 < t < c`` is written when ``U · c·2^-k < t``
  (``U`` from the accept key at counter ``s·2^32 + position``), so its write probability is
  ``2^-k · t/(c·2^-k) = t/c``. With typical ``t ≪ c`` this costs a few hashes per 64 weights
  and about ``2^-k ≤ 2·qmax/c`` accept draws per weight, instead of one uniform per weight,
  and no logarithm. ``draws`` counts 32-bit draws: ``2k`` per 64-bit word run, one per accept.
* ``gdiff`` (optional, empty to skip): the layer group's ``G+ − G−`` (or ``G+``) as the engine
  reads it; every written weight's entry is updated in place (float32 subtraction, as NumPy's),
  so the caller need not recompute it.
* Speed: per row, a branch-free optimiser pass writes ``d`` into a per-thread float32 scratch
  row (``work``; the loop vectorises: built with ``-fno-math-errno``), then the rule pass
  handles each segment: a branch-free scan (requested count, largest ``t < c``, any ``t >= c``)
  and per-weight work only where a write can happen.
* Threading: ``prange`` over rows; a thread owns whole rows, so counters need no atomics.
* Conductance writes on a differential pair: a positive change lowers G- when G- is at least
  that far above g_min, else raises G+; a negative change lowers G+ when it can, else raises
  G-. One device of each pair so stays near g_min (no common-mode drift). The written device
  is clipped to [g_min, g_max] when ``bounded``.
"""

from cython.parallel cimport prange, threadid
from libc.math cimport cos, exp, fabs, fabsf, floor, frexp, ldexp, log, sqrt, sqrtf, M_PI
from libc.stdint cimport uint64_t, int64_t, int32_t

RULE_FLOAT = 0
RULE_BP = 1
RULE_EAPU = 2
RULE_MIXED = 3
OPT_SGD = 0
OPT_ADAM = 1
COMPILED = True

cdef uint64_t GOLDEN = 0x9E3779B97F4A7C15ULL
cdef uint64_t CAND = 0xD1B54A32D192ED03ULL  # key of EaPU's candidate bit words (thinning)
cdef uint64_t ACCEPT = 0x8CB92BA72F3D8DD7ULL  # key of EaPU's accept draws
cdef uint64_t ALL = 0xFFFFFFFFFFFFFFFFULL
cdef int KMAX = 24  # candidate rate at least 2^-24

cdef extern from *:
    """
    static inline int xbarc_ctz64(unsigned long long x) { return __builtin_ctzll(x); }
    """
    int ctz64 "xbarc_ctz64"(uint64_t x) noexcept nogil


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


cdef inline void _rule_row(
    int rule, int optimizer, const float* grad, float* m, float* v, float* chi, float* gp,
    float* gn, int32_t* wp, int32_t* wn, int64_t* counts, Py_ssize_t r, Py_ssize_t cols,
    Py_ssize_t col_block, float f_mom, float f_b1, float f_a1, float f_b2, float f_a2,
    float f_s1, float f_s2, float f_eps, double c, double sigma, double mixed_eps,
    double gmin, double gmax, bint bounded, bint pair, uint64_t key, uint64_t ckey,
    uint64_t akey, float* gd, float* w) noexcept nogil:
    """One row: optimiser pass into ``w`` (branch-free, vectorised), then the rule per block."""
    cdef Py_ssize_t base = r * cols, ncb = (cols + col_block - 1) // col_block
    cdef Py_ssize_t cc, cb, c0, c1, i, j
    cdef float g, mm, vv, ft, f1, f2, f3, fq, fq1, fq2, fq3, fs, fc = <float>c
    cdef double d, t, a, nsteps, qc
    cdef int e2, kk, b
    cdef uint64_t bits
    cdef Py_ssize_t jj
    cdef int64_t nreq, napp, npulse, nbig, ndraw
    cdef uint64_t sbase
    cdef const float* gr = grad + base
    cdef float* mr = m + base
    cdef float* vr = v + base
    cdef float* xr = chi + base
    # pass A: optimiser state and the desired change d (µS) of every weight of the row
    if optimizer == 0:
        for cc in range(cols):
            mm = f_mom * mr[cc] + gr[cc]
            mr[cc] = mm
            w[cc] = mm * f_s1
    else:
        for cc in range(cols):
            g = gr[cc]
            mm = f_b1 * mr[cc] + f_a1 * g
            vv = f_b2 * vr[cc] + (f_a2 * g) * g
            mr[cc] = mm
            vr[cc] = vv
            w[cc] = (mm * f_s1) / (sqrtf(vv * f_s2) + f_eps)
    if rule == 3:
        for cc in range(cols):
            xr[cc] = xr[cc] + w[cc]
    # pass B: the rule, one (row, column block) segment at a time
    for cb in range(ncb):
        c0 = cb * col_block
        c1 = c0 + col_block if c0 + col_block <= cols else cols
        nreq = 0
        napp = 0
        npulse = 0
        nbig = 0
        ndraw = 0
        fq = 0.0
        if rule == 2:
            # branch-free scan: requested, how many reach c, the largest t below c (four
            # independent maxima, so the loop is not one long max dependency chain; the max
            # is exact in any order)
            fq1 = fq2 = fq3 = 0.0
            cc = c0
            while cc + 4 <= c1:
                ft = fabsf(w[cc])
                f1 = fabsf(w[cc + 1])
                f2 = fabsf(w[cc + 2])
                f3 = fabsf(w[cc + 3])
                nreq += (ft != 0) + (f1 != 0) + (f2 != 0) + (f3 != 0)
                nbig += (ft >= fc) + (f1 >= fc) + (f2 >= fc) + (f3 >= fc)
                ft = ft if ft < fc else <float>0.0
                f1 = f1 if f1 < fc else <float>0.0
                f2 = f2 if f2 < fc else <float>0.0
                f3 = f3 if f3 < fc else <float>0.0
                fq = ft if ft > fq else fq
                fq1 = f1 if f1 > fq1 else fq1
                fq2 = f2 if f2 > fq2 else fq2
                fq3 = f3 if f3 > fq3 else fq3
                cc += 4
            while cc < c1:
                ft = fabsf(w[cc])
                nreq += ft != 0
                nbig += ft >= fc
                ft = ft if ft < fc else <float>0.0
                fq = ft if ft > fq else fq
                cc += 1
            fq1 = fq1 if fq1 > fq2 else fq2
            fq = fq if fq > fq3 else fq3
            fq = fq if fq > fq1 else fq1
        elif rule == 3:
            for cc in range(c0, c1):
                nreq += w[cc] != 0
                ft = fabsf(xr[cc]) if w[cc] != 0 else <float>0.0
                fq = ft if ft > fq else fq
        if rule <= 1 or (rule == 2 and nbig > 0) or (rule == 3 and fq >= mixed_eps):
            for cc in range(c0, c1):
                d = w[cc]
                if d == 0.0:
                    continue
                i = base + cc
                if rule == 0:
                    nreq += 1
                    _write(gp, gn, wp, wn, i, d, gmin, gmax, False, pair, 0)
                    napp += 1
                elif rule == 1:
                    nreq += 1
                    if sigma > 0:
                        d = d + sigma * _normal(key, 2 * <uint64_t>i)
                    _write(gp, gn, wp, wn, i, d, gmin, gmax, bounded, pair, 1)
                    napp += 1
                    npulse += 1
                elif rule == 2:
                    if fabsf(w[cc]) < fc:
                        continue
                    if sigma > 0:
                        d = d + sigma * _normal(key, 2 * <uint64_t>i)
                    _write(gp, gn, wp, wn, i, d, gmin, gmax, bounded, pair, 1)
                    napp += 1
                    npulse += 1
                else:
                    a = fabs(<double>xr[cc])
                    if a < mixed_eps:
                        continue
                    nsteps = floor(a / mixed_eps)
                    d = nsteps * mixed_eps if xr[cc] > 0 else -nsteps * mixed_eps
                    xr[cc] = <float>(xr[cc] - d)
                    if sigma > 0:
                        d = d + sigma * sqrt(nsteps) * _normal(key, 2 * <uint64_t>i)
                    _write(gp, gn, wp, wn, i, d, gmin, gmax, bounded, pair, <int>nsteps)
                    napp += 1
                    npulse += <int64_t>nsteps
                if gd != NULL:
                    gd[i] = gp[i] - gn[i] if pair else gp[i]
        if rule == 2 and fq > 0:
            # EaPU below c: weight j is written with probability t_j / c. Thinning (see the
            # module docstring): candidates are the set bits of k-fold ANDs of random 64-bit
            # words (each bit set with probability 2^-k >= qmax / c), and a candidate is
            # accepted with probability t_j / (c * 2^-k). Counters depend on (row, block) and
            # the position only, never on the order of work.
            frexp(fq / c, &e2)
            kk = -e2 if -e2 < KMAX else KMAX
            if kk < 0:  # fq rounds up to c in float32
                kk = 0
            qc = ldexp(c, -kk)
            sbase = (<uint64_t>(r * ncb + cb)) << 32
            j = c0
            while j < c1:
                bits = ALL if c1 - j >= 64 else ((<uint64_t>1) << (c1 - j)) - 1
                for b in range(kk):
                    bits = bits & _mix(ckey + (sbase + <uint64_t>(j - c0 + b) + 1) * GOLDEN)
                ndraw += 2 * kk
                while bits:
                    jj = j + ctz64(bits)
                    bits = bits & (bits - 1)
                    ft = fabsf(w[jj])
                    if ft != 0 and ft < fc:
                        ndraw += 1
                        if _uniform(akey, sbase + <uint64_t>(jj - c0)) * qc < ft:
                            d = w[jj]
                            d = c if d > 0 else -c
                            i = base + jj
                            if sigma > 0:
                                d = d + sigma * _normal(key, 2 * <uint64_t>i)
                            _write(gp, gn, wp, wn, i, d, gmin, gmax, bounded, pair, 1)
                            if gd != NULL:
                                gd[i] = gp[i] - gn[i] if pair else gp[i]
                            napp += 1
                            npulse += 1
                j += 64
        counts[(r * ncb + cb) * 5 + 0] += nreq
        counts[(r * ncb + cb) * 5 + 1] += napp
        counts[(r * ncb + cb) * 5 + 2] += nreq - napp
        counts[(r * ncb + cb) * 5 + 3] += npulse
        counts[(r * ncb + cb) * 5 + 4] += ndraw


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
    float[::1] work,
    float[::1] gdiff,
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
      probability ``t/c`` (thinned draws, see the module docstring), else skipped; every write
      gets ``N(0, sigma)``;
    * mixed (3): ``chi += d``; when ``|chi| >= mixed_eps``, ``n = floor(|chi|/mixed_eps)``
      device steps ``n*mixed_eps`` are written as ``n`` pulses (noise ``N(0, sigma*sqrt(n))``,
      ``n`` writes on the device) and subtracted from ``chi``.

    The optimiser runs in float32 (as torch's Adam/SGD do), with the constants folded:
    SGD ``d = m_t · (−lr/k)``; Adam ``d = (m_t · (−lr/(bias1·k))) / (sqrt(v_t · (1/bias2)) + eps)``
    with ``m_t = beta1·m + (1−beta1)·g``, ``v_t = beta2·v + ((1−beta2)·g)·g``; every constant is
    rounded to float32 once. ``work`` is float32 scratch of at least ``n_threads * cols``
    values (one row per thread).
    """
    cdef Py_ssize_t n = <Py_ssize_t>rows * cols
    cdef bint pair = gn.shape[0] > 0
    if rows < 0 or cols < 0 or col_block < 1:
        raise ValueError("rows, cols must be >= 0 and col_block >= 1")
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
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
    if counts.shape[0] != rows or counts.shape[1] != ncb or counts.shape[2] != 5:
        raise ValueError(f"counts has shape {(counts.shape[0], counts.shape[1], counts.shape[2])}, expected ({rows}, {ncb}, 5)")
    if gdiff.shape[0] != 0:
        _check("gdiff", gdiff.shape[0], n)
    if work.shape[0] < <Py_ssize_t>n_threads * cols:
        raise ValueError(f"work has length {work.shape[0]}, expected at least {n_threads * cols} (n_threads * cols)")
    if n == 0:
        return
    cdef uint64_t key = _key(seed, stream)
    cdef uint64_t ckey = _mix(key ^ CAND)
    cdef uint64_t akey = _mix(key ^ ACCEPT)
    # float32 constants of the optimiser pass (the twin forms the same ones)
    cdef float f_mom = <float>momentum, f_b1 = <float>beta1, f_a1 = <float>(1.0 - beta1)
    cdef float f_b2 = <float>beta2, f_a2 = <float>(1.0 - beta2), f_eps = <float>eps
    cdef float f_s1 = <float>(-lr / k) if optimizer == 0 else <float>(-lr / (bias1 * k))
    cdef float f_s2 = <float>(1.0 / bias2) if optimizer == 1 else <float>1.0
    cdef Py_ssize_t r
    cdef const float* pg = &grad[0]
    cdef float* pm = &m[0]
    cdef float* pv = &v[0] if optimizer == 1 else pm
    cdef float* px = &chi[0] if rule == 3 else pm
    cdef float* pgp = &gp[0]
    cdef float* pgn = &gn[0] if pair else pgp
    cdef int32_t* pwp = &wp[0]
    cdef int32_t* pwn = &wn[0] if pair else pwp
    cdef int64_t* pc = &counts[0, 0, 0]
    cdef float* pw = &work[0]
    cdef float* pgd = &gdiff[0] if gdiff.shape[0] > 0 else NULL
    with nogil:
        for r in prange(rows, num_threads=n_threads, schedule="static"):
            _rule_row(rule, optimizer, pg, pm, pv, px, pgp, pgn, pwp, pwn, pc, r, cols,
                      col_block, f_mom, f_b1, f_a1, f_b2, f_a2, f_s1, f_s2, f_eps, c, sigma,
                      mixed_eps, gmin, gmax, bounded, pair, key, ckey, akey, pgd,
                      pw + threadid() * cols)


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
    (soft bounds). Every pulse counts as a write on the written device; each requested weight
    counts two random draws (its up and down trains).
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
    if counts.shape[0] != rows or counts.shape[1] != ncb or counts.shape[2] != 5:
        raise ValueError(f"counts has shape {(counts.shape[0], counts.shape[1], counts.shape[2])}, expected ({rows}, {ncb}, 5)")
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
                counts[r, cb, 4] += 2  # the up and down trains
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
