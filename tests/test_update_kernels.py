"""The training update kernels (``_update.pyx``) against their NumPy twins (``update_reference``).

* Equality: hypothesis draws sizes, rules, optimisers, bounds, signing, noise, thresholds, seeds
  and column blocks; both implementations get identical copies of the inputs. The generator is
  counter based, so the same draws give the same decisions: optimiser state, ``chi``, per-block
  counters and per-device write counts must be equal exactly, conductances equal exactly
  without write noise and within float rounding of ``log``/``cos`` (libm vs NumPy) with it.
* Threads: the compiled kernel gives bit-identical results for ``n_threads`` 1 and 2.
* Statistics (compiled kernel, many weights and streams): EaPU's applied change is unbiased
  (``E[d'] = d`` for ``|d| < c``, with and without write noise), its write probability is
  ``t/c``, and ``|d| >= c`` is written as asked.
* The mixed rule accumulates and writes ``floor(|chi|/eps)`` device steps.
* Bad shapes raise ``ValueError`` naming the array; wear counts exactly the writes.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xbarc.runtime.train import _update, update_reference

MODULES = [pytest.param(_update, id="cython"), pytest.param(update_reference, id="numpy")]
Array = np.ndarray[Any, Any]
GMIN, GMAX = 1.0, 81.0
STATE = ("m", "v", "chi", "gp", "gn", "wp", "wn", "counts")


def test_compiled_module_is_the_one_running() -> None:
    assert _update.COMPILED is True
    assert update_reference.COMPILED is False


# --------------------------------------------------------------------------- cases


def make_case(
    *,
    rows: int,
    cols: int,
    col_block: int,
    rule: int,
    optimizer: int,
    pair: bool,
    bounded: bool,
    sigma: float,
    c: float,
    lr: float,
    k: float,
    step: int,
    seed: int,
    stream: int,
    data_seed: int,
) -> dict[str, Any]:
    """Inputs of one ``optimizer_rule_update`` call (arrays are fresh, owned by the case)."""
    rng = np.random.default_rng(data_seed)
    n = rows * cols
    scale = rng.choice([0.0, 1e-3, 1.0, 30.0], n)  # exact zeros, tiny, normal and big updates
    grad = (rng.standard_normal(n) * scale).astype(np.float32)
    m = (rng.standard_normal(n) * 0.1 * (optimizer == 0 or rng.random() < 0.5)).astype(np.float32)
    v = (rng.random(n) * 0.01).astype(np.float32) if optimizer == 1 else np.zeros(0, np.float32)
    chi = (
        (rng.uniform(-1.5, 1.5, n) * c).astype(np.float32) if rule == 3 else np.zeros(0, np.float32)
    )
    gp = rng.uniform(GMIN, GMAX, n).astype(np.float32)
    gn = rng.uniform(GMIN, GMAX, n).astype(np.float32) if pair else np.zeros(0, np.float32)
    # some devices at the bounds, to exercise the clipping and the device choice
    gp[rng.random(n) < 0.1] = GMIN
    if pair:
        gn[rng.random(n) < 0.1] = GMIN
    wp = rng.integers(0, 1000, n).astype(np.int32)
    wn = rng.integers(0, 1000, n).astype(np.int32) if pair else np.zeros(0, np.int32)
    ncb = -(-cols // col_block) if cols else 0
    counts = rng.integers(0, 5, (rows, ncb, 5)).astype(np.int64)
    b1, b2 = 0.9, 0.999
    return {
        "rule": rule,
        "optimizer": optimizer,
        "grad": grad,
        "m": m,
        "v": v,
        "chi": chi,
        "gp": gp,
        "gn": gn,
        "wp": wp,
        "wn": wn,
        "counts": counts,
        "rows": rows,
        "cols": cols,
        "col_block": col_block,
        "lr": lr,
        "beta1": b1,
        "beta2": b2,
        "eps": 1e-8,
        "momentum": 0.9,
        "bias1": 1 - b1**step,
        "bias2": 1 - b2**step,
        "k": k,
        "c": c,
        "sigma": sigma,
        "mixed_eps": c,
        "gmin": GMIN,
        "gmax": GMAX,
        "bounded": bounded,
        "seed": seed,
        "stream": stream,
    }


def copy_case(case: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in case.items()}


def run(
    mod: ModuleType, case: dict[str, Any], n_threads: int = 1, *, gdiff: bool = False
) -> dict[str, Any]:
    """Run the kernel on a copy of the case; returns the updated copy.

    With ``gdiff`` the kernel also maintains ``G+ - G-`` (returned as ``a["gdiff"]``).
    """
    a = {k: v for k, v in copy_case(case).items() if k != "gdiff"}
    work = np.empty(max(1, n_threads * a["cols"]), np.float32)
    gd = np.zeros(0, np.float32)
    if gdiff:
        gd = a["gp"] - a["gn"] if a["gn"].size else a["gp"].copy()
    mod.optimizer_rule_update(**a, work=work, gdiff=gd, n_threads=n_threads)
    a["gdiff"] = gd
    return a


@st.composite
def rule_cases(draw: st.DrawFn) -> dict[str, Any]:
    return make_case(
        rows=draw(st.integers(0, 9)),
        cols=draw(st.integers(0, 40)),
        col_block=draw(st.integers(1, 12)),
        rule=draw(st.integers(0, 3)),
        optimizer=draw(st.integers(0, 1)),
        pair=draw(st.booleans()),
        bounded=draw(st.booleans()),
        sigma=draw(st.sampled_from([0.0, 0.3, 2.0])),
        c=draw(st.sampled_from([0.05, 0.5, 2.0])),
        lr=draw(st.sampled_from([1e-4, 1e-3, 1e-2, 0.1])),
        k=draw(st.sampled_from([0.0125, 0.05, 1.0])),
        step=draw(st.integers(1, 300)),
        seed=draw(st.integers(0, 2**64 - 1)),
        stream=draw(st.integers(0, 2**48)),
        data_seed=draw(st.integers(0, 2**32 - 1)),
    )


def assert_same(got: dict[str, Any], want: dict[str, Any], *, exact_g: bool) -> None:
    for name in ("m", "v", "chi", "wp", "wn", "counts"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    for name in ("gp", "gn"):
        if exact_g:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        else:  # the write noise's log/cos differ in the last bits between libm and NumPy
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-4, err_msg=name)


@given(case=rule_cases())
def test_rule_kernel_equals_twin(case: dict[str, Any]) -> None:
    got = run(_update, case)
    want = run(update_reference, case)
    assert_same(got, want, exact_g=case["sigma"] == 0)
    # the decisions behind them: which weights changed, on which device
    for name in ("gp", "gn"):
        np.testing.assert_array_equal(got[name] != case[name], want[name] != case[name])


@given(case=rule_cases())
def test_gdiff_is_maintained_for_the_written_weights(case: dict[str, Any]) -> None:
    """The optional ``gdiff`` equals ``G+ - G-`` (as NumPy's float32 subtraction gives it)."""
    for mod in (_update, update_reference):
        got = run(mod, case, gdiff=True)
        want = got["gp"] - got["gn"] if got["gn"].size else got["gp"]
        np.testing.assert_array_equal(got["gdiff"], want)
        plain = run(mod, case)
        for name in STATE:
            np.testing.assert_array_equal(got[name], plain[name], err_msg=name)


@given(case=rule_cases())
def test_rule_kernel_thread_count_does_not_matter(case: dict[str, Any]) -> None:
    one = run(_update, case, n_threads=1)
    two = run(_update, case, n_threads=2)
    for name in STATE:
        np.testing.assert_array_equal(one[name], two[name], err_msg=name)


@given(case=rule_cases())
def test_wear_counts_exactly_the_writes(case: dict[str, Any]) -> None:
    for mod in (_update, update_reference):
        got = run(mod, case)
        dwear = (got["wp"] - case["wp"]).astype(np.int64)
        if case["gn"].size:
            dwear = dwear + (got["wn"] - case["wn"])
        dcount = got["counts"] - case["counts"]
        rule = case["rule"]
        req, app, skip, pulses = (dcount[..., f].sum() for f in range(4))
        assert req == app + skip
        assert dwear.sum() == pulses
        assert (dwear >= 0).all()
        if rule == 0:  # float: an ideal update, no device write
            assert pulses == 0 and skip == 0
        elif rule in (1, 2):  # one pulse per applied write
            assert pulses == app
            assert set(np.unique(dwear).tolist()) <= {0, 1}
        else:  # mixed: n pulses per write event
            assert pulses >= app
        if rule == 1:
            assert skip == 0
        draws = dcount[..., 4]
        if rule in (0, 1, 3):  # no rule randomness (write noise is device physics)
            assert (draws == 0).all()
        else:  # EaPU: one accept draw per candidate, 2k ≤ 48 per run of 64 weights
            assert (draws <= case["col_block"] + 48 * -(-case["col_block"] // 64)).all()
        # per (row, column block): applied writes where the wear changed
        if case["rows"] and case["cols"]:
            cb, cols = case["col_block"], case["cols"]
            written = (dwear > 0).reshape(case["rows"], cols)
            ncb = -(-cols // cb)
            pad = np.zeros((case["rows"], ncb * cb), np.int64)
            pad[:, :cols] = written
            per_block = pad.reshape(case["rows"], ncb, cb).sum(axis=2)
            if rule != 0:
                np.testing.assert_array_equal(dcount[..., 1], per_block)


# --------------------------------------------------------------------------- pulse kernel


@st.composite
def pulse_cases(draw: st.DrawFn) -> dict[str, Any]:
    rows, cols = draw(st.integers(0, 8)), draw(st.integers(0, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pair = draw(st.booleans())
    n = rows * cols
    lam_scale = rng.choice([0.0, 0.05, 1.0, 5.0, 45.0], (rows, cols))  # incl. the normal branch
    col_block = draw(st.integers(1, 10))
    ncb = -(-cols // col_block) if cols else 0
    return {
        "lam_up": (rng.random((rows, cols)) * lam_scale).astype(np.float32),
        "lam_down": (rng.random((rows, cols)) * lam_scale[::-1, ::-1]).astype(np.float32),
        "gp": rng.uniform(GMIN, GMAX, n).astype(np.float32),
        "gn": rng.uniform(GMIN, GMAX, n).astype(np.float32) if pair else np.zeros(0, np.float32),
        "wp": rng.integers(0, 100, n).astype(np.int32),
        "wn": rng.integers(0, 100, n).astype(np.int32) if pair else np.zeros(0, np.int32),
        "counts": np.zeros((rows, ncb, 5), np.int64),
        "col_block": col_block,
        "step": draw(st.sampled_from([0.1, 0.8])),
        "asymmetry": draw(st.sampled_from([0.0, 0.2])),
        "nonlinearity": draw(st.sampled_from([0.0, 0.5])),
        "noise_rel": draw(st.sampled_from([0.0, 0.3])),
        "gmin": GMIN,
        "gmax": GMAX,
        "seed": draw(st.integers(0, 2**64 - 1)),
        "stream": draw(st.integers(0, 2**48)),
    }


def run_pulse(mod: ModuleType, case: dict[str, Any], n_threads: int = 1) -> dict[str, Any]:
    a = copy_case(case)
    mod.pulse_update(**a, n_threads=n_threads)
    return a


@given(case=pulse_cases())
def test_pulse_kernel_equals_twin(case: dict[str, Any]) -> None:
    got = run_pulse(_update, case)
    want = run_pulse(update_reference, case)
    for name in ("wp", "wn", "counts"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    for name in ("gp", "gn"):
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-4, err_msg=name)
    two = run_pulse(_update, case, n_threads=2)
    for name in ("gp", "gn", "wp", "wn", "counts"):
        np.testing.assert_array_equal(got[name], two[name], err_msg=name)
    # every pulse is one write on the written device
    dwear = (got["wp"] - case["wp"]).sum() + (got["wn"] - case["wn"]).sum()
    assert dwear == got["counts"][..., 3].sum()
    req, app, skip = (got["counts"][..., f].sum() for f in range(3))
    assert req == app + skip
    assert req == int(((case["lam_up"] > 0) | (case["lam_down"] > 0)).sum())
    assert got["counts"][..., 4].sum() == 2 * req  # an up and a down train per weight


# --------------------------------------------------------------------------- EaPU statistics


def eapu_trials(d: float, *, sigma: float, c: float = 2.0, n: int = 40_000, streams: int = 6):
    """Applied change (µS) of ``n × streams`` weights that all ask for ``d`` µS (pairs at 40 µS).

    SGD with momentum 0, lr = k = 1, m = 0: the desired change is exactly ``-grad``.
    """
    rows, cols = n // 200, 200
    out, written, draws = [], [], 0
    for s in range(streams):
        case = make_case(
            rows=rows, cols=cols, col_block=64, rule=2, optimizer=0, pair=True, bounded=True,
            sigma=sigma, c=c, lr=1.0, k=1.0, step=1, seed=1234 + s, stream=s * 7919, data_seed=0,
        )  # fmt: skip
        case["grad"][:] = -d
        case["m"][:] = 0
        case["momentum"] = 0.0
        case["gp"][:] = 40.0
        case["gn"][:] = 40.0
        got = run(_update, case, n_threads=2)
        delta = (got["gp"].astype(np.float64) - 40.0) - (got["gn"].astype(np.float64) - 40.0)
        out.append(delta)
        written.append((got["wp"] - case["wp"]) + (got["wn"] - case["wn"]))
        counts = got["counts"] - case["counts"]
        assert counts[..., 0].sum() == rows * cols
        assert counts[..., 1].sum() == written[-1].sum()
        draws += int(counts[..., 4].sum())
    eapu_trials.draws = draws  # type: ignore[attr-defined]
    return np.concatenate(out), np.concatenate(written)


@pytest.mark.parametrize("sigma", [0.0, 2.0])
@pytest.mark.parametrize("d", [0.02, -0.3, 1.1, -1.9])
def test_eapu_is_unbiased_below_c(d: float, sigma: float) -> None:
    c = 2.0
    delta, written = eapu_trials(d, sigma=sigma, c=c)
    n = delta.size
    t = abs(d)
    p = t / c
    # write probability t/c (binomial standard error)
    frac = written.mean()
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n), (frac, p)
    # E[d'] = d: d' is 0 (skip) or sign(d)*c + N(0, sigma) (write)
    var = p * (c * c + sigma * sigma) - t * t
    assert abs(delta.mean() - d) < 5 * math.sqrt(var / n), (delta.mean(), d)
    # thinning: candidates at rate 2^-k (the power of two at or above p), one accept draw each,
    # plus 2k 32-bit draws per run of up to 64 weights (rows of 200 in blocks of 64: 4 runs),
    # instead of one uniform per weight
    k = -math.frexp(p)[1] if p < 1 else 0
    want_draws = 2**-k * n + 2 * k * n / 200 * 4
    assert abs(eapu_trials.draws - want_draws) < 0.05 * want_draws  # type: ignore[attr-defined]
    if sigma == 0:  # the written size is exactly c
        sizes = np.abs(delta[written == 1])
        np.testing.assert_allclose(sizes, c, atol=1e-5)
        assert (delta[written == 0] == 0).all()


@pytest.mark.parametrize("d", [2.0, -2.5, 7.3])
def test_eapu_writes_large_updates_as_asked(d: float) -> None:
    delta, written = eapu_trials(d, sigma=0.0, n=4000, streams=2)
    assert (written == 1).all()
    np.testing.assert_allclose(delta, d, atol=1e-5)
    noisy, written = eapu_trials(d, sigma=2.0, n=20_000, streams=2)
    assert (written == 1).all()
    assert abs(noisy.mean() - d) < 5 * 2.0 / math.sqrt(noisy.size)
    assert abs(noisy.std() - 2.0) < 0.05


def test_eapu_write_rate_matches_expectation_across_sizes() -> None:
    """A mix of sizes in one layer: total writes ≈ Σ min(1, t/c)."""
    rng = np.random.default_rng(5)
    rows, cols, c = 300, 256, 2.0
    t = rng.exponential(0.1, rows * cols)
    t[rng.random(t.size) < 0.01] = 3.0  # a few above c
    expected = np.minimum(1.0, t / c).sum()
    sd = math.sqrt((np.minimum(1.0, t / c) * (1 - np.minimum(1.0, t / c))).sum())
    total = 0
    for s in range(3):
        case = make_case(
            rows=rows, cols=cols, col_block=128, rule=2, optimizer=0, pair=True, bounded=True,
            sigma=2.0, c=c, lr=1.0, k=1.0, step=1, seed=s, stream=99, data_seed=1,
        )  # fmt: skip
        case["grad"][:] = (-t * rng.choice([-1, 1], t.size)).astype(np.float32)
        case["m"][:] = 0
        case["momentum"] = 0.0
        got = run(_update, case)
        total += int((got["counts"] - case["counts"])[..., 1].sum())
    assert abs(total / 3 - expected) < 5 * sd / math.sqrt(3), (total / 3, expected)


# --------------------------------------------------------------------------- mixed rule


@pytest.mark.parametrize("mod", MODULES)
def test_mixed_accumulates_and_writes_whole_steps(mod: ModuleType) -> None:
    eps = 0.5
    rows, cols = 1, 4
    case = make_case(
        rows=rows, cols=cols, col_block=4, rule=3, optimizer=0, pair=True, bounded=True,
        sigma=0.0, c=eps, lr=1.0, k=1.0, step=1, seed=0, stream=0, data_seed=0,
    )  # fmt: skip
    per_step = np.array([0.3, -0.2, 1.3, 0.05], np.float32)  # µS asked for every step
    case["chi"][:] = 0
    case["gp"][:] = 40.0
    case["gn"][:] = 40.0
    case["momentum"] = 0.0
    case["counts"][:] = 0
    wear0 = case["wp"] + case["wn"]
    chi_want = np.zeros(cols, np.float64)
    written_total = np.zeros(cols)
    steps_total = np.zeros(cols, np.int64)
    for step in range(7):
        case["grad"][:] = -per_step
        case["m"][:] = 0
        prev = case["gp"].astype(np.float64) - case["gn"]
        case = run(mod, case)
        now = case["gp"].astype(np.float64) - case["gn"]
        chi_want += per_step
        n = np.floor(np.abs(chi_want) / eps)
        w = np.sign(chi_want) * n * eps
        chi_want -= w
        steps_total += n.astype(np.int64)
        written_total += w
        np.testing.assert_allclose(now - prev, w, atol=1e-5, err_msg=f"step {step}")
        np.testing.assert_allclose(case["chi"], chi_want, atol=1e-5, err_msg=f"step {step}")
    # pulses and wear count the device steps, one write event per threshold crossing
    np.testing.assert_array_equal(case["wp"] + case["wn"] - wear0, steps_total)
    assert case["counts"][..., 3].sum() == steps_total.sum()
    assert case["counts"][..., 0].sum() == 7 * cols
    np.testing.assert_allclose(written_total + chi_want, 7 * per_step.astype(np.float64), atol=1e-4)


# --------------------------------------------------------------------------- optimisers


@pytest.mark.parametrize("mod", MODULES)
def test_float_rule_applies_the_optimiser_update_exactly(mod: ModuleType) -> None:
    """rule float with Adam: one weight's change equals Adam's step in float32 (the kernel's
    documented formula), and the optimiser state is Adam's."""
    case = make_case(
        rows=3, cols=5, col_block=2, rule=0, optimizer=1, pair=True, bounded=False,
        sigma=0.0, c=2.0, lr=1e-2, k=0.0125, step=3, seed=0, stream=0, data_seed=3,
    )  # fmt: skip
    got = run(mod, case)
    f = np.float32
    g, m, v = case["grad"], case["m"], case["v"]
    m1 = f(0.9) * m + f(1 - 0.9) * g
    v1 = f(0.999) * v + (f(1 - 0.999) * g) * g
    d = (m1 * f(-1e-2 / (case["bias1"] * 0.0125))) / (np.sqrt(v1 * f(1 / case["bias2"])) + f(1e-8))
    np.testing.assert_array_equal(got["m"], m1)
    np.testing.assert_array_equal(got["v"], v1)
    change = (got["gp"].astype(np.float64) - case["gp"]) - (
        got["gn"].astype(np.float64) - case["gn"]
    )
    np.testing.assert_allclose(change, d.astype(np.float64), rtol=1e-5, atol=2e-5)
    # and relative to a float64 Adam the float32 step is within float32 rounding
    m64 = 0.9 * m.astype(np.float64) + 0.1 * g
    v64 = 0.999 * v.astype(np.float64) + 0.001 * g.astype(np.float64) ** 2
    d64 = -1e-2 * (m64 / case["bias1"]) / (np.sqrt(v64 / case["bias2"]) + 1e-8) / 0.0125
    np.testing.assert_allclose(d, d64, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("mod", MODULES)
@pytest.mark.parametrize(
    "name", ["grad", "m", "v", "chi", "gp", "gn", "wp", "wn", "counts", "work", "gdiff"]
)
def test_bad_shapes_raise_naming_the_array(mod: ModuleType, name: str) -> None:
    case = make_case(
        rows=4, cols=6, col_block=4, rule=3, optimizer=1, pair=True, bounded=True,
        sigma=1.0, c=1.0, lr=1e-3, k=0.0125, step=1, seed=0, stream=0, data_seed=0,
    )  # fmt: skip
    work = np.empty(6, np.float32)
    if name == "work":
        work = np.empty(5, np.float32)
    elif name == "gdiff":
        pass
    elif name == "counts":
        case["counts"] = np.zeros((4, 1, 5), np.int64)  # 6 columns in blocks of 4 need 2
    else:
        case[name] = case[name][:-1]
    gdiff = np.zeros(0, np.float32)
    if name == "gdiff":
        gdiff = np.zeros(23, np.float32)
    with pytest.raises(ValueError, match=name):
        mod.optimizer_rule_update(**case, work=work, gdiff=gdiff, n_threads=1)


@pytest.mark.parametrize("mod", MODULES)
def test_bad_scalars_raise(mod: ModuleType) -> None:
    base = make_case(
        rows=2, cols=3, col_block=2, rule=2, optimizer=0, pair=False, bounded=True,
        sigma=1.0, c=1.0, lr=1e-3, k=0.0125, step=1, seed=0, stream=0, data_seed=0,
    )  # fmt: skip
    work = np.empty(3, np.float32)
    for change, pattern in (
        ({"rule": 7}, "rule"),
        ({"optimizer": 5}, "optimizer"),
        ({"k": 0.0}, "k"),
        ({"c": 0.0}, "c must be"),
        ({"col_block": 0}, "col_block"),
    ):
        with pytest.raises(ValueError, match=pattern):
            mod.optimizer_rule_update(
                **{**copy_case(base), **change}, work=work, gdiff=np.zeros(0, np.float32)
            )


@pytest.mark.parametrize("mod", MODULES)
def test_pulse_bad_shapes_raise(mod: ModuleType) -> None:
    lam = np.zeros((2, 3), np.float32)
    ok = {
        "lam_up": lam,
        "lam_down": lam,
        "gp": np.zeros(6, np.float32),
        "gn": np.zeros(6, np.float32),
        "wp": np.zeros(6, np.int32),
        "wn": np.zeros(6, np.int32),
        "counts": np.zeros((2, 2, 5), np.int64),
        "col_block": 2,
        "step": 0.8,
        "asymmetry": 0.0,
        "nonlinearity": 0.0,
        "noise_rel": 0.0,
        "gmin": GMIN,
        "gmax": GMAX,
        "seed": 0,
        "stream": 0,
    }
    for name, bad in (
        ("lam_down", np.zeros((2, 2), np.float32)),
        ("gp", np.zeros(5, np.float32)),
        ("gn", np.zeros(5, np.float32)),
        ("wp", np.zeros(5, np.int32)),
        ("wn", np.zeros(5, np.int32)),
        ("counts", np.zeros((2, 1, 5), np.int64)),
        ("counts", np.zeros((2, 2, 4), np.int64)),
    ):
        with pytest.raises(ValueError, match=name):
            mod.pulse_update(**{**ok, name: bad})
