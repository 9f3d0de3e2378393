"""NumPy twins of the convolution kernels: ``im2col``, ``col2im`` and ``conv_ideal``.

Part of :mod:`xbarc.runtime.reference` (which re-exports them); same conventions.
"""

from __future__ import annotations

import numpy as np

from xbarc.runtime.reference_checks import (
    F32,
    _array,
    _disjoint,
    _expect,
    _positive,
)


def out_size(n: int, k: int, stride: int, pad0: int, pad1: int, dilation: int) -> int:
    """Number of sliding-window positions along one axis (0 if the kernel does not fit).

    Args:
        n: Input extent.
        k: Kernel extent.
        stride: Step between windows.
        pad0: Zero padding before the input.
        pad1: Zero padding after the input.
        dilation: Spacing of kernel taps.

    Returns:
        ``max(0, (n + pad0 + pad1 - dilation*(k-1) - 1) // stride + 1)``.
    """
    span = n + pad0 + pad1 - dilation * (k - 1) - 1
    return 0 if span < 0 else span // stride + 1


def _check_window(
    fn: str, kh: int, kw: int, sh: int, sw: int, pads: tuple[int, ...], dh: int, dw: int
) -> None:
    for name, v in (("kh", kh), ("kw", kw), ("sh", sh), ("sw", sw), ("dh", dh), ("dw", dw)):
        _positive(fn, name, v)
    for name, v in zip(("ph0", "pw0", "ph1", "pw1"), pads, strict=True):
        if v < 0:
            raise ValueError(f"{fn}: {name} must be >= 0, got {v}")


def _taps(i: int, dilation: int, stride: int, n_out: int) -> slice:
    """Padded-input positions of kernel tap ``i`` for the ``n_out >= 1`` windows of one axis."""
    start = i * dilation
    return slice(start, start + stride * (n_out - 1) + 1, stride)


def im2col(
    x: F32,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph0: int,
    pw0: int,
    ph1: int,
    pw1: int,
    dh: int,
    dw: int,
    out: F32,
    n_threads: int = 1,
) -> None:
    """Unfold the sliding windows of ``x`` into the rows of ``out``.

    Row ``(n*Ho + oh)*Wo + ow``, column ``(c*kh + i)*kw + j`` of ``out`` receives
    ``x[n, c, oh*sh - ph0 + i*dh, ow*sw - pw0 + j*dw]``, or 0 where that falls in the padding.

    Args:
        x: Input ``[N, C, H, W]``.
        kh: Kernel height.
        kw: Kernel width.
        sh: Vertical stride.
        sw: Horizontal stride.
        ph0: Padding above.
        pw0: Padding on the left.
        ph1: Padding below.
        pw1: Padding on the right.
        dh: Vertical dilation.
        dw: Horizontal dilation.
        out: Output ``[N*Ho*Wo, C*kh*kw]`` (see :func:`out_size`), overwritten.
        n_threads: Ignored.

    Raises:
        ValueError: On a wrong dtype, rank, contiguity or shape, or invalid window parameters.
    """
    fn = "im2col"
    x = _array(fn, "x", x, 4)
    out = _array(fn, "out", out, 2, writable=True)
    _check_window(fn, kh, kw, sh, sw, (ph0, pw0, ph1, pw1), dh, dw)
    _positive(fn, "n_threads", n_threads)
    n, c, h, w = x.shape
    ho, wo = out_size(h, kh, sh, ph0, ph1, dh), out_size(w, kw, sw, pw0, pw1, dw)
    _expect(fn, "out", out.shape, (n * ho * wo, c * kh * kw))
    _disjoint(fn, {"out": out}, {"x": x})
    if out.size == 0:
        return
    xp = np.zeros((n, c, h + ph0 + ph1, w + pw0 + pw1), np.float32)
    xp[:, :, ph0 : ph0 + h, pw0 : pw0 + w] = x
    view = out.reshape(n, ho, wo, c, kh, kw)
    for i in range(kh):
        for j in range(kw):
            # tap (i, j) of every window: a strided slice of the padded input, [N, C, Ho, Wo]
            tap = xp[:, :, _taps(i, dh, sh, ho), _taps(j, dw, sw, wo)]
            view[:, :, :, :, i, j] = tap.transpose(0, 2, 3, 1)


def col2im(
    cols: F32,
    N: int,  # noqa: N803 (the names of the spec and of the compiled twin)
    C: int,  # noqa: N803 (the names of the spec and of the compiled twin)
    H: int,  # noqa: N803 (the names of the spec and of the compiled twin)
    W: int,  # noqa: N803 (the names of the spec and of the compiled twin)
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph0: int,
    pw0: int,
    ph1: int,
    pw1: int,
    dh: int,
    dw: int,
    out: F32,
    n_threads: int = 1,
) -> None:
    """Adjoint of :func:`im2col`: sum every entry of ``cols`` back into the position it came from.

    Args:
        cols: Columns ``[N*Ho*Wo, C*kh*kw]`` laid out as :func:`im2col` writes them.
        N: Batch size.
        C: Channels.
        H: Input height.
        W: Input width.
        kh: Kernel height.
        kw: Kernel width.
        sh: Vertical stride.
        sw: Horizontal stride.
        ph0: Padding above.
        pw0: Padding on the left.
        ph1: Padding below.
        pw1: Padding on the right.
        dh: Vertical dilation.
        dw: Horizontal dilation.
        out: Output ``[N, C, H, W]``, overwritten; entries from the padding are dropped.
        n_threads: Ignored.

    Raises:
        ValueError: On a wrong dtype, rank, contiguity or shape, or invalid window parameters.
    """
    fn = "col2im"
    cols = _array(fn, "cols", cols, 2)
    out = _array(fn, "out", out, 4, writable=True)
    _check_window(fn, kh, kw, sh, sw, (ph0, pw0, ph1, pw1), dh, dw)
    _positive(fn, "n_threads", n_threads)
    for name, v in (("N", N), ("C", C), ("H", H), ("W", W)):
        if v < 0:
            raise ValueError(f"{fn}: {name} must be >= 0, got {v}")
    ho, wo = out_size(H, kh, sh, ph0, ph1, dh), out_size(W, kw, sw, pw0, pw1, dw)
    _expect(fn, "cols", cols.shape, (N * ho * wo, C * kh * kw))
    _expect(fn, "out", out.shape, (N, C, H, W))
    _disjoint(fn, {"out": out}, {"cols": cols})
    xp = np.zeros((N, C, H + ph0 + ph1, W + pw0 + pw1), np.float32)
    if cols.size:
        view = cols.reshape(N, ho, wo, C, kh, kw)
        for i in range(kh):
            for j in range(kw):
                tap = view[:, :, :, :, i, j].transpose(0, 3, 1, 2)
                xp[:, :, _taps(i, dh, sh, ho), _taps(j, dw, sw, wo)] += tap
    out[...] = xp[:, :, ph0 : ph0 + H, pw0 : pw0 + W]


# --------------------------------------------------------------------------- quantisation


def conv_ideal(
    x: F32,
    g: F32,
    slice_w: F32,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph0: int,
    pw0: int,
    ph1: int,
    pw1: int,
    dh: int,
    dw: int,
    bias: F32,
    cols: F32,
    work: F32,
    out: F32,
    n_threads: int = 1,
    relu: bool = False,
    residual: F32 | None = None,
) -> None:
    """A convolution on ideal crossbars, written in NCHW.

    ``out[n, m, p] = bias[m] + sum_s slice_w[s] * (im2col(x) @ g[s])[n*Ho*Wo + p, m]``.

    Args:
        x: Input ``[N, C, H, W]``.
        g: Conductance differences ``[S, C*kh*kw, M]`` per bit slice (µS).
        slice_w: Weight per µS of each slice ``[S]``.
        kh: Kernel height.
        kw: Kernel width.
        sh: Vertical stride.
        sw: Horizontal stride.
        ph0: Padding above.
        pw0: Padding on the left.
        ph1: Padding below.
        pw1: Padding on the right.
        dh: Vertical dilation.
        dw: Horizontal dilation.
        bias: ``[M]``, or empty for no bias.
        cols: Scratch ``[n_threads, Ho*Wo, C*kh*kw]`` (the compiled kernel's per-thread
            im2col rows; unused here beyond its shape).
        work: Scratch ``[n_threads, Ho*Wo, M]`` (per-thread products; unused here beyond its
            shape).
        out: Output ``[N, M, Ho*Wo]``, overwritten.
        n_threads: At least 1; sizes the scratch.
        relu: Write ``max(out, 0)`` (a fused ReLU, after the residual).
        residual: ``[N, M, Ho*Wo]`` added after the bias, or None or empty (none).

    Raises:
        ValueError: On a wrong array or invalid window parameters.
    """
    fn = "conv_ideal"
    x = _array(fn, "x", x, 4)
    g = _array(fn, "g", g, 3)
    slice_w = _array(fn, "slice_w", slice_w, 1)
    bias = _array(fn, "bias", bias, 1)
    cols = _array(fn, "cols", cols, 3, writable=True)
    work = _array(fn, "work", work, 3, writable=True)
    out = _array(fn, "out", out, 3, writable=True)
    res = _array(
        fn, "residual", np.zeros((0, 0, 0), np.float32) if residual is None else residual, 3
    )
    _check_window(fn, kh, kw, sh, sw, (ph0, pw0, ph1, pw1), dh, dw)
    _positive(fn, "n_threads", n_threads)
    n, c, h, w = x.shape
    s, m = g.shape[0], g.shape[2]
    k = c * kh * kw
    ho, wo = out_size(h, kh, sh, ph0, ph1, dh), out_size(w, kw, sw, pw0, pw1, dw)
    _expect(fn, "g", g.shape, (s, k, m))
    _expect(fn, "slice_w", slice_w.shape, (s,))
    if bias.size:
        _expect(fn, "bias", bias.shape, (m,))
    _expect(fn, "cols", cols.shape, (n_threads, ho * wo, k))
    _expect(fn, "work", work.shape, (n_threads, ho * wo, m))
    _expect(fn, "out", out.shape, (n, m, ho * wo))
    if res.size or res.shape[0]:
        _expect(fn, "residual", res.shape, (n, m, ho * wo))
    _disjoint(
        fn,
        {"out": out, "cols": cols, "work": work},
        {"x": x, "g": g, "slice_w": slice_w, "bias": bias, "residual": res},
    )
    if out.size == 0:
        return
    col = np.empty((n * ho * wo, k), np.float32)
    im2col(x, kh, kw, sh, sw, ph0, pw0, ph1, pw1, dh, dw, col)
    y = np.zeros((n * ho * wo, m), np.float32)
    for si in range(s):
        y += slice_w[si] * (col @ g[si])
    if bias.size:
        y += bias
    out[...] = y.reshape(n, ho * wo, m).transpose(0, 2, 1)
    if res.size:
        out += res
    if relu:
        np.maximum(out, 0, out=out)
