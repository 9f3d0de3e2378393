"""NumPy twins of the Cython kernels in ``_kernels.pyx``: the readable definition of each kernel.

Every function here has the same name, signature and argument checks as its compiled twin (the
``n_threads`` arguments are accepted and ignored, ``work`` is used only as scratch), so a caller
or a test can swap one module for the other. The property tests in ``tests/test_kernels.py``
check that the two agree. Nothing here calls the compiled module.

Conventions shared with the compiled module:

* Arrays are C-contiguous float32 (native byte order); outputs are passed in and overwritten.
* Scalars that the compiled module receives as C ``float`` (``x_range``, ``read_sigma``) are
  rounded to float32 first, exactly as the Cython argument conversion does.
* Quantisation divides in float64, rounds half to even (``np.rint``), clips, multiplies back in
  float64 and rounds to float32; ``quantize`` is bit-identical to the compiled kernel.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from xbarc.runtime.reference_checks import (
    F32,
    _array,
    _check_bits,
    _disjoint,
    _expect,
    _positive,
    _to_f32,
)
from xbarc.runtime.reference_conv import col2im, conv_ideal, im2col, out_size

__all__ = [
    "COMPILED",
    "OPENMP",
    "col2im",
    "conv_ideal",
    "im2col",
    "mvm_backward",
    "mvm_forward",
    "n_threads_default",
    "out_size",
    "quantize",
    "quantized",
    "rms_columns",
    "rms_rows",
]

COMPILED = False
"""``False`` here; ``_kernels.COMPILED`` is ``True``."""

OPENMP = False
"""The twins are single-threaded."""


def n_threads_default() -> int:
    """Thread count the twins use (always 1; they ignore ``n_threads``)."""
    return 1


def quantized(v: F32, bits: int, x_range: float, signed: bool) -> F32:
    """A quantised copy of ``v`` (``bits > 0``; ``x_range`` already a float32 value).

    Args:
        v: Values to quantise.
        bits: Resolution; ``L = 2**(bits-1) - 1`` levels per sign if ``signed``, else
            ``L = 2**bits - 1`` levels.
        x_range: Full scale; ``step = x_range / L``.
        signed: Clip to ``[-L, L]`` steps if true, else to ``[0, L]``.

    Returns:
        ``clip(rint(v / step), lo, L) * step`` as float32 (division and product in float64,
        ties rounded to even).
    """
    levels = 2.0 ** (bits - 1) - 1.0 if signed else 2.0**bits - 1.0
    step = x_range / levels
    q = np.clip(np.rint(v.astype(np.float64) / step), -levels if signed else 0.0, levels)
    return (q * step).astype(np.float32)


def quantize(x: F32, bits: int, x_range: float, signed: bool, n_threads: int = 1) -> None:
    """Quantise ``x`` in place (see :func:`quantized`); ``bits == 0`` leaves it unchanged.

    Args:
        x: 1-D C-contiguous float32 array (pass ``arr.reshape(-1)`` for any rank).
        bits: 0 (off) or the resolution (at least 2 if ``signed``), at most 32.
        x_range: Positive, finite full scale (rounded to float32 first).
        signed: Symmetric signed levels, or unsigned levels from 0.
        n_threads: Ignored.

    Raises:
        ValueError: On a wrong array, ``bits`` out of range or a bad ``x_range``.
    """
    fn = "quantize"
    x = _array(fn, "x", x, 1, writable=True)
    _positive(fn, "n_threads", n_threads)
    if bits < 0:
        raise ValueError(f"{fn}: bits must be >= 0, got {bits}")
    if bits == 0:
        return
    _check_bits(fn, "bits", bits, signed)
    xr = _to_f32(x_range)
    if not 0 < xr < math.inf:
        raise ValueError(f"{fn}: x_range must be positive and finite, got {xr}")
    x[...] = quantized(x, bits, xr, signed)


# --------------------------------------------------------------------------- tiled MVM


def _check_mvm(
    fn: str, adc_bits: int, adc_range: F32, read_sigma: float, nb: int, s: int, n_threads: int
) -> None:
    _positive(fn, "n_threads", n_threads)
    if adc_bits < 0:
        raise ValueError(f"{fn}: adc_bits must be >= 0, got {adc_bits}")
    _check_bits(fn, "adc_bits", adc_bits, True)
    if not 0 <= read_sigma < math.inf:
        raise ValueError(f"{fn}: read_sigma must be >= 0 and finite, got {read_sigma}")
    if adc_bits > 0:
        _expect(fn, "adc_range", adc_range.shape, (nb, s))
        for (i, j), v in np.ndenumerate(adc_range):
            if not 0 < v < math.inf:
                raise ValueError(
                    f"{fn}: adc_range[{i}, {j}] = {v}; ADC ranges must be positive and finite"
                )


def mvm_forward(
    x: F32,
    g: F32,
    slice_w: F32,
    row_block: int,
    adc_bits: int,
    adc_range: F32,
    read_sigma: float,
    g_rms: F32,
    noise: F32,
    work: F32,
    out: F32,
    n_threads: int = 1,
) -> None:
    """Tiled crossbar MVM: per row block and slice, a product, read noise, the ADC, a weighted sum.

    ``out = sum_r sum_s slice_w[s] * ADC(x[:, rows_r] @ g[s, rows_r]
    + read_sigma * ||x[:, rows_r]|| * g_rms[r, s] * noise[r, s])``, where ``rows_r`` is row
    block ``r`` (``row_block`` rows; the last one may be shorter) and the norm is per batch row.

    Args:
        x: Inputs ``[B, R]`` (already DAC-quantised).
        g: Conductance differences ``[S, R, C]`` per bit slice (µS).
        slice_w: Weight per µS of each slice ``[S]``.
        row_block: Rows per physical tile, at least 1; ``nr = ceil(R / row_block)``.
        adc_bits: ADC resolution (signed); 0 means an ideal ADC.
        adc_range: ADC full scale ``[nr, S]``; read only if ``adc_bits > 0``.
        read_sigma: Relative read noise, at least 0 (rounded to float32).
        g_rms: Rms conductance ``[nr, S, C]`` of each column in each row block; read only if
            ``read_sigma > 0`` (else it may be empty).
        noise: Standard-normal draws ``[nr, S, B, C]``; read only if ``read_sigma > 0``.
        work: Scratch ``[B, C]``.
        out: Output ``[B, C]``, overwritten.
        n_threads: Ignored.

    Raises:
        ValueError: On a wrong array or an invalid scalar argument.
    """
    _tiled(
        "mvm_forward", ("x", "row_block", "g_rms"), x, g, slice_w, row_block, adc_bits,
        adc_range, read_sigma, g_rms, noise, work, out, n_threads, trans=False,
    )  # fmt: skip


def mvm_backward(
    dy: F32,
    g: F32,
    slice_w: F32,
    col_block: int,
    adc_bits: int,
    adc_range: F32,
    read_sigma: float,
    g_rms_t: F32,
    noise: F32,
    work: F32,
    out: F32,
    n_threads: int = 1,
) -> None:
    """Transposed tiled MVM: inputs on the columns, outputs read on the rows, per column block.

    ``out = sum_c sum_s slice_w[s] * ADC(dy[:, cols_c] @ g[s][:, cols_c].T
    + read_sigma * ||dy[:, cols_c]|| * g_rms_t[c, s] * noise[c, s])``.

    Args:
        dy: Errors ``[B, C]``.
        g: Conductance differences ``[S, R, C]`` per bit slice (µS).
        slice_w: Weight per µS of each slice ``[S]``.
        col_block: Logical columns per tile, at least 1; ``nc = ceil(C / col_block)``.
        adc_bits: ADC resolution (signed); 0 means an ideal ADC.
        adc_range: ADC full scale ``[nc, S]``; read only if ``adc_bits > 0``.
        read_sigma: Relative read noise, at least 0 (rounded to float32).
        g_rms_t: Rms conductance ``[nc, S, R]`` of each row in each column block; read only if
            ``read_sigma > 0`` (else it may be empty).
        noise: Standard-normal draws ``[nc, S, B, R]``; read only if ``read_sigma > 0``.
        work: Scratch ``[B, R]``.
        out: Output ``[B, R]``, overwritten.
        n_threads: Ignored.

    Raises:
        ValueError: On a wrong array or an invalid scalar argument.
    """
    _tiled(
        "mvm_backward", ("dy", "col_block", "g_rms_t"), dy, g, slice_w, col_block, adc_bits,
        adc_range, read_sigma, g_rms_t, noise, work, out, n_threads, trans=True,
    )  # fmt: skip


def _tiled(
    fn: str,
    names: tuple[str, str, str],
    x: F32,
    g: F32,
    slice_w: F32,
    block: int,
    adc_bits: int,
    adc_range: F32,
    read_sigma: float,
    rms: F32,
    noise: F32,
    work: F32,
    out: F32,
    n_threads: int,
    *,
    trans: bool,
) -> None:
    """Shared body of :func:`mvm_forward` (``trans=False``) and :func:`mvm_backward`.

    ``x`` is ``[B, K]``; the reduction runs over ``K`` in blocks of ``block``: the rows of
    ``g[s]`` (forward, ``K = R``) or its columns (backward, ``K = C``, ``g[s]`` used
    transposed). ``names`` are the caller's names for ``x``, ``block`` and ``rms``.
    """
    x_name, block_name, rms_name = names
    x = _array(fn, x_name, x, 2)
    g = _array(fn, "g", g, 3)
    slice_w = _array(fn, "slice_w", slice_w, 1)
    adc_range = _array(fn, "adc_range", adc_range, 2)
    rms = _array(fn, rms_name, rms, 3)
    noise = _array(fn, "noise", noise, 4)
    work = _array(fn, "work", work, 2, writable=True)
    out = _array(fn, "out", out, 2, writable=True)
    b, k = x.shape
    s, n = g.shape[0], g.shape[1 if trans else 2]
    _expect(fn, "g", g.shape, (s, n, k) if trans else (s, k, n))
    _expect(fn, "slice_w", slice_w.shape, (s,))
    if block < 1:
        raise ValueError(f"{fn}: {block_name} must be >= 1, got {block}")
    nb = -(-k // block)
    sigma = np.float32(read_sigma)
    _check_mvm(fn, adc_bits, adc_range, float(sigma), nb, s, n_threads)
    if sigma > 0:
        _expect(fn, rms_name, rms.shape, (nb, s, n))
        _expect(fn, "noise", noise.shape, (nb, s, b, n))
    _expect(fn, "work", work.shape, (b, n))
    _expect(fn, "out", out.shape, (b, n))
    ins = {x_name: x, "g": g, "slice_w": slice_w, "adc_range": adc_range, rms_name: rms}
    _disjoint(fn, {"out": out, "work": work}, {**ins, "noise": noise})
    out[...] = 0
    for blk in range(nb):
        part = slice(blk * block, min(k, (blk + 1) * block))
        xb = x[:, part]
        xn = np.sqrt(np.sum(xb * xb, axis=1))
        for si in range(s):
            gb = g[si][:, part].T if trans else g[si, part, :]
            p = np.matmul(xb, gb, out=work)
            if sigma > 0:
                p = p + sigma * xn[:, None] * rms[blk, si][None, :] * noise[blk, si]
            if adc_bits > 0:
                p = quantized(p, adc_bits, float(adc_range[blk, si]), signed=True)
            out += slice_w[si] * p


# --------------------------------------------------------------------------- rms conductance


def _pair_squares(fn: str, gp: F32, gn: F32) -> NDArray[np.float64]:
    """``gp**2 + gn**2`` in float64 (``gn`` may be an empty ``(0, 0, 0)`` array: no pair)."""
    gp = _array(fn, "gp", gp, 3)
    gn = _array(fn, "gn", gn, 3)
    sq = np.square(gp, dtype=np.float64)
    if gn.shape != (0, 0, 0):
        _expect(fn, "gn", gn.shape, gp.shape)
        sq += np.square(gn, dtype=np.float64)
    return sq


def rms_columns(gp: F32, gn: F32, row_block: int, out: F32, n_threads: int = 1) -> None:
    """Rms conductance of each column within each row block: ``[nr, S, C]``.

    ``out[r, s, c] = sqrt(mean over the rows i of block r of gp[s, i, c]**2 + gn[s, i, c]**2)``,
    summed in float64.

    Args:
        gp: First conductance of each differential pair ``[S, R, C]``.
        gn: Second conductance ``[S, R, C]``, or an empty ``(0, 0, 0)`` array (one device per
            weight).
        row_block: Rows per tile, at least 1; ``nr = ceil(R / row_block)``.
        out: Output ``[nr, S, C]``, overwritten.
        n_threads: Ignored.

    Raises:
        ValueError: On a wrong array or ``row_block < 1``.
    """
    fn = "rms_columns"
    sq = _pair_squares(fn, gp, gn)
    out = _array(fn, "out", out, 3, writable=True)
    _positive(fn, "row_block", row_block)
    _positive(fn, "n_threads", n_threads)
    s, r, c = sq.shape
    nr = -(-r // row_block)
    _expect(fn, "out", out.shape, (nr, s, c))
    _disjoint(fn, {"out": out}, {"gp": gp, "gn": gn})
    for blk in range(nr):
        rows = slice(blk * row_block, min(r, (blk + 1) * row_block))
        out[blk] = np.sqrt(sq[:, rows, :].mean(axis=1))


def rms_rows(gp: F32, gn: F32, col_block: int, out: F32, n_threads: int = 1) -> None:
    """Rms conductance of each row within each column block: ``[nc, S, R]``.

    ``out[c, s, i] = sqrt(mean over the columns j of block c of gp[s, i, j]**2 + gn[s, i, j]**2)``,
    summed in float64.

    Args:
        gp: First conductance of each differential pair ``[S, R, C]``.
        gn: Second conductance ``[S, R, C]``, or an empty ``(0, 0, 0)`` array.
        col_block: Logical columns per tile, at least 1; ``nc = ceil(C / col_block)``.
        out: Output ``[nc, S, R]``, overwritten.
        n_threads: Ignored.

    Raises:
        ValueError: On a wrong array or ``col_block < 1``.
    """
    fn = "rms_rows"
    sq = _pair_squares(fn, gp, gn)
    out = _array(fn, "out", out, 3, writable=True)
    _positive(fn, "col_block", col_block)
    _positive(fn, "n_threads", n_threads)
    s, r, c = sq.shape
    nc = -(-c // col_block)
    _expect(fn, "out", out.shape, (nc, s, r))
    _disjoint(fn, {"out": out}, {"gp": gp, "gn": gn})
    for blk in range(nc):
        cols = slice(blk * col_block, min(c, (blk + 1) * col_block))
        out[blk] = np.sqrt(sq[:, :, cols].mean(axis=2))
