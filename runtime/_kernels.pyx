# cython: language_level=3
"""Crossbar runtime kernels: im2col/col2im, quantisation, tiled MVM (forward and transposed), rms.

Design
------
* Who allocates: the Python caller (``runtime/engine.py``), always. Every output and scratch
  buffer (``out``, ``work``) is passed in; the kernels never allocate, and nothing inside the
  ``nogil`` sections creates a Python object.
* Dtypes: float32 only, native byte order. Scalars are C ``int``/``float``.
* Layout: C-contiguous arrays. Each public function is a ``def`` that first turns every array
  argument into a typed memoryview (``const float[:, ::1]`` for an IN array, so read-only
  buffers such as the mmap'd mapped.bin are accepted; ``float[:, ::1]`` for an OUT array,
  which must be writable). The memoryview conversion is what rejects a wrong dtype, rank,
  byte order or a non-contiguous or read-only array; its ``ValueError`` is re-raised naming
  the argument. Then shapes and scalar arguments are checked (``ValueError`` naming the array
  and the expected shape), OUT buffers are checked not to overlap IN buffers, and only then
  does the work run ``with nogil`` in a ``cdef ... noexcept nogil`` kernel taking raw pointers.
  Zero-size dimensions are legal and make the call a no-op (or a zero fill of ``out``).
* Threading: matrix products are ``scipy.linalg.cython_blas.sgemm``; elementwise loops run
  under ``prange(..., num_threads=n_threads, schedule='static')``. Each MVM path uses one
  level of parallelism, never both, because mixing them oversubscribes the cores: OpenMP
  threads spinning after a ``prange`` and OpenBLAS threads spinning after an sgemm starve
  each other, and alternating the two made the MVM 20-300x slower on a 2-core machine.

  - Ideal MVM (no ADC, no noise): one sgemm per slice over the whole batch, threaded by BLAS
    as the caller configured it (threadpoolctl); no OpenMP region.
  - Non-ideal MVM: a ``prange`` over work tiles (batch rows x output columns). Each tile
    calls its own small sgemm per (row block, slice), at most ``SGEMM_MAX_MNK`` multiply-adds
    so that OpenBLAS runs it on the calling thread, and applies noise, ADC and the weighted
    sum while the product is still in cache. This is the pattern of scikit-learn's
    pairwise-distance reductions.
  - im2col, col2im, quantize, rms: ``prange`` only.

  Every output element is owned by one iteration and summed in a fixed order, and the MVM
  tile shapes depend on the array shapes only, so results are bit-identical for every
  ``n_threads`` (given a BLAS that is deterministic for a fixed call, as OpenBLAS is).
* BLAS is column-major. A row-major ``C[M, N] = A[M, K] @ B[K, N]`` is the column-major
  ``C^T = B^T A^T``: ``sgemm('N', 'N', N, M, K, B, ldb, A, lda, C, ldc)``. A block of rows or
  columns of a row-major matrix is a pointer offset with the same leading dimension.
* Rounding: quantisation computes ``x / step`` in double, rounds half to even, clips to
  ``[-L, L]`` (or ``[0, L]``), and forms ``q * step`` in double before rounding to float32,
  exactly as ``np.clip(np.rint(x / step), ...) * step`` does; ``quantize`` is bit-identical
  to its NumPy twin in ``reference.py`` (signed zeros and NaN included). The rounding is
  ``rint`` written as ``(t + 1.5*2**52) - 1.5*2**52`` with the sign of ``t`` (exact in the
  default round-to-nearest-even mode for ``|t| < 2**51``, which the clamp guarantees) so the
  loops vectorise instead of calling libm's ``rint`` per element.
* The NumPy twins in ``reference.py`` define the semantics; hypothesis checks agreement.
"""

from cython.parallel cimport prange
from libc.math cimport INFINITY, copysign, ldexp, sqrt
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport sgemm

import numpy as np

COMPILED = True
"""Always ``True`` here; lets callers and CI assert the compiled module is the one running."""

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int xbarc_max_threads(void) { return omp_get_max_threads(); }
    static int xbarc_thread_num(void) { return omp_get_thread_num(); }
    static const int xbarc_openmp = 1;
    #else
    static int xbarc_max_threads(void) { return 1; }
    static int xbarc_thread_num(void) { return 0; }
    static const int xbarc_openmp = 0;
    #endif
    """
    int xbarc_max_threads() noexcept nogil
    int xbarc_thread_num() noexcept nogil
    const int xbarc_openmp

OPENMP = bool(xbarc_openmp)
"""Whether the module was built with OpenMP (without it, ``n_threads`` is accepted but unused)."""

cdef Py_ssize_t INT_MAX_ = 2147483647  # BLAS dimensions are C ints


def n_threads_default():
    """The OpenMP default thread count (``omp_get_max_threads()``), or 1 without OpenMP."""
    return xbarc_max_threads()


# --------------------------------------------------------------------------- argument checks
# Python-level code (holds the GIL); runs once per call, before any work.

cdef str _describe(object a):
    dtype = getattr(a, "dtype", None)
    shape = getattr(a, "shape", None)
    if dtype is None or shape is None:
        return type(a).__name__
    return f"{type(a).__name__} of dtype {dtype}, shape {tuple(shape)}"


cdef object _bad_array(str fn, str name, int ndim, bint writable, object a, object err):
    what = "a writable" if writable else "a"
    dims = "dimension" if ndim == 1 else "dimensions"
    msg = (f"{fn}: {name} must be {what} C-contiguous float32 array with {ndim} {dims}; "
           f"got {_describe(a)}")
    if err is not None:
        msg += f" ({err})"
    return ValueError(msg)


cdef const float[::1] _in1(str fn, str name, object a):
    cdef const float[::1] v
    if a is None:
        raise _bad_array(fn, name, 1, False, a, None)
    try:
        v = a
    except (ValueError, TypeError, BufferError) as e:
        raise _bad_array(fn, name, 1, False, a, e) from None
    return v


cdef const float[:, ::1] _in2(str fn, str name, object a):
    cdef const float[:, ::1] v
    if a is None:
        raise _bad_array(fn, name, 2, False, a, None)
    try:
        v = a
    except (ValueError, TypeError, BufferError) as e:
        raise _bad_array(fn, name, 2, False, a, e) from None
    return v


cdef const float[:, :, ::1] _in3(str fn, str name, object a):
    cdef const float[:, :, ::1] v
    if a is None:
        raise _bad_array(fn, name, 3, False, a, None)
    try:
        v = a
    except (ValueError, TypeError, BufferError) as e:
        raise _bad_array(fn, name, 3, False, a, e) from None
    return v


cdef const float[:, :, :, ::1] _in4(str fn, str name, object a):
    cdef const float[:, :, :, ::1] v
    if a is None:
        raise _bad_array(fn, name, 4, False, a, None)
    try:
        v = a
    except (ValueError, TypeError, BufferError) as e:
        raise _bad_array(fn, name, 4, False, a, e) from None
    return v


cdef float[::1] _out1(str fn, str name, object a):
    cdef float[::1] v
    if a is None:
        raise _bad_array(fn, name, 1, True, a, None)
    try:
        v = a
    except (ValueError, TypeError, BufferError) as e:
        raise _bad_array(fn, name, 1, True, a, e) from None
    return v


cdef float[:, ::1] _out2(str fn, str name, object a):
    cdef float[:, ::1] v
    if a is None:
        raise _bad_array(fn, name, 2, True, a, None)
    try:
        v = a
    except (ValueError, TypeError, BufferError) as e:
        raise _bad_array(fn, name, 2, True, a, e) from None
    return v


cdef float[:, :, ::1] _out3(str fn, str name, object a):
    cdef float[:, :, ::1] v
    if a is None:
        raise _bad_array(fn, name, 3, True, a, None)
    try:
        v = a
    except (ValueError, TypeError, BufferError) as e:
        raise _bad_array(fn, name, 3, True, a, e) from None
    return v


cdef float[:, :, :, ::1] _out4(str fn, str name, object a):
    cdef float[:, :, :, ::1] v
    if a is None:
        raise _bad_array(fn, name, 4, True, a, None)
    try:
        v = a
    except (ValueError, TypeError, BufferError) as e:
        raise _bad_array(fn, name, 4, True, a, e) from None
    return v


cdef int _expect(str fn, str name, tuple got, tuple want) except -1:
    if got != want:
        raise ValueError(f"{fn}: {name} has shape {got}, expected {want}")
    return 0


cdef int _disjoint(str fn, dict outs, dict ins) except -1:
    """Raise if an OUT buffer overlaps another OUT buffer or an IN buffer (bounds check)."""
    items = list(outs.items())
    for i, (na, a) in enumerate(items):
        for nb, b in items[i + 1:] + list(ins.items()):
            if np.may_share_memory(a, b):
                raise ValueError(f"{fn}: {na} and {nb} overlap in memory; pass separate buffers")
    return 0


cdef int _positive(str fn, str name, long v) except -1:
    if v < 1:
        raise ValueError(f"{fn}: {name} must be >= 1, got {v}")
    return 0


cdef int _check_bits(str fn, str name, int bits, bint signed) except -1:
    cdef int lo = 2 if signed else 1
    if bits != 0 and not (lo <= bits <= 32):
        raise ValueError(f"{fn}: {name} must be 0 (off) or in [{lo}, 32], got {bits}")
    return 0


cdef int _check_blas_dims(str fn, Py_ssize_t a, Py_ssize_t b, Py_ssize_t c) except -1:
    if a > INT_MAX_ or b > INT_MAX_ or c > INT_MAX_:
        raise ValueError(f"{fn}: dimensions ({a}, {b}, {c}) exceed the BLAS int range")
    return 0


cdef Py_ssize_t _out_size(Py_ssize_t n, Py_ssize_t k, Py_ssize_t s, Py_ssize_t p0,
                          Py_ssize_t p1, Py_ssize_t d) noexcept:
    """Sliding-window count along one axis; 0 when the dilated kernel exceeds the padded input."""
    cdef Py_ssize_t span = n + p0 + p1 - d * (k - 1) - 1
    return 0 if span < 0 else span // s + 1


cdef int _check_window(str fn, int kh, int kw, int sh, int sw, int ph0, int pw0, int ph1,
                       int pw1, int dh, int dw) except -1:
    for name, v in (("kh", kh), ("kw", kw), ("sh", sh), ("sw", sw), ("dh", dh), ("dw", dw)):
        _positive(fn, name, v)
    for name, v in (("ph0", ph0), ("pw0", pw0), ("ph1", ph1), ("pw1", pw1)):
        if v < 0:
            raise ValueError(f"{fn}: {name} must be >= 0, got {v}")
    return 0


# --------------------------------------------------------------------------- nogil helpers

cdef double RINT_MAGIC = 6755399441055744.0  # 1.5 * 2**52


cdef inline double _rint(double t) noexcept nogil:
    """``rint(t)`` (half to even) for ``|t| < 2**51``, sign of zero kept; inlined, vectorisable.

    Adding and subtracting 1.5 * 2**52 rounds to an integer in the current (default:
    nearest-even) rounding mode; the compiler may not reassociate it (no -ffast-math).
    """
    return copysign((t + RINT_MAGIC) - RINT_MAGIC, t)


cdef inline float _quant(float v, double step, double lo, double hi) noexcept nogil:
    """``clip(rint(v / step), lo, hi) * step``, as ``np.clip(np.rint(...))`` computes it.

    ``t`` is first clamped to ``[lo - 1, hi + 1]`` (no effect on the result; it keeps
    ``_rint`` in range). The clamps are selects, not branches, so loops vectorise; NaN passes
    through every comparison unchanged.
    """
    cdef double t = v / step
    t = hi + 1.0 if t > hi + 1.0 else t
    t = lo - 1.0 if t < lo - 1.0 else t
    t = _rint(t)
    t = hi if t > hi else t
    t = lo if t < lo else t
    return <float>(t * step)


cdef void _zero(float* p, Py_ssize_t rows, Py_ssize_t cols, int n_threads) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(rows, num_threads=n_threads, schedule="static"):
        memset(p + i * cols, 0, cols * sizeof(float))


cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """``ceil(a / b)`` for ``b >= 1`` and any sign of ``a`` (C division truncates)."""
    return -((-a) // b) if a < 0 else (a + b - 1) // b


cdef void _im2col_strip(const float* x, float* o, Py_ssize_t strip, Py_ssize_t C, Py_ssize_t H,
                        Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo, int kh, int kw, int sh,
                        int sw, int ph0, int pw0, int dh, int dw) noexcept nogil:
    """Rows ``strip*Wo : (strip+1)*Wo`` of ``out`` (output row ``oh`` of image ``n``).

    The ``Wo x K`` block stays in L1. It is filled piece by piece: for each (channel, kernel
    row), in increasing column order, the ``kw`` taps of every output position, read from one
    input row. Positions whose taps all lie inside the row (``ow`` in ``[lo, hi)``) need no
    bounds checks; there, with ``dw == 1``, a piece is copied as whole 16-byte moves (``wide``
    floats, ``kw <= wide < kw + 4``, all read from the same input row). A move may write up to
    3 floats past its piece: they belong to a later piece of the same output row, which
    overwrites them afterwards. The last piece of each row is copied exactly. The padded
    edges test each tap.
    """
    cdef Py_ssize_t n = strip // Ho
    cdef Py_ssize_t oh = strip % Ho
    cdef Py_ssize_t K = C * kh * kw
    cdef Py_ssize_t wide = (kw + 3) // 4 * 4
    cdef Py_ssize_t c, i, j, q, ih, ow, col, base
    cdef Py_ssize_t lo = _ceil_div(pw0, sw)
    cdef Py_ssize_t hi = W - 1 + pw0 - <Py_ssize_t>(kw - 1) * dw
    cdef Py_ssize_t fhi  # interior positions whose 16-byte moves stay inside the input row
    cdef const float* xr
    cdef const float* src
    cdef float* oc
    hi = 0 if hi < 0 else hi // sw + 1
    hi = Wo if hi > Wo else hi
    lo = hi if lo > hi else lo
    fhi = W + pw0 - wide
    fhi = 0 if fhi < 0 else fhi // sw + 1
    fhi = hi if fhi > hi else fhi
    fhi = lo if fhi < lo else fhi
    if dw != 1:
        fhi = lo
    for c in range(C):
        for i in range(kh):
            col = (c * kh + i) * kw
            ih = oh * sh - ph0 + i * dh
            if ih < 0 or ih >= H:
                for ow in range(Wo):
                    memset(o + ow * K + col, 0, kw * sizeof(float))
                continue
            xr = x + ((n * C + c) * H + ih) * W
            if col + wide <= K:
                for ow in range(lo, fhi):
                    oc = o + ow * K + col
                    src = xr + ow * sw - pw0
                    for q in range(0, wide, 4):
                        memcpy(oc + q, src + q, 4 * sizeof(float))
            else:
                for ow in range(lo, fhi):
                    oc = o + ow * K + col
                    src = xr + ow * sw - pw0
                    for j in range(kw):
                        oc[j] = src[j]
            for ow in range(fhi, hi):
                oc = o + ow * K + col
                base = ow * sw - pw0
                for j in range(kw):
                    oc[j] = xr[base + j * dw]
            for ow in range(lo):  # left edge
                _im2col_edge(xr, o + ow * K + col, ow * sw - pw0, W, kw, dw)
            for ow in range(hi, Wo):  # right edge
                _im2col_edge(xr, o + ow * K + col, ow * sw - pw0, W, kw, dw)


cdef inline void _im2col_edge(const float* xr, float* oc, Py_ssize_t base, Py_ssize_t W, int kw,
                              int dw) noexcept nogil:
    """``kw`` taps starting at input column ``base`` of row ``xr``, 0 outside ``[0, W)``."""
    cdef Py_ssize_t j, iw
    for j in range(kw):
        iw = base + j * dw
        oc[j] = xr[iw] if 0 <= iw < W else 0.0


cdef void _col2im_plane(const float* cols, float* o, Py_ssize_t nc, Py_ssize_t C, Py_ssize_t H,
                        Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo, int kh, int kw, int sh,
                        int sw, int ph0, int pw0, int dh, int dw) noexcept nogil:
    """Scatter-add everything that came from plane ``nc = n*C + c`` into ``o`` (that plane)."""
    cdef Py_ssize_t n = nc // C
    cdef Py_ssize_t c = nc % C
    cdef Py_ssize_t K = C * kh * kw
    cdef Py_ssize_t oh, ow, i, j, ih, iw
    cdef const float* src
    memset(o, 0, H * W * sizeof(float))
    for oh in range(Ho):
        for ow in range(Wo):
            src = cols + ((n * Ho + oh) * Wo + ow) * K + c * kh * kw
            for i in range(kh):
                ih = oh * sh - ph0 + i * dh
                if 0 <= ih < H:
                    for j in range(kw):
                        iw = ow * sw - pw0 + j * dw
                        if 0 <= iw < W:
                            o[ih * W + iw] += src[i * kw + j]



cdef inline float _relu(float v) noexcept nogil:
    """max(v, 0), with NaN kept (as ``np.maximum(v, 0)``)."""
    return v if not (v < 0) else 0.0


cdef void _conv_block_shape(Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t K, Py_ssize_t M,
                            Py_ssize_t* rb, Py_ssize_t* mb) noexcept nogil:
    """Output rows ``rb`` and channels ``mb`` of one :func:`conv_ideal` work item.

    At most ``SGEMM_MAX_MNK`` multiply-adds per sgemm (so OpenBLAS runs it on the calling
    thread inside the parallel region): all channels when a whole output row allows, else
    fewer; as many output rows as fit. Depends on the shapes only.
    """
    cdef Py_ssize_t row = Wo * K
    mb[0] = M if row * M <= SGEMM_MAX_MNK else (SGEMM_MAX_MNK // row if row <= SGEMM_MAX_MNK
                                                 else 1)
    mb[0] = 1 if mb[0] < 1 else mb[0]
    rb[0] = SGEMM_MAX_MNK // (row * mb[0])
    rb[0] = 1 if rb[0] < 1 else (Ho if rb[0] > Ho else rb[0])


cdef void _conv_item(const float* x, const float* g, const float* slice_w, const float* bias,
                     const float* res, float* cols, float* work, float* out, Py_ssize_t item, Py_ssize_t nrb,
                     Py_ssize_t nmb, Py_ssize_t rb, Py_ssize_t mb, Py_ssize_t C, Py_ssize_t H,
                     Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t M, Py_ssize_t S,
                     int kh, int kw, int sh, int sw, int ph0, int pw0, int dh, int dw,
                     bint relu) noexcept nogil:
    """Work item ``item`` of :func:`conv_ideal`: image, block of output rows, block of channels.

    im2col of the block's rows into ``cols`` (this thread's), one sgemm per slice into
    ``work``, then ``work`` transposed plus the bias into the output planes, all in cache.
    """
    cdef Py_ssize_t P = Ho * Wo, K = C * kh * kw
    cdef Py_ssize_t n = item // (nrb * nmb), rem = item % (nrb * nmb)
    cdef Py_ssize_t oh0 = (rem // nmb) * rb, m0 = (rem % nmb) * mb
    cdef Py_ssize_t nrows = rb if oh0 + rb <= Ho else Ho - oh0
    cdef Py_ssize_t nm = mb if m0 + mb <= M else M - m0
    cdef Py_ssize_t q, s, np_ = nrows * Wo
    cdef char tn = b"N"
    cdef int bm = <int>nm, bn = <int>np_, bk = <int>K, lda = <int>M, ldb = <int>K
    cdef int ldc = <int>nm
    cdef float alpha, beta, one = 1.0, zero = 0.0
    cdef float* o
    cdef int ldp = <int>P
    cdef char tt = b"T"
    if kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph0 == 0 and pw0 == 0 and Ho == H \
            and Wo == W:
        # pointwise: the image's planes already are the columns (no im2col, no transpose):
        # out[m, p] = sum_s slice_w[s] * sum_c g[s, c, m] * x[c, p], i.e. the column-major
        # out^T[P, M] = x^T[P, C] @ g[s][C, M], written straight into the output planes
        o = out + (n * M + m0) * P + oh0 * Wo
        for s in range(S):
            alpha = slice_w[s]
            beta = zero if s == 0 else one
            sgemm(&tn, &tt, &bn, &bm, &bk, &alpha, <float*>x + n * C * P + oh0 * Wo, &ldp,
                  <float*>g + s * K * M + m0, &lda, &beta, o, &ldp)
        _conv_epilogue(o, 1, out, P, bias, res, n, M, m0, nm, oh0 * Wo, np_, relu)
        return
    for q in range(nrows):
        _im2col_strip(x, cols + q * Wo * K, n * Ho + oh0 + q, C, H, W, Ho, Wo, kh, kw, sh, sw,
                      ph0, pw0, dh, dw)
    # work[np_, nm] = sum_s slice_w[s] * cols[np_, K] @ g[s][K, m0 : m0 + nm] (column-major:
    # the transposed product)
    for s in range(S):
        alpha = slice_w[s]
        beta = zero if s == 0 else one
        sgemm(&tn, &tn, &bm, &bn, &bk, &alpha, <float*>g + s * K * M + m0, &lda, cols, &ldb,
              &beta, work, &ldc)
    _conv_epilogue(work, 0, out, P, bias, res, n, M, m0, nm, oh0 * Wo, np_, relu)


cdef void _conv_epilogue(const float* src, bint planes, float* out, Py_ssize_t P,
                         const float* bias, const float* res, Py_ssize_t n, Py_ssize_t M,
                         Py_ssize_t m0, Py_ssize_t nm, Py_ssize_t p0, Py_ssize_t np_,
                         bint relu) noexcept nogil:
    """Output planes ``m0 .. m0 + nm`` of image ``n``, positions ``p0 .. p0 + np_``:
    ``relu?((sum + bias[m]) + res)``.

    The sums come from ``src``: the output planes themselves (``planes``; the pointwise path's
    sgemm wrote there) or a ``[np_, nm]`` block (``work``), read transposed.
    """
    cdef Py_ssize_t m, q, ld = 1 if planes else nm
    cdef float b
    cdef float* o
    cdef const float* w
    cdef const float* rr
    for m in range(nm):
        b = bias[m0 + m] if bias != NULL else 0.0
        o = out + (n * M + m0 + m) * P + p0
        w = o if planes else src + m
        if res != NULL:
            rr = res + (n * M + m0 + m) * P + p0
            if relu:
                for q in range(np_):
                    o[q] = _relu((w[q * ld] + b) + rr[q])
            else:
                for q in range(np_):
                    o[q] = (w[q * ld] + b) + rr[q]
        elif relu:
            for q in range(np_):
                o[q] = _relu(w[q * ld] + b)
        else:
            for q in range(np_):
                o[q] = w[q * ld] + b


cdef inline float _norm(const float* v, Py_ssize_t n) noexcept nogil:
    """``||v||_2`` summed in double by four interleaved accumulators (a fixed order)."""
    cdef double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0
    cdef Py_ssize_t i, n4 = n - n % 4
    for i in range(0, n4, 4):
        a0 = a0 + <double>v[i] * v[i]
        a1 = a1 + <double>v[i + 1] * v[i + 1]
        a2 = a2 + <double>v[i + 2] * v[i + 2]
        a3 = a3 + <double>v[i + 3] * v[i + 3]
    for i in range(n4, n):
        a0 = a0 + <double>v[i] * v[i]
    return <float>sqrt((a0 + a1) + (a2 + a3))


cdef void _fuse_row(const float* p, float* o, Py_ssize_t n, float w, float scale,
                    const float* rms, const float* z, double step, double lim) noexcept nogil:
    """``o += w * ADC(p + scale * rms * z)`` over one output row of length ``n``.

    ``scale = read_sigma * ||x row block||``; ``rms == NULL`` means no read noise (``z`` is
    then not read); ``step == 0`` means an ideal ADC.
    """
    cdef Py_ssize_t c
    cdef double lo = -lim
    # four specialised loops, so that each one vectorises
    if rms == NULL:
        if step == 0:
            for c in range(n):
                o[c] += w * p[c]
        else:
            for c in range(n):
                o[c] += w * _quant(p[c], step, lo, lim)
    elif step == 0:
        for c in range(n):
            o[c] += w * (p[c] + (scale * rms[c]) * z[c])
    else:
        for c in range(n):
            o[c] += w * _quant(p[c] + (scale * rms[c]) * z[c], step, lo, lim)


# Most multiply-adds of one sgemm call inside the parallel region. OpenBLAS gives a call
# m*n*k / (SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD) = m*n*k / (65536 * 4) threads
# (interface/gemm.c), so calls below 2 * 65536 * 4 run on the calling thread and never start
# BLAS threads from inside an OpenMP thread (that nesting made the MVM tens of times slower
# on a 2-core machine).
cdef Py_ssize_t SGEMM_MAX_MNK = 524287


def _set_sgemm_max_mnk(Py_ssize_t mnk):
    """Test hook: set ``SGEMM_MAX_MNK`` (tiny values force many tiles); returns the old value."""
    global SGEMM_MAX_MNK
    if mnk < 1:
        raise ValueError(f"_set_sgemm_max_mnk: mnk must be >= 1, got {mnk}")
    old = SGEMM_MAX_MNK
    SGEMM_MAX_MNK = mnk
    return old


cdef void _tile_shape(Py_ssize_t N, Py_ssize_t kb, Py_ssize_t* rows,
                      Py_ssize_t* cols) noexcept nogil:
    """Batch rows and output columns of one work tile, with ``rows * cols * kb <= SGEMM_MAX_MNK``.

    sgemm packs ``kb * (rows + cols)`` values per call for ``kb * rows * cols`` multiply-adds,
    so tiles are kept near square: all ``N`` columns if ``N`` is at most twice the square's
    side, else a multiple of 16 columns; rows a multiple of 16 in [16, 256]. Depends on the
    shapes only, never on the thread count (so results do not either).
    """
    cdef Py_ssize_t area = SGEMM_MAX_MNK // kb
    cdef Py_ssize_t side = <Py_ssize_t>sqrt(<double>area), c, r
    if area < 256:  # kb > 2048: no realistic tile gets here
        rows[0] = 16
        cols[0] = area // 16 if area >= 16 else 1
        return
    if N <= 2 * side:
        c = N
    else:
        c = side // 16 * 16
    r = (area // c) // 16 * 16
    rows[0] = 16 if r < 16 else (256 if r > 256 else r)
    cols[0] = c


cdef void _tiled_mvm(const float* x, const float* g, const float* slice_w, Py_ssize_t B,
                     Py_ssize_t K, Py_ssize_t N, Py_ssize_t S, bint trans, Py_ssize_t block,
                     int adc_bits, const float* adc_range, float sigma, const float* rms,
                     const float* noise, float* work, float* out, int n_threads) noexcept nogil:
    """Shared body of ``mvm_forward`` (``trans=0``) and ``mvm_backward`` (``trans=1``).

    ``x`` is ``[B, K]``; slice ``s`` of ``g`` is ``[K, N]`` (forward) or ``[N, K]`` (backward,
    used transposed); the reduction runs over ``K`` in blocks of ``block``. ``out`` and ``work``
    are ``[B, N]``. ``rms`` is ``[nb, S, N]``, ``noise`` ``[nb, S, B, N]``, ``adc_range``
    ``[nb, S]``; ``rms`` and ``noise`` are NULL when ``sigma == 0``. Requires B, K, N, S >= 1.
    """
    cdef char ta = b"T" if trans else b"N"
    cdef char tb = b"N"
    cdef int m = <int>N, n = <int>B, k = <int>K, lda = <int>(K if trans else N)
    cdef int ldb = <int>K, ldc = <int>N
    cdef float alpha, beta, one = 1.0, zero = 0.0
    cdef Py_ssize_t s, t, rows, cols, nrt, nct
    cdef double lim = 0.0
    if adc_bits == 0 and sigma == 0:
        # Fast path: with no per-tile non-linearity the tile split is only a summation order.
        # One sgemm per slice over all K rows and the whole batch, accumulating
        # alpha = slice_w[s] into out; BLAS does the threading (no OpenMP region here).
        for s in range(S):
            alpha = slice_w[s]
            beta = zero if s == 0 else one
            sgemm(&ta, &tb, &m, &n, &k, &alpha, <float*>g + s * K * N, &lda, <float*>x, &ldb,
                  &beta, out, &ldc)
        return
    # Non-ideal: OpenMP over work tiles of (batch rows x output columns). Each tile runs its
    # own small sgemm per (block, slice) and post-processes the result while it is in cache.
    if adc_bits > 0:
        lim = ldexp(1.0, adc_bits - 1) - 1.0
    _tile_shape(N, block if block < K else K, &rows, &cols)
    nrt = (B + rows - 1) // rows
    nct = (N + cols - 1) // cols
    for t in prange(nrt * nct, num_threads=n_threads, schedule="static"):
        _mvm_tile(x, g, slice_w, (t // nct) * rows, (t % nct) * cols, rows, cols, B, K, N, S,
                  trans, block, adc_bits, adc_range, sigma, rms, noise, lim, work, out)


cdef void _mvm_tile(const float* x, const float* g, const float* slice_w, Py_ssize_t b0,
                    Py_ssize_t c0, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t B,
                    Py_ssize_t K, Py_ssize_t N, Py_ssize_t S, bint trans, Py_ssize_t block,
                    int adc_bits, const float* adc_range, float sigma, const float* rms,
                    const float* noise, double lim, float* work, float* out) noexcept nogil:
    """Rows ``b0 : b0 + rows`` and columns ``c0 : c0 + cols`` (clipped) of the tiled MVM."""
    cdef Py_ssize_t nr = rows if b0 + rows <= B else B - b0
    cdef Py_ssize_t nc = cols if c0 + cols <= N else N - c0
    cdef char ta = b"T" if trans else b"N"
    cdef char tb = b"N"
    cdef int m = <int>nc, n = <int>nr, k, lda = <int>(K if trans else N), ldb = <int>K
    cdef int ldc = <int>N
    cdef float one = 1.0, zero = 0.0
    cdef Py_ssize_t s, r, b, k0, nb = (K + block - 1) // block
    cdef const float* a
    cdef const float* rms_rs = NULL
    cdef const float* z_rs = NULL
    cdef double step = 0.0
    cdef float scale[256]  # read_sigma * ||x[b, block r]|| of this tile's rows (rows <= 256)
    for b in range(b0, b0 + nr):
        memset(out + b * N + c0, 0, nc * sizeof(float))
    for r in range(nb):
        k0 = r * block
        k = <int>(block if k0 + block <= K else K - k0)
        if sigma > 0:
            for b in range(nr):
                scale[b] = sigma * _norm(x + (b0 + b) * K + k0, k)
        for s in range(S):
            # forward: g[s, k0:, c0:] is [kb, nc] (ld N); backward: g[s, c0:, k0:] is [nc, kb]
            # (ld K), used transposed
            a = g + s * K * N + (c0 * K + k0 if trans else k0 * N + c0)
            sgemm(&ta, &tb, &m, &n, &k, &one, <float*>a, &lda, <float*>x + b0 * K + k0, &ldb,
                  &zero, work + b0 * N + c0, &ldc)
            if adc_bits > 0:
                step = adc_range[r * S + s] / lim
            if sigma > 0:
                rms_rs = rms + (r * S + s) * N + c0
                z_rs = noise + (r * S + s) * B * N + c0
            for b in range(b0, b0 + nr):
                _fuse_row(work + b * N + c0, out + b * N + c0, nc, slice_w[s],
                          scale[b - b0] if sigma > 0 else 0.0, rms_rs,
                          z_rs + b * N if sigma > 0 else NULL, step, lim)


cdef void _rms_col(const float* gp, const float* gn, float* out, Py_ssize_t idx, Py_ssize_t S,
                   Py_ssize_t R, Py_ssize_t C, Py_ssize_t block) noexcept nogil:
    """``out[r, s, c]`` for flat index ``idx`` into ``[nr, S, C]``."""
    cdef Py_ssize_t c = idx % C
    cdef Py_ssize_t s = (idx // C) % S
    cdef Py_ssize_t r = idx // (C * S)
    cdef Py_ssize_t i0 = r * block
    cdef Py_ssize_t i1 = i0 + block if i0 + block <= R else R
    cdef Py_ssize_t i, off
    cdef double acc = 0.0
    for i in range(i0, i1):
        off = (s * R + i) * C + c
        acc = acc + <double>gp[off] * gp[off]
        if gn != NULL:
            acc = acc + <double>gn[off] * gn[off]
    out[idx] = <float>sqrt(acc / (i1 - i0))


cdef void _rms_row(const float* gp, const float* gn, float* out, Py_ssize_t idx, Py_ssize_t S,
                   Py_ssize_t R, Py_ssize_t C, Py_ssize_t block) noexcept nogil:
    """``out[:, s, i]`` (every column block) for flat index ``idx = s*R + i``."""
    cdef Py_ssize_t nb = (C + block - 1) // block
    cdef Py_ssize_t q, j, j0, j1
    cdef const float* p = gp + idx * C
    cdef const float* m = NULL
    cdef double acc
    if gn != NULL:
        m = gn + idx * C
    for q in range(nb):
        j0 = q * block
        j1 = j0 + block if j0 + block <= C else C
        acc = 0.0
        for j in range(j0, j1):
            acc = acc + <double>p[j] * p[j]
            if m != NULL:
                acc = acc + <double>m[j] * m[j]
        out[q * S * R + idx] = <float>sqrt(acc / (j1 - j0))


# --------------------------------------------------------------------------- public kernels

def im2col(x, int kh, int kw, int sh, int sw, int ph0, int pw0, int ph1, int pw1, int dh,
           int dw, out, int n_threads=1):
    """Unfold sliding windows of ``x[N, C, H, W]`` into ``out[N*Ho*Wo, C*kh*kw]``.

    Row ``(n*Ho + oh)*Wo + ow``, column ``(c*kh + i)*kw + j`` holds
    ``x[n, c, oh*sh - ph0 + i*dh, ow*sw - pw0 + j*dw]``, or 0 in the padding, with
    ``Ho = max(0, (H + ph0 + ph1 - dh*(kh-1) - 1) // sh + 1)`` (same for ``Wo``).
    Parallel over the ``N*Ho`` strips of ``Wo`` rows (one output row of one image each).
    """
    fn = "im2col"
    cdef const float[:, :, :, ::1] xv = _in4(fn, "x", x)  # IN
    cdef float[:, ::1] ov = _out2(fn, "out", out)  # OUT
    _check_window(fn, kh, kw, sh, sw, ph0, pw0, ph1, pw1, dh, dw)
    _positive(fn, "n_threads", n_threads)
    cdef Py_ssize_t N = xv.shape[0], C = xv.shape[1], H = xv.shape[2], W = xv.shape[3]
    cdef Py_ssize_t Ho = _out_size(H, kh, sh, ph0, ph1, dh)
    cdef Py_ssize_t Wo = _out_size(W, kw, sw, pw0, pw1, dw)
    cdef Py_ssize_t rows = N * Ho * Wo, K = C * kh * kw, strip
    _expect(fn, "out", (ov.shape[0], ov.shape[1]), (rows, K))
    _disjoint(fn, {"out": out}, {"x": x})
    if rows == 0 or K == 0:
        return
    cdef const float* xp = &xv[0, 0, 0, 0]
    cdef float* op = &ov[0, 0]
    with nogil:
        for strip in prange(N * Ho, num_threads=n_threads, schedule="static"):
            _im2col_strip(xp, op + strip * Wo * K, strip, C, H, W, Ho, Wo, kh, kw, sh, sw, ph0,
                          pw0, dh, dw)


def conv_ideal(x, g, slice_w, int kh, int kw, int sh, int sw, int ph0, int pw0, int ph1,
               int pw1, int dh, int dw, bias, cols, work, out, int n_threads=1,
               bint relu=False, residual=None):
    """A convolution on ideal crossbars, written in NCHW: ``out[n, m, p] = bias[m] +
    sum_s slice_w[s] * sum_k g[s, k, m] * col[n, p, k]``, where ``col`` is :func:`im2col` of
    ``x`` (row ``n*Ho*Wo + p``).

    The ideal-mode (no noise, ideal converters) single-group convolution of an inference-only
    forward. A ``prange`` over work items (an image, a block of its output rows, a block of
    channels, sized by the shapes only), each in cache: the rows' :func:`im2col` into the
    thread's ``cols``, one small sgemm per slice (at most ``SGEMM_MAX_MNK`` multiply-adds, so
    OpenBLAS runs it on the calling thread) into the thread's ``work``, and ``work`` transposed
    plus the bias into the output planes (a 1x1, stride-1, unpadded conv skips im2col and the
    transpose: its sgemm writes the output planes directly). No ``[N*Ho*Wo, K]`` matrix goes
    through memory and no layout change follows. Every output element is one item's, summed in a fixed order:
    bit-identical for every ``n_threads``. Equal to ``mvm_forward`` on ``im2col(x)`` (ideal
    ADC, no noise) plus the bias, transposed per image, up to float summation order.

    Args (C-contiguous float32): ``x[N, C, H, W]`` IN, ``g[S, C*kh*kw, M]`` IN, ``slice_w[S]``
    IN, the window as in :func:`im2col`, ``bias[M]`` IN or empty (no bias), ``cols[n_threads,
    Ho*Wo, C*kh*kw]`` and ``work[n_threads, Ho*Wo, M]`` scratch (a thread uses the first rows
    of its slab; untouched pages of ``np.empty`` cost nothing), ``out[N, M, Ho*Wo]`` OUT
    (overwritten), ``n_threads >= 1``; ``residual[N, M, Ho*Wo]`` IN, or None or empty: added
    to the output (after the bias); ``relu``: write ``max(out, 0)`` (after the residual). The
    two fuse a ResNet's ``Add`` and ``Relu`` into the output pass.
    """
    fn = "conv_ideal"
    cdef const float[:, :, :, ::1] xv = _in4(fn, "x", x)  # IN
    cdef const float[:, :, ::1] gv = _in3(fn, "g", g)  # IN
    cdef const float[::1] wv = _in1(fn, "slice_w", slice_w)  # IN
    cdef const float[::1] bv = _in1(fn, "bias", bias)  # IN
    cdef float[:, :, ::1] cv = _out3(fn, "cols", cols)  # scratch
    cdef float[:, :, ::1] kv = _out3(fn, "work", work)  # scratch
    cdef float[:, :, ::1] ov = _out3(fn, "out", out)  # OUT
    if residual is None:
        residual = np.zeros((0, 0, 0), np.float32)
    cdef const float[:, :, ::1] rv = _in3(fn, "residual", residual)  # IN
    _check_window(fn, kh, kw, sh, sw, ph0, pw0, ph1, pw1, dh, dw)
    _positive(fn, "n_threads", n_threads)
    cdef Py_ssize_t N = xv.shape[0], C = xv.shape[1], H = xv.shape[2], W = xv.shape[3]
    cdef Py_ssize_t S = gv.shape[0], M = gv.shape[2], K = C * kh * kw
    cdef Py_ssize_t Ho = _out_size(H, kh, sh, ph0, ph1, dh)
    cdef Py_ssize_t Wo = _out_size(W, kw, sw, pw0, pw1, dw)
    _expect(fn, "g", (gv.shape[0], gv.shape[1], gv.shape[2]), (S, K, M))
    _expect(fn, "slice_w", (wv.shape[0],), (S,))
    if bv.shape[0] != 0:
        _expect(fn, "bias", (bv.shape[0],), (M,))
    _expect(fn, "cols", (cv.shape[0], cv.shape[1], cv.shape[2]), (n_threads, Ho * Wo, K))
    _expect(fn, "work", (kv.shape[0], kv.shape[1], kv.shape[2]), (n_threads, Ho * Wo, M))
    _expect(fn, "out", (ov.shape[0], ov.shape[1], ov.shape[2]), (N, M, Ho * Wo))
    cdef bint has_res = rv.shape[0] * rv.shape[1] * rv.shape[2] != 0
    if has_res or rv.shape[0] != 0:
        _expect(fn, "residual", (rv.shape[0], rv.shape[1], rv.shape[2]), (N, M, Ho * Wo))
    _check_blas_dims(fn, Ho * Wo, K, M)
    _disjoint(fn, {"out": out, "cols": cols, "work": work},
              {"x": x, "g": g, "slice_w": slice_w, "bias": bias, "residual": residual})
    if N == 0 or M == 0 or Ho * Wo == 0:
        return
    if S == 0 or K == 0:
        # an empty sum: the bias alone
        o = np.asarray(ov)
        o[...] = 0
        if bv.shape[0]:
            o += np.asarray(bv)[:, None]
        if has_res:
            o += np.asarray(rv)
        if relu:
            np.maximum(o, 0, out=o)
        return
    cdef const float* bp = &bv[0] if bv.shape[0] else NULL
    cdef const float* resp = &rv[0, 0, 0] if has_res else NULL
    cdef Py_ssize_t rb, mb, nrb, nmb, item
    _conv_block_shape(Ho, Wo, K, M, &rb, &mb)
    nrb = (Ho + rb - 1) // rb
    nmb = (M + mb - 1) // mb
    cdef const float* xp = &xv[0, 0, 0, 0]
    cdef const float* gp = &gv[0, 0, 0]
    cdef const float* swp = &wv[0]
    cdef float* cp = &cv[0, 0, 0]
    cdef float* kp = &kv[0, 0, 0]
    cdef float* op = &ov[0, 0, 0]
    cdef Py_ssize_t cstride = Ho * Wo * K, kstride = Ho * Wo * M
    cdef int tid
    with nogil:
        for item in prange(N * nrb * nmb, num_threads=n_threads, schedule="static"):
            tid = xbarc_thread_num()
            _conv_item(xp, gp, swp, bp, resp, cp + tid * cstride, kp + tid * kstride, op, item, nrb,
                       nmb, rb, mb, C, H, W, Ho, Wo, M, S, kh, kw, sh, sw, ph0, pw0, dh, dw,
                       relu)

def col2im(cols, int N, int C, int H, int W, int kh, int kw, int sh, int sw, int ph0, int pw0,
           int ph1, int pw1, int dh, int dw, out, int n_threads=1):
    """Adjoint of :func:`im2col`: zero ``out[N, C, H, W]``, then add every ``cols`` entry back.

    Entries that came from the padding are dropped. Parallel over the ``N*C`` planes of
    ``out`` (each plane is written by one thread, so there are no races).
    """
    fn = "col2im"
    cdef const float[:, ::1] cv = _in2(fn, "cols", cols)  # IN
    cdef float[:, :, :, ::1] ov = _out4(fn, "out", out)  # OUT
    _check_window(fn, kh, kw, sh, sw, ph0, pw0, ph1, pw1, dh, dw)
    _positive(fn, "n_threads", n_threads)
    for name, v in (("N", N), ("C", C), ("H", H), ("W", W)):
        if v < 0:
            raise ValueError(f"{fn}: {name} must be >= 0, got {v}")
    cdef Py_ssize_t Ho = _out_size(H, kh, sh, ph0, ph1, dh)
    cdef Py_ssize_t Wo = _out_size(W, kw, sw, pw0, pw1, dw)
    _expect(fn, "cols", (cv.shape[0], cv.shape[1]), (N * Ho * Wo, C * kh * kw))
    _expect(fn, "out", (ov.shape[0], ov.shape[1], ov.shape[2], ov.shape[3]), (N, C, H, W))
    _disjoint(fn, {"out": out}, {"cols": cols})
    cdef Py_ssize_t planes = <Py_ssize_t>N * C, plane = <Py_ssize_t>H * W, nc
    if planes == 0 or plane == 0:
        return
    cdef float* op = &ov[0, 0, 0, 0]
    cdef const float* cp = NULL
    if cv.shape[0] > 0 and cv.shape[1] > 0:
        cp = &cv[0, 0]
    with nogil:
        if cp == NULL:
            _zero(op, planes, plane, n_threads)
        else:
            for nc in prange(planes, num_threads=n_threads, schedule="static"):
                _col2im_plane(cp, op + nc * plane, nc, C, H, W, Ho, Wo, kh, kw, sh, sw, ph0,
                              pw0, dh, dw)


def quantize(x, int bits, float x_range, bint signed, int n_threads=1):
    """Quantise ``x`` (1-D, C-contiguous float32; pass ``arr.reshape(-1)``) in place.

    ``bits == 0``: no-op. Signed: ``L = 2**(bits-1) - 1``, ``x = clip(rint(x/step), -L, L) *
    step`` with ``step = x_range / L``; unsigned: ``L = 2**bits - 1``, clip to ``[0, L]``.
    Ties round to even (``rint``). Bit-identical to ``reference.quantize``.
    """
    fn = "quantize"
    cdef float[::1] xv = _out1(fn, "x", x)  # IN/OUT
    _positive(fn, "n_threads", n_threads)
    if bits < 0:
        raise ValueError(f"{fn}: bits must be >= 0, got {bits}")
    if bits == 0:
        return
    _check_bits(fn, "bits", bits, signed)
    if not (0 < x_range < INFINITY):
        raise ValueError(f"{fn}: x_range must be positive and finite, got {x_range}")
    cdef double hi = ldexp(1.0, bits - 1 if signed else bits) - 1.0
    cdef double lo = -hi if signed else 0.0
    cdef double step = <double>x_range / hi
    cdef Py_ssize_t i, n = xv.shape[0]
    if n == 0:
        return
    cdef float* p = &xv[0]
    with nogil:
        for i in prange(n, num_threads=n_threads, schedule="static"):
            p[i] = _quant(p[i], step, lo, hi)


cdef int _check_mvm(str fn, int adc_bits,
                    const float[:, ::1] adc_range, float read_sigma, Py_ssize_t nb,
                    Py_ssize_t S, int n_threads) except -1:
    cdef Py_ssize_t i, j
    cdef float v
    _positive(fn, "n_threads", n_threads)
    if adc_bits < 0:
        raise ValueError(f"{fn}: adc_bits must be >= 0, got {adc_bits}")
    _check_bits(fn, "adc_bits", adc_bits, True)
    if not (0 <= read_sigma < INFINITY):
        raise ValueError(f"{fn}: read_sigma must be >= 0 and finite, got {read_sigma}")
    if adc_bits > 0:
        _expect(fn, "adc_range", (adc_range.shape[0], adc_range.shape[1]), (nb, S))
        for i in range(nb):
            for j in range(S):
                v = adc_range[i, j]
                if not (0 < v < INFINITY):
                    raise ValueError(f"{fn}: adc_range[{i}, {j}] = {v}; ADC ranges must be "
                                     "positive and finite")
    return 0


def mvm_forward(x, g, slice_w, int row_block, int adc_bits, adc_range, float read_sigma,
                g_rms, noise, work, out, int n_threads=1):
    """Tiled crossbar MVM ``out[B, C] = sum_r sum_s slice_w[s] * ADC(x[:, rows_r] @ g[s, rows_r]
    + read_sigma * ||x[:, rows_r]|| * g_rms[r, s] * noise[r, s])``.

    Args (all arrays C-contiguous float32): ``x[B, R]`` IN (DAC-quantised inputs), ``g[S, R, C]``
    IN (G+ - G- per slice, µS), ``slice_w[S]`` IN, ``row_block >= 1`` rows per tile (``nr =
    ceil(R / row_block)`` blocks), ``adc_bits`` (0: ideal), ``adc_range[nr, S]`` IN (read only
    if ``adc_bits > 0``), ``read_sigma >= 0``, ``g_rms[nr, S, C]`` and ``noise[nr, S, B, C]``
    IN (read only if ``read_sigma > 0``; may be empty otherwise), ``work[B, C]`` scratch,
    ``out[B, C]`` OUT (overwritten).

    With an ideal ADC and no noise the row blocks are summed by one sgemm per slice over all
    ``R`` rows; this differs from the block-by-block reference only in float summation order.
    """
    fn = "mvm_forward"
    cdef const float[:, ::1] xv = _in2(fn, "x", x)  # IN
    cdef const float[:, :, ::1] gv = _in3(fn, "g", g)  # IN
    cdef const float[::1] wv = _in1(fn, "slice_w", slice_w)  # IN
    cdef const float[:, ::1] av = _in2(fn, "adc_range", adc_range)  # IN
    cdef const float[:, :, ::1] rv = _in3(fn, "g_rms", g_rms)  # IN
    cdef const float[:, :, :, ::1] zv = _in4(fn, "noise", noise)  # IN
    cdef float[:, ::1] kv = _out2(fn, "work", work)  # scratch
    cdef float[:, ::1] ov = _out2(fn, "out", out)  # OUT
    cdef Py_ssize_t B = xv.shape[0], R = xv.shape[1], S = gv.shape[0], C = gv.shape[2]
    _expect(fn, "g", (gv.shape[0], gv.shape[1], gv.shape[2]), (S, R, C))
    _expect(fn, "slice_w", (wv.shape[0],), (S,))
    if row_block < 1:
        raise ValueError(f"{fn}: row_block must be >= 1, got {row_block}")
    cdef Py_ssize_t nr = (R + row_block - 1) // row_block
    _check_mvm(fn, adc_bits, av, read_sigma, nr, S, n_threads)
    if read_sigma > 0:
        _expect(fn, "g_rms", (rv.shape[0], rv.shape[1], rv.shape[2]), (nr, S, C))
        _expect(fn, "noise", (zv.shape[0], zv.shape[1], zv.shape[2], zv.shape[3]),
                (nr, S, B, C))
    _expect(fn, "work", (kv.shape[0], kv.shape[1]), (B, C))
    _expect(fn, "out", (ov.shape[0], ov.shape[1]), (B, C))
    _check_blas_dims(fn, B, R, C)
    _disjoint(fn, {"out": out, "work": work},
              {"x": x, "g": g, "slice_w": slice_w, "adc_range": adc_range, "g_rms": g_rms,
               "noise": noise})
    if B == 0 or C == 0:
        return
    _run_mvm(xv, gv, wv, B, R, C, S, False, row_block, adc_bits, av, read_sigma, rv, zv,
             kv, ov, n_threads)


def mvm_backward(dy, g, slice_w, int col_block, int adc_bits, adc_range, float read_sigma,
                 g_rms_t, noise, work, out, int n_threads=1):
    """Transposed tiled MVM ``out[B, R] = sum_c sum_s slice_w[s] * ADC(dy[:, cols_c] @
    g[s][:, cols_c].T + read_sigma * ||dy[:, cols_c]|| * g_rms_t[c, s] * noise[c, s])``.

    Args (all arrays C-contiguous float32): ``dy[B, C]`` IN, ``g[S, R, C]`` IN, ``slice_w[S]``
    IN, ``col_block >= 1`` logical columns per tile (``nc = ceil(C / col_block)``),
    ``adc_bits`` (0: ideal), ``adc_range[nc, S]`` IN, ``read_sigma >= 0``,
    ``g_rms_t[nc, S, R]`` and ``noise[nc, S, B, R]`` IN (read only if ``read_sigma > 0``),
    ``work[B, R]`` scratch, ``out[B, R]`` OUT (overwritten). Same fast path as
    :func:`mvm_forward`.
    """
    fn = "mvm_backward"
    cdef const float[:, ::1] dv = _in2(fn, "dy", dy)  # IN
    cdef const float[:, :, ::1] gv = _in3(fn, "g", g)  # IN
    cdef const float[::1] wv = _in1(fn, "slice_w", slice_w)  # IN
    cdef const float[:, ::1] av = _in2(fn, "adc_range", adc_range)  # IN
    cdef const float[:, :, ::1] rv = _in3(fn, "g_rms_t", g_rms_t)  # IN
    cdef const float[:, :, :, ::1] zv = _in4(fn, "noise", noise)  # IN
    cdef float[:, ::1] kv = _out2(fn, "work", work)  # scratch
    cdef float[:, ::1] ov = _out2(fn, "out", out)  # OUT
    cdef Py_ssize_t B = dv.shape[0], C = dv.shape[1], S = gv.shape[0], R = gv.shape[1]
    _expect(fn, "g", (gv.shape[0], gv.shape[1], gv.shape[2]), (S, R, C))
    _expect(fn, "slice_w", (wv.shape[0],), (S,))
    if col_block < 1:
        raise ValueError(f"{fn}: col_block must be >= 1, got {col_block}")
    cdef Py_ssize_t nc = (C + col_block - 1) // col_block
    _check_mvm(fn, adc_bits, av, read_sigma, nc, S, n_threads)
    if read_sigma > 0:
        _expect(fn, "g_rms_t", (rv.shape[0], rv.shape[1], rv.shape[2]), (nc, S, R))
        _expect(fn, "noise", (zv.shape[0], zv.shape[1], zv.shape[2], zv.shape[3]),
                (nc, S, B, R))
    _expect(fn, "work", (kv.shape[0], kv.shape[1]), (B, R))
    _expect(fn, "out", (ov.shape[0], ov.shape[1]), (B, R))
    _check_blas_dims(fn, B, R, C)
    _disjoint(fn, {"out": out, "work": work},
              {"dy": dy, "g": g, "slice_w": slice_w, "adc_range": adc_range,
               "g_rms_t": g_rms_t, "noise": noise})
    if B == 0 or R == 0:
        return
    _run_mvm(dv, gv, wv, B, C, R, S, True, col_block, adc_bits, av, read_sigma, rv, zv,
             kv, ov, n_threads)


cdef void _run_mvm(const float[:, ::1] xv, const float[:, :, ::1] gv, const float[::1] wv,
                   Py_ssize_t B, Py_ssize_t K, Py_ssize_t N, Py_ssize_t S, bint trans,
                   Py_ssize_t block, int adc_bits, const float[:, ::1] av, float sigma,
                   const float[:, :, ::1] rv, const float[:, :, :, ::1] zv, float[:, ::1] kv,
                   float[:, ::1] ov, int n_threads):
    """Take the raw pointers (only of non-empty arrays that will be read) and run nogil."""
    cdef const float* xp = NULL
    cdef const float* gp = NULL
    cdef const float* wp = NULL
    cdef const float* ap = NULL
    cdef const float* rp = NULL
    cdef const float* zp = NULL
    if K > 0 and S > 0:
        xp = &xv[0, 0]
        gp = &gv[0, 0, 0]
        wp = &wv[0]
        if adc_bits > 0:
            ap = &av[0, 0]
        if sigma > 0:
            rp = &rv[0, 0, 0]
            zp = &zv[0, 0, 0, 0]
    with nogil:
        if K == 0 or S == 0:
            _zero(&ov[0, 0], B, N, n_threads)
        else:
            _tiled_mvm(xp, gp, wp, B, K, N, S, trans, block, adc_bits, ap, sigma, rp, zp,
                       &kv[0, 0], &ov[0, 0], n_threads)


def rms_columns(gp, gn, int row_block, out, int n_threads=1):
    """Per-tile column rms: ``out[r, s, c] = sqrt(mean_{i in rows_r}(gp[s,i,c]**2 + gn[s,i,c]**2))``.

    ``gp``, ``gn``: ``[S, R, C]`` IN, the two conductances of each differential pair; ``gn`` may
    be an empty ``(0, 0, 0)`` array (one device per weight). ``out[nr, S, C]`` OUT with
    ``nr = ceil(R / row_block)``. Sums run in double.
    """
    fn = "rms_columns"
    cdef const float[:, :, ::1] pv = _in3(fn, "gp", gp)  # IN
    cdef const float[:, :, ::1] nv = _in3(fn, "gn", gn)  # IN
    cdef float[:, :, ::1] ov = _out3(fn, "out", out)  # OUT
    cdef Py_ssize_t S = pv.shape[0], R = pv.shape[1], C = pv.shape[2], idx, total
    cdef bint pair = not (nv.shape[0] == 0 and nv.shape[1] == 0 and nv.shape[2] == 0)
    if pair:
        _expect(fn, "gn", (nv.shape[0], nv.shape[1], nv.shape[2]), (S, R, C))
    _positive(fn, "row_block", row_block)
    _positive(fn, "n_threads", n_threads)
    cdef Py_ssize_t nr = (R + row_block - 1) // row_block
    _expect(fn, "out", (ov.shape[0], ov.shape[1], ov.shape[2]), (nr, S, C))
    _disjoint(fn, {"out": out}, {"gp": gp, "gn": gn})
    total = nr * S * C
    if total == 0:
        return
    cdef const float* a = &pv[0, 0, 0]
    cdef const float* b = &nv[0, 0, 0] if pair else NULL
    cdef float* o = &ov[0, 0, 0]
    with nogil:
        for idx in prange(total, num_threads=n_threads, schedule="static"):
            _rms_col(a, b, o, idx, S, R, C, row_block)


def rms_rows(gp, gn, int col_block, out, int n_threads=1):
    """Per-tile row rms: ``out[c, s, i] = sqrt(mean_{j in cols_c}(gp[s,i,j]**2 + gn[s,i,j]**2))``.

    Same conventions as :func:`rms_columns`; ``out[nc, S, R]`` with ``nc = ceil(C / col_block)``.
    """
    fn = "rms_rows"
    cdef const float[:, :, ::1] pv = _in3(fn, "gp", gp)  # IN
    cdef const float[:, :, ::1] nv = _in3(fn, "gn", gn)  # IN
    cdef float[:, :, ::1] ov = _out3(fn, "out", out)  # OUT
    cdef Py_ssize_t S = pv.shape[0], R = pv.shape[1], C = pv.shape[2], idx
    cdef bint pair = not (nv.shape[0] == 0 and nv.shape[1] == 0 and nv.shape[2] == 0)
    if pair:
        _expect(fn, "gn", (nv.shape[0], nv.shape[1], nv.shape[2]), (S, R, C))
    _positive(fn, "col_block", col_block)
    _positive(fn, "n_threads", n_threads)
    cdef Py_ssize_t nc = (C + col_block - 1) // col_block
    _expect(fn, "out", (ov.shape[0], ov.shape[1], ov.shape[2]), (nc, S, R))
    _disjoint(fn, {"out": out}, {"gp": gp, "gn": gn})
    if nc * S * R == 0:
        return
    cdef const float* a = &pv[0, 0, 0]
    cdef const float* b = &nv[0, 0, 0] if pair else NULL
    cdef float* o = &ov[0, 0, 0]
    with nogil:
        for idx in prange(S * R, num_threads=n_threads, schedule="static"):
            _rms_row(a, b, o, idx, S, R, C, col_block)
