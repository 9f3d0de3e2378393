"""The compiled kernels (``_kernels.pyx``) against their NumPy twins (``reference.py``).

Hypothesis draws shapes and parameters (zero-size dimensions, ragged last tiles, tiles larger
than the matrix, every padding/stride/dilation mix) plus a seed for the array contents, so the
data are realistic floats and the search concentrates on the shapes.

Tolerances are derived, not guessed. A float32 dot product of length k summed in any order is
within ``k * u * sum|terms|`` of the exact value (``u = 2**-24``), so the MVM checks compare
both kernels with an exact float64 oracle using that bound per element. With an ADC, BLAS and
NumPy summation orders can put a value on different sides of a rounding boundary; the oracle
knows which (tile, slice) partial sums lie within the error bound of a boundary and allows
exactly one ADC step there, and nowhere else.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xbarc.runtime import _kernels, reference

MODULES = [pytest.param(_kernels, id="cython"), pytest.param(reference, id="numpy")]
U = 2.0**-24  # unit roundoff of float32
F32 = np.float32
Array = np.ndarray[Any, Any]


def empty(ndim: int) -> Array:
    return np.zeros((0,) * ndim, F32)


def bits_of(a: Array) -> Array:
    """Bit patterns, for bit-identity checks (NaN-safe, distinguishes -0.0)."""
    return np.ascontiguousarray(a).view(np.uint32)


def test_compiled_module_is_the_one_running() -> None:
    assert _kernels.COMPILED is True
    assert reference.COMPILED is False
    assert _kernels.__file__ is not None
    assert _kernels.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert _kernels.n_threads_default() >= 1


# --------------------------------------------------------------------------- im2col / col2im


@st.composite
def windows(draw: st.DrawFn) -> dict[str, Any]:
    """A convolution geometry; ``Ho``/``Wo`` may come out 0 (kernel larger than the input)."""
    return {
        "N": draw(st.integers(0, 2)),
        "C": draw(st.integers(0, 3)),
        "H": draw(st.integers(0, 7)),
        "W": draw(st.integers(0, 7)),
        "kh": draw(st.integers(1, 3)),
        "kw": draw(st.integers(1, 3)),
        "sh": draw(st.integers(1, 3)),
        "sw": draw(st.integers(1, 3)),
        "ph0": draw(st.integers(0, 2)),
        "pw0": draw(st.integers(0, 2)),
        "ph1": draw(st.integers(0, 2)),
        "pw1": draw(st.integers(0, 2)),
        "dh": draw(st.integers(1, 2)),
        "dw": draw(st.integers(1, 2)),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


WIN = ("kh", "kw", "sh", "sw", "ph0", "pw0", "ph1", "pw1", "dh", "dw")


def geometry(w: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, int]]:
    ho = reference.out_size(w["H"], w["kh"], w["sh"], w["ph0"], w["ph1"], w["dh"])
    wo = reference.out_size(w["W"], w["kw"], w["sw"], w["pw0"], w["pw1"], w["dw"])
    cols = (w["N"] * ho * wo, w["C"] * w["kh"] * w["kw"])
    return (w["N"], w["C"], w["H"], w["W"]), cols


def run_im2col(mod: ModuleType, x: Array, w: dict[str, Any], n_threads: int = 1) -> Array:
    out = np.full(geometry(w)[1], np.nan, F32)  # NaN: every entry must be written
    mod.im2col(x, *(w[k] for k in WIN), out, n_threads)
    return out


def run_col2im(mod: ModuleType, cols: Array, w: dict[str, Any], n_threads: int = 1) -> Array:
    out = np.full(geometry(w)[0], np.nan, F32)
    mod.col2im(cols, w["N"], w["C"], w["H"], w["W"], *(w[k] for k in WIN), out, n_threads)
    return out


def test_out_size_matches_the_formula() -> None:
    assert reference.out_size(7, 3, 2, 1, 1, 1) == (7 + 2 - 2 - 1) // 2 + 1
    assert reference.out_size(5, 3, 1, 0, 0, 2) == 1
    assert reference.out_size(1, 3, 1, 0, 0, 1) == 0  # kernel larger than the input: no windows


@given(w=windows())
def test_im2col_matches_reference(w: dict[str, Any]) -> None:
    x_shape, _ = geometry(w)
    x = np.random.default_rng(w["seed"]).standard_normal(x_shape).astype(F32)
    want = run_im2col(reference, x, w)
    got = run_im2col(_kernels, x, w)
    assert not np.isnan(want).any()
    np.testing.assert_array_equal(bits_of(got), bits_of(want))  # a pure copy: exact
    np.testing.assert_array_equal(bits_of(run_im2col(_kernels, x, w, 2)), bits_of(got))


@given(w=windows())
def test_col2im_matches_reference(w: dict[str, Any]) -> None:
    _, cols_shape = geometry(w)
    cols = np.random.default_rng(w["seed"]).standard_normal(cols_shape).astype(F32)
    want = run_col2im(reference, cols, w)
    got = run_col2im(_kernels, cols, w)
    # each x position sums at most kh*kw terms, in a different order in the two twins
    mag = run_col2im(reference, np.abs(cols), w).astype(np.float64)
    tol = 2 * (w["kh"] * w["kw"] + 1) * U * mag
    assert not np.isnan(got).any()
    assert np.all(np.abs(got.astype(np.float64) - want) <= tol)
    again = run_col2im(_kernels, cols, w)
    np.testing.assert_array_equal(bits_of(again), bits_of(got))
    np.testing.assert_array_equal(bits_of(run_col2im(_kernels, cols, w, 2)), bits_of(got))


@pytest.mark.parametrize("mod", MODULES)
@given(w=windows())
def test_col2im_is_the_adjoint_of_im2col(mod: ModuleType, w: dict[str, Any]) -> None:
    # dot-product test: <im2col(x), y> == <x, col2im(y)>
    x_shape, cols_shape = geometry(w)
    rng = np.random.default_rng(w["seed"])
    x = rng.standard_normal(x_shape).astype(F32)
    y = rng.standard_normal(cols_shape).astype(F32)
    ax = run_im2col(mod, x, w).astype(np.float64)
    aty = run_col2im(mod, y, w).astype(np.float64)
    lhs = float(np.sum(ax * y))
    rhs = float(np.sum(x * aty))
    scale = float(np.sum(np.abs(ax) * np.abs(y)))
    assert abs(lhs - rhs) <= 1e-5 * scale + 1e-30


# --------------------------------------------------------------------------- quantize


@given(
    bits=st.integers(1, 16),
    signed=st.booleans(),
    x_range=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 300),
)
def test_quantize_matches_reference_bit_for_bit(
    bits: int, signed: bool, x_range: float, seed: int, n: int
) -> None:
    if signed and bits == 1:
        bits = 2
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * x_range).astype(F32)
    got, want = x.copy(), x.copy()
    _kernels.quantize(got, bits, x_range, signed, 2)
    reference.quantize(want, bits, x_range, signed)
    np.testing.assert_array_equal(bits_of(got), bits_of(want))
    again = x.copy()
    _kernels.quantize(again, bits, x_range, signed, 1)
    np.testing.assert_array_equal(bits_of(again), bits_of(got))


@pytest.mark.parametrize("mod", MODULES)
@given(
    bits=st.integers(2, 16),
    signed=st.booleans(),
    x_range=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**32 - 1),
)
def test_quantize_is_monotone_bounded_idempotent(
    mod: ModuleType, bits: int, signed: bool, x_range: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.standard_normal(200) * 2 * x_range, [-np.inf, -1e30, 0, 1e30, np.inf]])
    x = np.sort(x.astype(F32))
    q = x.copy()
    mod.quantize(q, bits, x_range, signed)
    r = F32(x_range)
    assert np.all(np.diff(q) >= 0)
    assert q.max() <= r
    assert q.min() >= (-r if signed else 0)
    assert q[-1] == r and q[0] == (-r if signed else 0)  # saturates at the full scale
    levels = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    assert len(np.unique(q)) <= (2 * levels + 1 if signed else levels + 1)
    qq = q.copy()
    mod.quantize(qq, bits, x_range, signed)
    np.testing.assert_array_equal(qq, q)


@pytest.mark.parametrize("mod", MODULES)
def test_quantize_rounds_half_to_even(mod: ModuleType) -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.49, 7.6, -9.0], F32)
    mod.quantize(x, 4, 7.0, True)  # L = 7, step = 1
    np.testing.assert_array_equal(x, [0, 2, 2, 0, -2, -2, 3, 7, -7])
    y = np.array([0.5, 1.5, -3.0, 20.0], F32)
    mod.quantize(y, 3, 7.0, False)  # L = 7, step = 1, unsigned
    np.testing.assert_array_equal(y, [0, 2, 0, 7])


@pytest.mark.parametrize("mod", MODULES)
def test_quantize_zero_bits_is_a_noop(mod: ModuleType) -> None:
    x = np.array([0.3, -7.1], F32)
    mod.quantize(x, 0, 0.0, True)  # x_range is not looked at when off
    np.testing.assert_array_equal(x, np.array([0.3, -7.1], F32))
    mod.quantize(empty(1), 8, 1.0, True)


# --------------------------------------------------------------------------- tiled MVM


@contextlib.contextmanager
def sgemm_budget(mnk: int) -> Iterator[None]:
    """Run the compiled kernels with another per-call sgemm budget (tile size) for a while."""
    old = _kernels._set_sgemm_max_mnk(mnk)
    try:
        yield
    finally:
        _kernels._set_sgemm_max_mnk(old)


@st.composite
def mvm_cases(draw: st.DrawFn) -> dict[str, Any]:
    """Shapes for the forward view: ``x[B, K]``, ``gk[S, K, N]``, blocks along ``K``."""
    return {
        "B": draw(st.sampled_from([0, 1, 1, 2, 3, 5, 9, 17, 40])),
        "K": draw(st.integers(0, 40)),
        "N": draw(st.sampled_from([0, 1, 1, 2, 3, 6, 11, 37])),
        "S": draw(st.integers(0, 3)),
        "block": draw(st.one_of(st.integers(1, 12), st.integers(13, 64))),
        "adc_bits": draw(st.sampled_from([0, 0, 2, 3, 4, 6, 8])),
        "noisy": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32 - 1)),
        # work-tile area (batch rows x output columns) of the non-ideal path: the default, or
        # small ones that cut even these small problems into tiles with ragged edges
        "tile_area": draw(st.sampled_from([0, 0, 1, 80, 112, 300, 1000])),
    }


def make_mvm(c: dict[str, Any]) -> dict[str, Any]:
    """Arrays for a case, in the forward view (``backward`` transposes ``gk``)."""
    rng = np.random.default_rng(c["seed"])
    b, k, n, s, block = c["B"], c["K"], c["N"], c["S"], c["block"]
    nb = -(-k // block)
    x = rng.uniform(-1, 1, (b, k)).astype(F32)
    gk = rng.normal(0, 20, (s, k, n)).astype(F32)
    slice_w = (2.0 ** -(4 * np.arange(s)) * rng.uniform(0.5, 1.5, s)).astype(F32)
    # ADC full scale near the typical partial sum: some values clip, most are quantised
    typ = np.array(
        [
            [
                np.abs(x[:, i * block : (i + 1) * block] @ gk[j, i * block : (i + 1) * block]).max(
                    initial=0
                )
                for j in range(s)
            ]
            for i in range(nb)
        ]
    ).reshape(nb, s)
    adc_range = ((typ + 1.0) * rng.uniform(0.4, 1.2, (nb, s))).astype(F32)
    sigma = 0.05 if c["noisy"] else 0.0
    return {
        "x": x,
        "gk": gk,
        "slice_w": slice_w,
        "adc_range": adc_range if c["adc_bits"] else np.zeros((nb, s), F32),
        "sigma": sigma,
        "rms": rng.uniform(5, 30, (nb, s, n)).astype(F32) if sigma else empty(3),
        "noise": rng.standard_normal((nb, s, b, n)).astype(F32) if sigma else empty(4),
    }


def oracle(c: dict[str, Any], a: dict[str, Any]) -> tuple[Array, Array, Array]:
    """Exact (float64) output, a float32 error bound and the extra ADC-boundary allowance.

    The bound covers both kernels: products of length ``kb`` (``kb*u`` relative to the sum of
    absolute terms), the noise term and the accumulation over blocks and slices. An output
    entry gets one ADC step (times ``|slice_w|``) of allowance for each (block, slice) whose
    pre-ADC value lies within that bound of a rounding boundary, and nothing otherwise.
    """
    x = a["x"].astype(np.float64)
    gk = a["gk"].astype(np.float64)
    b, k = x.shape
    s, n = gk.shape[0], gk.shape[2]
    block, bits, sigma = c["block"], c["adc_bits"], a["sigma"]
    nb = -(-k // block)
    exact = np.zeros((b, n))
    mag = np.zeros((b, n))
    allow = np.zeros((b, n))
    for r in range(nb):
        rows = slice(r * block, min(k, (r + 1) * block))
        kb = rows.stop - rows.start
        xb = x[:, rows]
        xn = np.sqrt(np.sum(xb * xb, axis=1))
        for j in range(s):
            p = xb @ gk[j, rows]
            absp = np.abs(xb) @ np.abs(gk[j, rows])
            t = (
                sigma * xn[:, None] * a["rms"][r, j].astype(np.float64) * a["noise"][r, j]
                if sigma
                else np.zeros_like(p)
            )
            v = p + t
            err = 2 * ((kb + 4) * U * absp + (kb + 8) * U * np.abs(t) + U * np.abs(v))
            w = abs(float(a["slice_w"][j]))
            if bits:
                levels = 2.0 ** (bits - 1) - 1
                step = float(a["adc_range"][r, j]) / levels
                q = np.clip(np.rint(v / step), -levels, levels)
                near = np.abs(v - (np.floor(v / step) + 0.5) * step) <= err
                allow += np.where(near, w * step, 0.0)
                v = q * step
                mag += w * (np.abs(v) + step)
            else:
                mag += w * (absp + np.abs(t))
            exact += float(a["slice_w"][j]) * v
    tol = 2 * (2 * k + s + 8) * U * mag
    return exact, tol, allow


def run_mvm(
    mod: ModuleType, c: dict[str, Any], a: dict[str, Any], backward: bool, n_threads: int = 1
) -> Array:
    if mod is _kernels and c.get("tile_area"):
        kb = max(1, min(c["block"], c["K"]))
        with sgemm_budget(c["tile_area"] * kb):  # the kernel's area is SGEMM_MAX_MNK // kb
            return _run_mvm(mod, c, a, backward, n_threads)
    return _run_mvm(mod, c, a, backward, n_threads)


def _run_mvm(
    mod: ModuleType, c: dict[str, Any], a: dict[str, Any], backward: bool, n_threads: int
) -> Array:
    x, gk = a["x"], a["gk"]
    b, n = x.shape[0], gk.shape[2]
    out = np.full((b, n), np.nan, F32)  # must be overwritten
    work = np.full((b, n), np.nan, F32)  # scratch: must not be read before written
    args = (c["block"], c["adc_bits"], a["adc_range"], a["sigma"], a["rms"], a["noise"], work, out)
    if backward:
        g = np.ascontiguousarray(gk.transpose(0, 2, 1))  # [S, R=N, C=K]
        mod.mvm_backward(x, g, a["slice_w"], *args, n_threads)
    else:
        mod.mvm_forward(x, gk, a["slice_w"], *args, n_threads)
    return out


def check_mvm(c: dict[str, Any], backward: bool) -> tuple[Array, Array]:
    a = make_mvm(c)
    exact, tol, allow = oracle(c, a)
    got = run_mvm(_kernels, c, a, backward)
    want = run_mvm(reference, c, a, backward)
    for out in (got, want):
        assert np.all(np.abs(out - exact) <= tol + allow * (1 + 1e-6)), (out, exact)
    # identical inputs: bit-identical outputs, whatever the thread count
    np.testing.assert_array_equal(bits_of(run_mvm(_kernels, c, a, backward)), bits_of(got))
    np.testing.assert_array_equal(bits_of(run_mvm(_kernels, c, a, backward, 2)), bits_of(got))
    return got, want


@given(c=mvm_cases())
def test_mvm_forward_matches_reference(c: dict[str, Any]) -> None:
    check_mvm(c, backward=False)


@given(c=mvm_cases())
def test_mvm_backward_matches_reference(c: dict[str, Any]) -> None:
    check_mvm(c, backward=True)


ZERO_DIMS = [
    {"B": 0, "K": 5, "N": 3, "S": 2},
    {"B": 2, "K": 0, "N": 3, "S": 2},
    {"B": 2, "K": 5, "N": 0, "S": 2},
    {"B": 2, "K": 5, "N": 3, "S": 0},
    {"B": 0, "K": 0, "N": 0, "S": 0},
]


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("dims", ZERO_DIMS)
@pytest.mark.parametrize(("adc_bits", "noisy"), [(0, False), (4, True)])
def test_mvm_zero_size_dims(
    dims: dict[str, int], backward: bool, adc_bits: int, noisy: bool
) -> None:
    c = {**dims, "block": 2, "adc_bits": adc_bits, "noisy": noisy, "seed": 3}
    got, want = check_mvm(c, backward)
    np.testing.assert_array_equal(got, np.zeros_like(got))
    np.testing.assert_array_equal(want, np.zeros_like(want))


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize(("adc_bits", "noisy"), [(0, False), (0, True), (6, False), (6, True)])
@pytest.mark.parametrize(
    "dims",
    [
        {"B": 200, "K": 300, "N": 40, "S": 2, "block": 128},  # tiles: 96 rows x all 40 columns
        {"B": 40, "K": 300, "N": 200, "S": 1, "block": 128},  # tiles: 80 rows x 48 columns
    ],
)
def test_mvm_realistic_size(
    dims: dict[str, int], backward: bool, adc_bits: int, noisy: bool
) -> None:
    # large enough for the BLAS blocked paths and the default tiling of the non-ideal path;
    # with the ADC, only a few entries may differ between the twins, by rounding steps
    c = {**dims, "adc_bits": adc_bits, "noisy": noisy, "seed": 7}
    got, want = check_mvm(c, backward)
    if adc_bits:
        _, tol, _ = oracle(c, make_mvm(c))
        differ = np.abs(got.astype(np.float64) - want) > 2 * tol
        assert differ.mean() <= 0.01


@pytest.mark.parametrize("mod", MODULES)
@given(
    bits=st.integers(2, 8),
    block=st.integers(1, 20),
    s=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_mvm_adc_is_monotone_and_bounded(
    mod: ModuleType, bits: int, block: int, s: int, seed: int
) -> None:
    # x_b = t_b * v with t increasing, v >= 0, g >= 0 and slice_w > 0: every partial sum
    # increases with b, so the ADC'd output must not decrease; it is bounded by the ranges
    rng = np.random.default_rng(seed)
    b, k, n = 40, 30, 4
    t = np.linspace(-2, 2, b)
    x = (t[:, None] * rng.uniform(0, 1, k)[None, :]).astype(F32)
    g = rng.uniform(0, 20, (s, k, n)).astype(F32)
    slice_w = rng.uniform(0.1, 1, s).astype(F32)
    nb = -(-k // block)
    adc_range = rng.uniform(5, 200, (nb, s)).astype(F32)
    out = np.empty((b, n), F32)
    mod.mvm_forward(x, g, slice_w, block, bits, adc_range, 0.0, empty(3), empty(4),
                    np.empty((b, n), F32), out)  # fmt: skip
    assert np.all(np.diff(out, axis=0) >= 0)
    bound = float(np.sum(slice_w[None, :].astype(np.float64) * adc_range))
    assert np.abs(out).max() <= bound * (1 + 1e-6)


# --------------------------------------------------------------------------- rms


@given(
    s=st.integers(0, 3),
    r=st.integers(0, 30),
    c=st.integers(0, 12),
    block=st.integers(1, 40),
    pair=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_rms_matches_reference(s: int, r: int, c: int, block: int, pair: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    gp = rng.uniform(0, 100, (s, r, c)).astype(F32)
    gn = rng.uniform(0, 100, (s, r, c)).astype(F32) if pair else empty(3)
    for name, nb, last in (("rms_columns", -(-r // block), c), ("rms_rows", -(-c // block), r)):
        outs = []
        for mod, n_threads in ((reference, 1), (_kernels, 1), (_kernels, 2)):
            out = np.full((nb, s, last), np.nan, F32)
            getattr(mod, name)(gp, gn, block, out, n_threads)
            outs.append(out)
        want, got, got2 = outs
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)  # both sum in float64
        np.testing.assert_array_equal(bits_of(got2), bits_of(got))


@pytest.mark.parametrize("mod", MODULES)
def test_rms_values(mod: ModuleType) -> None:
    gp = np.array([[[3, 0], [4, 0], [1, 2]]], F32)  # S=1, R=3, C=2
    gn = np.array([[[4, 0], [3, 0], [1, 2]]], F32)
    out = np.empty((2, 1, 2), F32)
    mod.rms_columns(gp, gn, 2, out)  # blocks: rows {0, 1}, {2}
    np.testing.assert_allclose(out[:, 0], [[5, 0], [np.sqrt(2), np.sqrt(8)]], rtol=1e-6)
    out_t = np.empty((1, 1, 3), F32)
    mod.rms_rows(gp, empty(3), 2, out_t)  # one column block
    np.testing.assert_allclose(out_t[0, 0], [np.sqrt(4.5), np.sqrt(8), np.sqrt(2.5)], rtol=1e-6)


CONV_IDEAL_CASES = {
    "w": windows(),
    "m": st.integers(0, 5),
    "s": st.integers(1, 3),
    "with_bias": st.booleans(),
    "mnk": st.sampled_from([1, 7, 40, 300, 524287]),
}
"""Geometry, output channels, slices, bias, and the per-call sgemm budget (small values split
the work items by output rows and by channels)."""


@given(**CONV_IDEAL_CASES)
def test_conv_ideal_matches_reference(
    w: dict[str, Any], m: int, s: int, with_bias: bool, mnk: int
) -> None:
    """Small ``SGEMM_MAX_MNK`` values split the work items by output rows and by channels."""
    with sgemm_budget(mnk):
        _check_conv_ideal(w, m, s, with_bias)


@given(**CONV_IDEAL_CASES)
def test_conv_ideal_pointwise_matches_reference(
    w: dict[str, Any], m: int, s: int, with_bias: bool, mnk: int
) -> None:
    """1x1, stride 1, no padding: the kernel's path without im2col."""
    w = {**w, "kh": 1, "kw": 1, "sh": 1, "sw": 1, "ph0": 0, "pw0": 0, "ph1": 0, "pw1": 0}
    with sgemm_budget(mnk):
        _check_conv_ideal(w, m, s, with_bias)


def _check_conv_ideal(w: dict[str, Any], m: int, s: int, with_bias: bool) -> None:
    x_shape, (_, k) = geometry(w)
    n = w["N"]
    hw = geometry({**w, "N": 1})[1][0]  # output positions per image
    rng = np.random.default_rng(w["seed"])
    x = rng.standard_normal(x_shape).astype(F32)
    g = rng.standard_normal((s, k, m)).astype(F32)
    slice_w = rng.uniform(0.1, 2.0, s).astype(F32)
    bias = rng.standard_normal(m).astype(F32) if with_bias else empty(1)
    outs = {}
    for mod, threads in ((_kernels, 1), (reference, 1), (_kernels, 2)):
        out = np.full((n, m, hw), np.nan, F32)
        mod.conv_ideal(
            x,
            g,
            slice_w,
            *(w[q] for q in WIN),
            bias,
            np.empty((threads, hw, k), F32),
            np.empty((threads, hw, m), F32),
            out,
            threads,
        )
        outs[mod.__name__, threads] = out
    np.testing.assert_array_equal(
        bits_of(outs[_kernels.__name__, 2]), bits_of(outs[_kernels.__name__, 1])
    )
    # the fused epilogue (residual add, then ReLU) equals the same ops after the conv
    res = rng.standard_normal((n, m, hw)).astype(F32)
    for mod in (_kernels, reference):
        for relu, r in ((True, None), (False, res), (True, res)):
            fused = np.full((n, m, hw), np.nan, F32)
            scratch = (np.empty((1, hw, k), F32), np.empty((1, hw, m), F32))
            mod.conv_ideal(x, g, slice_w, *(w[q] for q in WIN), bias, *scratch, fused, 1, relu, r)
            want_epi = outs[mod.__name__, 1] + (0 if r is None else r)
            if relu:
                want_epi = np.maximum(want_epi, 0)
            np.testing.assert_array_equal(bits_of(fused), bits_of(want_epi))
    outs = {name: o for (name, t), o in outs.items() if t == 1}
    got, want = outs[_kernels.__name__], outs[reference.__name__]
    assert not np.isnan(got).any()
    # exact oracle in float64 and the float32 summation bound (k terms per slice, s slices)
    cols = run_im2col(reference, x, w).astype(np.float64)
    terms = np.abs(cols) @ np.abs(g.astype(np.float64)).sum(axis=0) * slice_w.max()
    exact = sum(slice_w[i] * (cols @ g[i].astype(np.float64)) for i in range(s))
    exact = exact + (bias.astype(np.float64) if with_bias else 0.0)
    exact = np.asarray(exact).reshape(n, hw, m).transpose(0, 2, 1)
    bound = 2 * (k + s + 2) * U * (terms.reshape(n, hw, m).transpose(0, 2, 1) + np.abs(exact))
    assert np.all(np.abs(got - exact) <= bound + 1e-30)
    assert np.all(np.abs(want - exact) <= bound + 1e-30)
    # and it is the ideal mvm_forward on im2col's rows, plus the bias, in NCHW
    if n and m and hw:
        flat = np.empty((n * hw, m), F32)
        _kernels.mvm_forward(
            run_im2col(_kernels, x, w),
            g,
            slice_w,
            max(1, k),
            0,
            empty(2),
            0.0,
            empty(3),
            empty(4),
            np.empty_like(flat),
            flat,
        )
        via_mvm = flat.reshape(n, hw, m).transpose(0, 2, 1) + (bias[:, None] if with_bias else 0)
        assert np.all(np.abs(got - via_mvm) <= 2 * bound + 1e-30)


# --------------------------------------------------------------------------- argument checks


def good_args() -> dict[str, dict[str, Any]]:
    """Valid arguments for every kernel (ADC and noise on, so every array is checked)."""
    b, r, c, s = 3, 5, 4, 2
    f = np.ones
    return {
        "mvm_forward": {
            "x": f((b, r), F32), "g": f((s, r, c), F32), "slice_w": f(s, F32), "row_block": 2,
            "adc_bits": 4, "adc_range": f((3, s), F32), "read_sigma": 0.1,
            "g_rms": f((3, s, c), F32), "noise": f((3, s, b, c), F32),
            "work": f((b, c), F32), "out": f((b, c), F32),
        },
        "mvm_backward": {
            "dy": f((b, c), F32), "g": f((s, r, c), F32), "slice_w": f(s, F32), "col_block": 3,
            "adc_bits": 4, "adc_range": f((2, s), F32), "read_sigma": 0.1,
            "g_rms_t": f((2, s, r), F32), "noise": f((2, s, b, r), F32),
            "work": f((b, r), F32), "out": f((b, r), F32),
        },
        "im2col": {
            "x": f((2, 3, 5, 5), F32), "kh": 3, "kw": 3, "sh": 1, "sw": 1, "ph0": 1, "pw0": 1,
            "ph1": 1, "pw1": 1, "dh": 1, "dw": 1, "out": f((50, 27), F32),
        },
        "col2im": {
            "cols": f((50, 27), F32), "N": 2, "C": 3, "H": 5, "W": 5, "kh": 3, "kw": 3,
            "sh": 1, "sw": 1, "ph0": 1, "pw0": 1, "ph1": 1, "pw1": 1, "dh": 1, "dw": 1,
            "out": f((2, 3, 5, 5), F32),
        },
        "conv_ideal": {
            "x": f((2, 3, 5, 5), F32), "g": f((s, 27, c), F32), "slice_w": f(s, F32), "kh": 3,
            "kw": 3, "sh": 1, "sw": 1, "ph0": 1, "pw0": 1, "ph1": 1, "pw1": 1, "dh": 1, "dw": 1,
            "bias": f(c, F32), "cols": f((1, 25, 27), F32), "work": f((1, 25, c), F32),
            "out": f((2, c, 25), F32), "n_threads": 1, "relu": True,
            "residual": f((2, c, 25), F32),
        },
        "quantize": {"x": f(6, F32), "bits": 4, "x_range": 1.0, "signed": True},
        "rms_columns": {"gp": f((s, r, c), F32), "gn": f((s, r, c), F32), "row_block": 2,
                        "out": f((3, s, c), F32)},
        "rms_rows": {"gp": f((s, r, c), F32), "gn": f((s, r, c), F32), "col_block": 3,
                     "out": f((2, s, r), F32)},
    }  # fmt: skip


OUTPUTS = {"work", "out"}
# arrays whose shape is checked against the others, and the axis to break
SHAPE_AXIS = {
    "mvm_forward": {"g": 1, "slice_w": 0, "adc_range": 0, "g_rms": 0, "noise": 2, "work": 1,
                    "out": 0},
    "mvm_backward": {"g": 2, "slice_w": 0, "adc_range": 1, "g_rms_t": 2, "noise": 3, "work": 0,
                     "out": 1},
    "im2col": {"out": 1},
    "conv_ideal": {"g": 1, "slice_w": 0, "bias": 0, "cols": 2, "work": 1, "out": 2,
                   "residual": 1},
    "col2im": {"cols": 0, "out": 3},
    "rms_columns": {"gn": 1, "out": 0},
    "rms_rows": {"gn": 2, "out": 2},
}  # fmt: skip


def readonly(a: Array) -> Array:
    a = a.copy()
    a.flags.writeable = False
    return a


def noncontig(a: Array) -> Array:
    return np.repeat(a, 2, axis=-1)[..., ::2]


def bad_array_cases() -> list[Any]:
    cases = []
    for fn, args in good_args().items():
        for name, a in args.items():
            if not isinstance(a, np.ndarray):
                continue
            variants: dict[str, Callable[[Array], Any]] = {
                "float64": lambda a: a.astype(np.float64),
                "big-endian": lambda a: a.astype(">f4"),
                "non-contiguous": noncontig,
                "rank": lambda a: a[..., None],
                "none": lambda a: None,
                "list": lambda a: a.tolist(),
            }
            if fn == "quantize" or name in OUTPUTS or (fn, name) == ("conv_ideal", "cols"):
                variants["read-only"] = readonly
            if (fn, name) == ("conv_ideal", "residual"):
                del variants["none"]  # None means no residual
            if name in SHAPE_AXIS.get(fn, {}):
                axis = SHAPE_AXIS[fn][name]

                def grow(a: Array, axis: int = axis) -> Array:
                    shape = list(a.shape)
                    shape[axis] += 1
                    return np.ones(shape, F32)

                variants["shape"] = grow
            cases += [pytest.param(fn, name, v, id=f"{fn}-{name}-{k}") for k, v in variants.items()]
    return cases


@pytest.mark.parametrize("mod", MODULES)
@pytest.mark.parametrize(("fn", "name", "variant"), bad_array_cases())
def test_bad_arrays_raise_naming_the_array(
    mod: ModuleType, fn: str, name: str, variant: Callable[[Array], Any]
) -> None:
    args = good_args()[fn]
    getattr(mod, fn)(**args)  # the unmodified arguments are fine
    args[name] = variant(args[name])
    with pytest.raises(ValueError, match=rf"^{fn}: {name} "):
        getattr(mod, fn)(**args)


BAD_SCALARS = [
    ("mvm_forward", {"row_block": 0}, "row_block"),
    ("mvm_forward", {"n_threads": 0}, "n_threads"),
    ("mvm_forward", {"adc_bits": 1}, "adc_bits"),
    ("mvm_forward", {"adc_bits": -1}, "adc_bits"),
    ("mvm_forward", {"adc_bits": 33}, "adc_bits"),
    ("mvm_forward", {"read_sigma": -0.1}, "read_sigma"),
    ("mvm_forward", {"read_sigma": float("nan")}, "read_sigma"),
    ("mvm_forward", {"adc_range": np.array([[1, 1], [1, 0], [1, 1]], F32)}, "adc_range"),
    ("mvm_forward", {"adc_range": np.array([[1, 1], [1, np.nan], [1, 1]], F32)}, "adc_range"),
    ("mvm_backward", {"col_block": -2}, "col_block"),
    ("mvm_backward", {"adc_range": np.full((2, 2), np.inf, F32)}, "adc_range"),
    ("im2col", {"kh": 0}, "kh"),
    ("im2col", {"sw": 0}, "sw"),
    ("im2col", {"dh": 0}, "dh"),
    ("im2col", {"pw1": -1}, "pw1"),
    ("conv_ideal", {"sh": 0}, "sh"),
    ("conv_ideal", {"ph1": -1}, "ph1"),
    ("conv_ideal", {"n_threads": 0}, "n_threads"),
    ("col2im", {"N": -1}, "N"),
    ("col2im", {"dw": 0}, "dw"),
    ("quantize", {"x_range": 0.0}, "x_range"),
    ("quantize", {"x_range": -1.0}, "x_range"),
    ("quantize", {"x_range": float("inf")}, "x_range"),
    ("quantize", {"x_range": 1e-50}, "x_range"),  # 0 in float32
    ("quantize", {"bits": -1}, "bits"),
    ("quantize", {"bits": 1}, "bits"),  # signed needs a sign bit and one magnitude bit
    ("quantize", {"bits": 33, "signed": False}, "bits"),
    ("rms_columns", {"row_block": 0}, "row_block"),
    ("rms_rows", {"col_block": 0}, "col_block"),
]


@pytest.mark.parametrize("mod", MODULES)
@pytest.mark.parametrize(("fn", "change", "name"), BAD_SCALARS)
def test_bad_scalars_raise(mod: ModuleType, fn: str, change: dict[str, Any], name: str) -> None:
    args = {**good_args()[fn], **change}
    with pytest.raises(ValueError, match=rf"^{fn}: {name}"):
        getattr(mod, fn)(**args)


@pytest.mark.parametrize("mod", MODULES)
def test_unused_optional_arrays_may_be_empty(mod: ModuleType) -> None:
    args = good_args()["mvm_forward"]
    args.update(adc_bits=0, adc_range=empty(2), read_sigma=0.0, g_rms=empty(3), noise=empty(4))
    mod.mvm_forward(**args)
    np.testing.assert_allclose(args["out"], 5 * 2)  # R * sum(slice_w), all ones


@pytest.mark.parametrize("mod", MODULES)
def test_overlapping_buffers_raise(mod: ModuleType) -> None:
    args = good_args()["mvm_forward"]
    args["work"] = args["out"]
    with pytest.raises(ValueError, match="out and work overlap"):
        mod.mvm_forward(**args)
    buf = np.zeros(2 * 3 * 5 * 5 + 50 * 27, F32)
    args = good_args()["im2col"]
    args["x"] = buf[: 2 * 3 * 5 * 5].reshape(2, 3, 5, 5)
    args["out"] = buf[2 * 3 * 5 * 5 - 1 : -1].reshape(50, 27)  # one element shared
    with pytest.raises(ValueError, match="out and x overlap"):
        mod.im2col(**args)
    args["out"] = buf[2 * 3 * 5 * 5 :].reshape(50, 27)  # adjacent, not overlapping: fine
    mod.im2col(**args)


def test_readonly_inputs_are_accepted() -> None:
    # mapped.bin arrays are read-only mmap views: IN arrays must accept them
    args = good_args()["mvm_forward"]
    want = np.empty_like(args["out"])
    reference.mvm_forward(**{**args, "out": want})
    for name in ("x", "g", "slice_w", "adc_range", "g_rms", "noise"):
        args[name] = readonly(args[name])
    _kernels.mvm_forward(**args)
    np.testing.assert_allclose(args["out"], want, rtol=1e-5)
