"""Tests of the backward rules (xbarc.runtime.train.autodiff) against finite differences.

Every op kind is checked on hypothesis-generated shapes and attributes: the VJP of a random
cotangent ``g`` is compared with the central difference of ``<f(x + t*d), g>`` along a random
direction ``d`` (per input, in float64), and a few tiny cases get a full elementwise gradient
check. Inputs are generated away from kinks and ties by construction; the conventions at kinks
and ties are pinned by separate deterministic tests. Each case is also run in float32 to check
dtypes, shapes and agreement with the float64 gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from xbarc.errors import VerifyError
from xbarc.ir import interp
from xbarc.ir import ops as O
from xbarc.ir.types import TensorType
from xbarc.runtime.train import autodiff as A

Array = np.ndarray[Any, Any]
EPS = 1e-6
SEEDS = st.integers(0, 2**32 - 1)


# ----------------------------------------------------------------------------- harness


def is_float(a: Array) -> bool:
    return bool(np.issubdtype(a.dtype, np.floating))


def to(a: Array, dtype: Any) -> Array:
    return a.astype(dtype) if is_float(a) else a


def forward(op: O.Op, xs: Sequence[Array]) -> tuple[Array, ...]:
    with np.errstate(all="ignore"):
        return tuple(np.asarray(y) for y in interp.EVAL[type(op)](op, list(xs)))


def pairing(op: O.Op, xs: Sequence[Array], gs: Sequence[Array | None]) -> float:
    """<f(xs), gs> summed over the outputs that have a cotangent."""
    ys = forward(op, xs)
    return float(sum(float((y * g).sum()) for y, g in zip(ys, gs, strict=True) if g is not None))


def assert_fresh(grads: Sequence[Array | None], args: Sequence[Array | None]) -> None:
    seen: list[Array] = []
    for gr in grads:
        if gr is None:
            continue
        assert gr.flags.writeable
        for a in (*args, *seen):
            assert a is None or not np.may_share_memory(gr, a)
        seen.append(gr)


def check(
    op: O.Op,
    inputs: Sequence[Array],
    *,
    seed: int = 0,
    rtol: float = 1e-5,
    none_outputs: Sequence[int] = (),
    f32: bool = True,
) -> list[Array | None]:
    """VJP vs central differences in float64 (per input, random direction) and a float32 run.

    Returns the float64 gradients.
    """
    xs = [to(np.asarray(a), np.float64) for a in inputs]
    ys = forward(op, xs)
    rng = np.random.default_rng(seed)
    gs: list[Array | None] = [
        None if i in none_outputs else rng.standard_normal(y.shape) for i, y in enumerate(ys)
    ]
    grads = A.vjp(op, xs, ys, gs)
    assert len(grads) == len(xs)
    assert_fresh(grads, [*xs, *ys, *gs])
    for i, (x, gr) in enumerate(zip(xs, grads, strict=True)):
        if not is_float(x):
            assert gr is None, f"input {i} is not float but got a gradient"
            continue
        assert gr is not None, f"input {i}: no gradient"
        assert gr.shape == x.shape and gr.dtype == x.dtype
        if x.size == 0:
            continue
        d = rng.standard_normal(x.shape)
        plus = [*xs[:i], x + EPS * d, *xs[i + 1 :]]
        minus = [*xs[:i], x - EPS * d, *xs[i + 1 :]]
        fd = (pairing(op, plus, gs) - pairing(op, minus, gs)) / (2 * EPS)
        an = float((gr * d).sum())
        scale = max(1.0, abs(fd), float((np.abs(gr) * np.abs(d)).sum()))
        assert abs(an - fd) <= rtol * scale, f"input {i}: vjp {an!r} vs finite difference {fd!r}"
    if f32:
        check_f32(op, xs, gs, grads)
    return grads


def check_f32(
    op: O.Op, xs: Sequence[Array], gs: Sequence[Array | None], g64: Sequence[Array | None]
) -> None:
    x32 = [to(a, np.float32) for a in xs]
    y32 = forward(op, x32)
    gs32 = [None if g is None else g.astype(y.dtype) for g, y in zip(gs, y32, strict=True)]
    grads = A.vjp(op, x32, y32, gs32)
    assert_fresh(grads, [*x32, *y32, *gs32])
    for x, gr, ref in zip(x32, grads, g64, strict=True):
        if ref is None:
            assert gr is None
            continue
        assert gr is not None and gr.shape == x.shape and gr.dtype == np.float32
        tol = 2e-3 * max(1.0, float(np.abs(ref).max(initial=0.0)))
        np.testing.assert_allclose(gr, ref, rtol=2e-3, atol=tol)


def check_full(op: O.Op, inputs: Sequence[Array], seed: int = 0) -> None:
    """Elementwise check: every gradient entry against its own central difference."""
    xs = [to(np.asarray(a), np.float64) for a in inputs]
    ys = forward(op, xs)
    rng = np.random.default_rng(seed)
    gs: list[Array | None] = [rng.standard_normal(y.shape) for y in ys]
    grads = A.vjp(op, xs, ys, gs)
    for i, (x, gr) in enumerate(zip(xs, grads, strict=True)):
        if not is_float(x):
            assert gr is None
            continue
        assert gr is not None
        num = np.zeros_like(x)
        for j in np.ndindex(*x.shape):
            xp, xm = x.copy(), x.copy()
            xp[j] += EPS
            xm[j] -= EPS
            num[j] = (
                pairing(op, [*xs[:i], xp, *xs[i + 1 :]], gs)
                - pairing(op, [*xs[:i], xm, *xs[i + 1 :]], gs)
            ) / (2 * EPS)
        np.testing.assert_allclose(gr, num, rtol=1e-6, atol=1e-7, err_msg=f"input {i}")


def valid(op: O.Op, inputs: Sequence[Array]) -> bool:
    """Whether ``op`` type-checks on these inputs."""
    try:
        op.infer([TensorType.of(np.asarray(a)) for a in inputs])
    except VerifyError:
        return False
    return True


def away(
    rng: np.random.Generator,
    shape: Any,
    lo: float,
    hi: float,
    kinks: Sequence[float],
    gap: float = 0.05,
) -> Array:
    """Uniform samples in [lo, hi] pushed at least ``gap`` away from every kink."""
    u = rng.uniform(lo, hi, shape)
    for k in kinks:
        near = np.abs(u - k) < gap
        side = np.where(u >= k, 1.0, -1.0)
        u = np.where(near, k + side * (gap + np.abs(u - k)), u)
    return np.asarray(u)


def distinct(rng: np.random.Generator, shape: Any) -> Array:
    """Values that are pairwise at least 0.06 apart (no ties for max/argmax), both signs."""
    n = math.prod(shape)
    v = rng.permutation(n) * 0.1 - n * 0.05 + rng.uniform(-0.02, 0.02, n)
    return np.asarray(v.reshape(shape))


SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4)


# ----------------------------------------------------------------------------- registry, API


def test_every_registered_op_has_a_backward_rule() -> None:
    assert set(O.OPS.values()) <= set(A.BACKWARD)


def test_unknown_op_raises_key_error_naming_it() -> None:
    class Frobnicate(O.Op):
        NAME = "frobnicate"

    with pytest.raises(KeyError, match="frobnicate") as err:
        A.vjp(Frobnicate(), [np.zeros(2)], (np.zeros(2),), [np.ones(2)])
    assert str(err.value) == "no backward rule for op 'frobnicate' (Frobnicate)"


def test_grad_output_shape_and_count_are_checked() -> None:
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="shape"):
        A.vjp(O.Relu(), [x], (x,), [np.ones(3, np.float32)])
    with pytest.raises(ValueError, match="gradients"):
        A.vjp(O.Relu(), [x], (x,), [])


def test_no_output_gradient_gives_no_input_gradients() -> None:
    a = np.ones((2, 3), np.float32)
    assert A.vjp(O.Add(), [a, a], (a + a,), [None]) == [None, None]
    parts = forward(O.Split(axis=1, sizes=(1, 2)), [a])
    assert A.vjp(O.Split(axis=1, sizes=(1, 2)), [a], parts, [None, None]) == [None]


def test_unbroadcast() -> None:
    g = np.arange(24.0).reshape(2, 3, 4)
    assert A.unbroadcast(g, (2, 3, 4)) is g
    np.testing.assert_array_equal(A.unbroadcast(g, (4,)), g.sum(axis=(0, 1)))
    np.testing.assert_array_equal(A.unbroadcast(g, (3, 1)), g.sum(axis=(0, 2))[:, None])
    np.testing.assert_array_equal(A.unbroadcast(g, ()), g.sum())
    np.testing.assert_array_equal(A.unbroadcast(g, (1, 1, 1)), g.sum().reshape(1, 1, 1))
    assert A.unbroadcast(np.zeros((0, 3)), (1, 3)).tolist() == [[0.0, 0.0, 0.0]]
    with pytest.raises(ValueError):
        A.unbroadcast(g, (2, 4))
    with pytest.raises(ValueError):
        A.unbroadcast(g, (1, 2, 3, 4))


@given(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=3))
def test_unbroadcast_is_adjoint_of_broadcast(shapes: Any) -> None:
    small, big = shapes.input_shapes[0], shapes.result_shape
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal(small), rng.standard_normal(big)
    lhs = float((np.broadcast_to(x, big) * g).sum())
    rhs = float((x * A.unbroadcast(g, small)).sum())
    assert math.isclose(lhs, rhs, rel_tol=1e-9, abs_tol=1e-9)


# ----------------------------------------------------------------------------- elementwise

Sampler = Callable[[np.random.Generator, tuple[int, ...], Any], Array]
UNARY: dict[str, tuple[st.SearchStrategy[O.Op], Sampler]] = {
    "relu": (st.just(O.Relu()), lambda r, s, op: away(r, s, -2, 2, [0])),
    "leaky_relu": (
        st.builds(O.LeakyRelu, alpha=st.floats(0.0, 0.5)),
        lambda r, s, op: away(r, s, -2, 2, [0]),
    ),
    "sigmoid": (st.just(O.Sigmoid()), lambda r, s, op: r.uniform(-4, 4, s)),
    "hard_sigmoid": (
        st.builds(O.HardSigmoid, alpha=st.floats(0.1, 1.0), beta=st.floats(-0.5, 1.0)),
        lambda r, s, op: (away(r, s, -1, 2, [0, 1]) - op.beta) / op.alpha,
    ),
    "hard_swish": (st.just(O.HardSwish()), lambda r, s, op: away(r, s, -5, 5, [-3, 3])),
    "tanh": (st.just(O.Tanh()), lambda r, s, op: r.uniform(-3, 3, s)),
    "gelu": (
        st.builds(O.Gelu, approximate=st.sampled_from(["none", "tanh"])),
        lambda r, s, op: r.uniform(-4, 4, s),
    ),
    "erf": (st.just(O.Erf()), lambda r, s, op: r.uniform(-3, 3, s)),
    "sqrt": (st.just(O.Sqrt()), lambda r, s, op: r.uniform(0.1, 4, s)),
    "exp": (st.just(O.Exp()), lambda r, s, op: r.uniform(-3, 3, s)),
    "log": (st.just(O.Log()), lambda r, s, op: r.uniform(0.1, 4, s)),
    "neg": (st.just(O.Neg()), lambda r, s, op: r.standard_normal(s)),
    "abs": (st.just(O.Abs()), lambda r, s, op: away(r, s, -2, 2, [0])),
    "reciprocal": (
        st.just(O.Reciprocal()),
        lambda r, s, op: r.choice([-1.0, 1.0], s) * r.uniform(0.2, 3, s),
    ),
    "softplus": (st.just(O.Softplus()), lambda r, s, op: r.uniform(-5, 5, s)),
    "clip": (
        st.builds(
            lambda lo, width, has_hi: O.Clip(min=lo, max=None if not has_hi else (lo or 0) + width),
            st.none() | st.floats(-1.0, 0.5),
            st.floats(0.2, 2.0),
            st.booleans(),
        ),
        lambda r, s, op: away(r, s, -3, 3, [k for k in (op.min, op.max) if k is not None]),
    ),
    "identity": (st.just(O.Identity()), lambda r, s, op: r.standard_normal(s)),
    "dropout": (
        st.builds(O.Dropout, ratio=st.floats(0.0, 0.9)),
        lambda r, s, op: r.standard_normal(s),
    ),
}


def test_unary_table_covers_every_unary_op() -> None:
    unary = {c.NAME for c in O.OPS.values() if issubclass(c, O.Unary)}
    assert unary | {"identity", "dropout"} == set(UNARY)


@pytest.mark.parametrize("name", sorted(UNARY))
@given(data=st.data(), shape=SHAPES, seed=SEEDS)
def test_unary(name: str, data: st.DataObject, shape: tuple[int, ...], seed: int) -> None:
    op_st, sample = UNARY[name]
    op = data.draw(op_st)
    x = sample(np.random.default_rng(seed), shape, op)
    check(op, [np.asarray(x)], seed=seed)


@pytest.mark.parametrize(
    ("src", "dst", "has_grad"),
    [
        (np.float32, "f64", True),
        (np.float64, "f32", True),
        (np.float32, "f32", True),
        (np.float16, "f32", True),
        (np.float32, "i32", False),
        (np.int64, "f32", False),
        (np.bool_, "f32", False),
    ],
)
def test_cast(src: Any, dst: str, has_grad: bool) -> None:
    x = np.array([[0.5, -1.25], [2.0, 3.0]], dtype=src)
    op = O.Cast(to=dst)
    (y,) = forward(op, [x])
    g = np.array([[1.5, -2.0], [0.25, 4.0]], dtype=y.dtype)
    (gx,) = A.vjp(op, [x], (y,), [g])
    if not has_grad:
        assert gx is None
        return
    assert gx is not None and gx.dtype == x.dtype and gx.shape == x.shape
    np.testing.assert_array_equal(gx, g.astype(x.dtype))
    assert not np.may_share_memory(gx, g)


def test_identity_of_integers_has_no_gradient() -> None:
    x = np.arange(6).reshape(2, 3)
    for op in (O.Identity(), O.Reshape(shape=(3, 2)), O.Transpose(perm=(1, 0))):
        (y,) = forward(op, [x])
        assert A.vjp(op, [x], (y,), [np.ones(y.shape)]) == [None]


@pytest.mark.parametrize("op", [O.Equal(), O.Less(), O.Greater()], ids=lambda o: o.NAME)
def test_comparisons_have_no_gradient(op: O.Op) -> None:
    a, b = np.array([1.0, 2.0, 3.0]), np.array([[2.0], [1.0]])
    (y,) = forward(op, [a, b])
    assert A.vjp(op, [a, b], (y,), [np.ones(y.shape)]) == [None, None]


def test_not_has_no_gradient() -> None:
    x = np.array([True, False])
    (y,) = forward(O.Not(), [x])
    assert A.vjp(O.Not(), [x], (y,), [np.ones(2)]) == [None]


BROADCAST2 = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=3)
BINARY: dict[str, tuple[O.Op, Callable[[np.random.Generator, Any, Any], tuple[Array, Array]]]] = {
    "add": (O.Add(), lambda r, s, t: (r.standard_normal(s), r.standard_normal(t))),
    "sub": (O.Sub(), lambda r, s, t: (r.standard_normal(s), r.standard_normal(t))),
    "mul": (O.Mul(), lambda r, s, t: (r.standard_normal(s), r.standard_normal(t))),
    "div": (
        O.Div(),
        lambda r, s, t: (r.standard_normal(s), r.choice([-1.0, 1.0], t) * r.uniform(0.3, 2, t)),
    ),
    "pow": (O.Pow(), lambda r, s, t: (r.uniform(0.2, 2, s), r.uniform(-2, 2, t))),
    # Odd vs even multiples of 0.05: never equal, at least 0.05 apart.
    "max": (
        O.Max(),
        lambda r, s, t: (r.integers(-20, 20, s) * 0.1 + 0.05, r.integers(-20, 20, t) * 0.1),
    ),
    "min": (
        O.Min(),
        lambda r, s, t: (r.integers(-20, 20, s) * 0.1 + 0.05, r.integers(-20, 20, t) * 0.1),
    ),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@given(shapes=BROADCAST2, seed=SEEDS)
def test_binary(name: str, shapes: Any, seed: int) -> None:
    op, sample = BINARY[name]
    s, t = shapes.input_shapes
    a, b = sample(np.random.default_rng(seed), s, t)
    check(op, [np.asarray(a), np.asarray(b)], seed=seed)


@given(shapes=BROADCAST2, seed=SEEDS, int_dtype=st.sampled_from([np.int32, np.int64]))
def test_pow_negative_base_integer_exponent(shapes: Any, seed: int, int_dtype: Any) -> None:
    rng = np.random.default_rng(seed)
    s, t = shapes.input_shapes
    a = away(rng, s, -2, 2, [0], gap=0.2)
    b = rng.integers(-2, 4, t).astype(int_dtype)
    grads = check(O.Pow(), [a, b], seed=seed)
    assert grads[1] is None


@given(
    shapes=hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=4, max_side=3),
    seed=SEEDS,
)
def test_where(shapes: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    c, s, t = shapes.input_shapes
    cond = rng.random(c) < 0.5
    grads = check(O.Where(), [cond, rng.standard_normal(s), rng.standard_normal(t)], seed=seed)
    assert grads[0] is None


def test_integer_arithmetic_has_no_gradient() -> None:
    a, b = np.array([3, 4]), np.array([2, 2])
    for op in (O.Add(), O.Mul(), O.Div(), O.Max()):
        (y,) = forward(op, [a, b])
        assert A.vjp(op, [a, b], (y,), [np.ones(2)]) == [None, None]


# ----------------------------------------------------------------------------- linear algebra


@given(
    batch=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, max_side=3),
    mkn=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    ranks=st.tuples(st.sampled_from([1, 2, 3]), st.sampled_from([1, 2, 3])),
    seed=SEEDS,
)
def test_matmul(batch: Any, mkn: tuple[int, int, int], ranks: tuple[int, int], seed: int) -> None:
    m, k, n = mkn
    ba, bb = batch.input_shapes
    sa = (k,) if ranks[0] == 1 else (*ba, m, k)
    sb = (k,) if ranks[1] == 1 else (*bb, k, n)
    rng = np.random.default_rng(seed)
    check(O.MatMul(), [rng.standard_normal(sa), rng.standard_normal(sb)], seed=seed)


@given(
    mkn=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
    trans=st.tuples(st.booleans(), st.booleans()),
    alpha=st.sampled_from([1.0, -0.5, 2.0]),
    beta=st.sampled_from([1.0, 0.0, 0.75]),
    c_kind=st.sampled_from(["none", "scalar", "row", "row2", "col", "full", "one"]),
    seed=SEEDS,
)
def test_gemm(
    mkn: tuple[int, int, int],
    trans: tuple[bool, bool],
    alpha: float,
    beta: float,
    c_kind: str,
    seed: int,
) -> None:
    m, k, n = mkn
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans[0] else (m, k))
    b = rng.standard_normal((n, k) if trans[1] else (k, n))
    c_shape = {
        "scalar": (),
        "row": (n,),
        "row2": (1, n),
        "col": (m, 1),
        "full": (m, n),
        "one": (1, 1),
    }
    ins = [a, b] if c_kind == "none" else [a, b, rng.standard_normal(c_shape[c_kind])]
    op = O.Gemm(alpha=alpha, beta=beta, trans_a=trans[0], trans_b=trans[1])
    assert valid(op, ins)
    check(op, ins, seed=seed)


@given(
    lead=hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3),
    kn=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    bias=st.booleans(),
    xbar=st.booleans(),
    seed=SEEDS,
)
def test_linear_and_xbar_linear(
    lead: tuple[int, ...], kn: tuple[int, int], bias: bool, xbar: bool, seed: int
) -> None:
    k, n = kn
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*lead, k))
    w = rng.standard_normal((1, k, n) if xbar else (k, n))
    ins = [x, w, rng.standard_normal(n)] if bias else [x, w]
    op: O.Op = O.XbarMVM(layer="fc", kind="linear") if xbar else O.Linear()
    assert valid(op, ins)
    check(op, ins, seed=seed)


@st.composite
def conv_cases(draw: st.DrawFn, xbar: bool = False) -> tuple[O.Op, list[Array]]:
    nsp = draw(st.integers(1, 3))
    kmax, smax = (3, 4) if nsp < 3 else (2, 3)
    n = draw(st.integers(1, 2))
    group = draw(st.integers(1, 3))
    cin_g, cout_g = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, kmax)) for _ in range(nsp))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(nsp))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(nsp))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(2 * nsp))
    sizes = []
    for i in range(nsp):
        least = max(1, dil[i] * (kernel[i] - 1) + 1 - pads[i] - pads[i + nsp])
        sizes.append(least + draw(st.integers(0, smax - 1)))
    rng = np.random.default_rng(draw(SEEDS))
    x = rng.standard_normal((n, group * cin_g, *sizes))
    cout = group * cout_g
    op: O.Op
    if xbar:
        w = rng.standard_normal((group, cin_g * math.prod(kernel), cout_g))
        op = O.XbarMVM(
            layer="c", kind="conv", kernel=kernel, strides=strides, pads=pads, dilations=dil
        )
    else:
        w = rng.standard_normal((cout, cin_g, *kernel))
        op = O.Conv(strides=strides, pads=pads, dilations=dil, group=group)
    ins = [x, w, rng.standard_normal(cout)] if draw(st.booleans()) else [x, w]
    assert valid(op, ins)
    return op, ins


@given(case=conv_cases())
def test_conv(case: tuple[O.Op, list[Array]]) -> None:
    check(*case)


@given(case=conv_cases(xbar=True))
def test_xbar_conv(case: tuple[O.Op, list[Array]]) -> None:
    check(*case)


def test_conv_depthwise_matches_xbar_and_dense_reference() -> None:
    """Depthwise conv: weight/input gradients agree between Conv and the equivalent XbarMVM."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    conv = O.Conv(strides=(2, 1), pads=(1, 1, 1, 0), dilations=(1, 2), group=4)
    xbar = O.XbarMVM(
        layer="dw", kind="conv", kernel=(3, 3), strides=(2, 1), pads=(1, 1, 1, 0), dilations=(1, 2)
    )
    wmat = interp.conv_weight_matrix(w, 4)
    (y,) = forward(conv, [x, w])
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw = A.vjp(conv, [x, w], (y,), [g])
    dx2, dwmat = A.vjp(xbar, [x, wmat], forward(xbar, [x, wmat]), [g])
    assert dx is not None and dw is not None and dwmat is not None
    np.testing.assert_allclose(dx, dx2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(interp.conv_weight_matrix(dw, 4), dwmat, rtol=1e-5, atol=1e-5)
    check(conv, [x, w], seed=3)


# ----------------------------------------------------------------------------- normalisation


@given(shape=hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=4), seed=SEEDS)
def test_batch_norm(shape: tuple[int, ...], seed: int) -> None:
    rng = np.random.default_rng(seed)
    c = shape[1]
    ins = [
        rng.standard_normal(shape),
        rng.standard_normal(c),
        rng.standard_normal(c),
        rng.standard_normal(c),
        rng.uniform(0.2, 2.0, c),
    ]
    check(O.BatchNorm(epsilon=1e-3), ins, seed=seed)


@given(data=st.data(), shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=4), seed=SEEDS)
def test_layer_norm(data: st.DataObject, shape: tuple[int, ...], seed: int) -> None:
    rng = np.random.default_rng(seed)
    axis = data.draw(st.integers(0, len(shape) - 1))
    norm = shape[axis:]

    def param_shape() -> tuple[int, ...]:
        k = data.draw(st.integers(0, len(norm)))
        tail = norm[len(norm) - k :]
        return tuple(1 if data.draw(st.booleans()) else d for d in tail)

    x = rng.standard_normal(shape)
    if math.prod(norm) > 1:
        assume(float(x.std(axis=tuple(range(axis, len(shape)))).min()) > 0.2)
    ins = [x, rng.standard_normal(param_shape())]
    if data.draw(st.booleans()):
        ins.append(rng.standard_normal(param_shape()))
    op = O.LayerNorm(axis=axis, epsilon=data.draw(st.sampled_from([1e-5, 1e-2])))
    assert valid(op, ins)
    check(op, ins, seed=seed)


@pytest.mark.parametrize("kind", [O.Softmax, O.LogSoftmax])
@given(data=st.data(), shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=4), seed=SEEDS)
def test_softmax(kind: Any, data: st.DataObject, shape: tuple[int, ...], seed: int) -> None:
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = np.random.default_rng(seed).standard_normal(shape) * 2
    check(kind(axis=axis), [x], seed=seed)


# ----------------------------------------------------------------------------- reductions, pools


@pytest.mark.parametrize("kind", [O.ReduceSum, O.ReduceMean, O.ReduceMax])
@given(data=st.data(), shape=SHAPES, seed=SEEDS)
def test_reduce(kind: Any, data: st.DataObject, shape: tuple[int, ...], seed: int) -> None:
    axes = tuple(i for i in range(len(shape)) if data.draw(st.booleans()))
    if data.draw(st.booleans()):  # the interpreter also accepts negative axes
        axes = tuple(a - len(shape) for a in axes)
    op = kind(axes=axes, keepdims=data.draw(st.booleans()))
    check(op, [distinct(np.random.default_rng(seed), shape)], seed=seed)


@st.composite
def pool_cases(draw: st.DrawFn, avg: bool) -> tuple[O.Op, Array]:
    nsp = draw(st.integers(1, 3))
    kmax = 3 if nsp < 3 else 2
    kernel = tuple(draw(st.integers(1, kmax)) for _ in range(nsp))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(nsp))
    dil = (1,) * nsp if avg else tuple(draw(st.integers(1, 2)) for _ in range(nsp))
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dil, strict=True)]
    pads = tuple(draw(st.integers(0, span[i % nsp] // 2)) for i in range(2 * nsp))
    sizes = [
        max(1, span[i] - pads[i] - pads[i + nsp]) + draw(st.integers(0, 3)) for i in range(nsp)
    ]
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), *sizes)
    ceil = draw(st.booleans())
    rng = np.random.default_rng(draw(SEEDS))
    op: O.Op
    if avg:
        op = O.AveragePool(
            kernel=kernel,
            strides=strides,
            pads=pads,
            ceil_mode=ceil,
            count_include_pad=draw(st.booleans()),
        )
        x = rng.standard_normal(shape)
    else:
        op = O.MaxPool(kernel=kernel, strides=strides, pads=pads, dilations=dil, ceil_mode=ceil)
        x = distinct(rng, shape)
    assert valid(op, [x])
    return op, x


@given(case=pool_cases(avg=False))
def test_max_pool(case: tuple[O.Op, Array]) -> None:
    op, x = case
    assume(np.isfinite(forward(op, [x])[0]).all())  # a window that holds only padding
    check(op, [x])


@given(case=pool_cases(avg=True))
def test_average_pool(case: tuple[O.Op, Array]) -> None:
    op, x = case
    assume(np.isfinite(forward(op, [x])[0]).all())  # a window that holds only padding
    check(op, [x])


@pytest.mark.parametrize("kind", [O.GlobalAveragePool, O.GlobalMaxPool])
@given(shape=hnp.array_shapes(min_dims=3, max_dims=5, min_side=1, max_side=4), seed=SEEDS)
def test_global_pools(kind: Any, shape: tuple[int, ...], seed: int) -> None:
    check(kind(), [distinct(np.random.default_rng(seed), shape)], seed=seed)


# ----------------------------------------------------------------------------- data movement


@given(data=st.data(), shape=SHAPES, seed=SEEDS)
def test_reshape_and_transpose(data: st.DataObject, shape: tuple[int, ...], seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal(shape)
    dims = [*data.draw(st.permutations(shape)), *[1] * data.draw(st.integers(0, 2))]
    check(O.Reshape(shape=tuple(data.draw(st.permutations(dims)))), [x], seed=seed)
    if shape:  # the interpreter's Transpose turns a 0-d array into shape (1,)
        perm = tuple(data.draw(st.permutations(range(len(shape)))))
        check(O.Transpose(perm=perm), [x], seed=seed)


@given(data=st.data(), shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=3), seed=SEEDS)
def test_concat(data: st.DataObject, shape: tuple[int, ...], seed: int) -> None:
    rng = np.random.default_rng(seed)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    ins = []
    for _ in range(data.draw(st.integers(1, 3))):
        s = list(shape)
        s[axis] = data.draw(st.integers(0, 3))
        ins.append(rng.standard_normal(s))
    check(O.Concat(axis=axis), ins, seed=seed)


@given(
    data=st.data(),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4),
    idx_shape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=4),
    dtype=st.sampled_from([np.int32, np.int64]),
    seed=SEEDS,
)
def test_gather(
    data: st.DataObject,
    shape: tuple[int, ...],
    idx_shape: tuple[int, ...],
    dtype: Any,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    dim = shape[axis]
    idx = rng.integers(-dim, dim, idx_shape).astype(dtype)  # duplicates and negatives
    grads = check(O.Gather(axis=axis), [rng.standard_normal(shape), idx], seed=seed)
    assert grads[1] is None


@given(data=st.data(), shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), seed=SEEDS)
def test_slice(data: st.DataObject, shape: tuple[int, ...], seed: int) -> None:
    axes = data.draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, unique=True))
    starts, ends, steps = [], [], []
    for a in axes:
        d = shape[a]
        starts.append(data.draw(st.integers(-d - 2, d + 2)))
        ends.append(data.draw(st.integers(-d - 2, d + 2) | st.sampled_from([2**62, -(2**62)])))
        steps.append(data.draw(st.sampled_from([-3, -2, -1, 1, 2, 3])))
    op = O.Slice(starts=tuple(starts), ends=tuple(ends), axes=tuple(axes), steps=tuple(steps))
    check(op, [np.random.default_rng(seed).standard_normal(shape)], seed=seed)


@given(data=st.data(), shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), seed=SEEDS)
def test_split(data: st.DataObject, shape: tuple[int, ...], seed: int) -> None:
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    cuts = sorted(data.draw(st.lists(st.integers(0, shape[axis]), max_size=3)))
    bounds = [0, *cuts, shape[axis]]
    sizes = tuple(int(v) for v in np.diff(bounds))
    op = O.Split(axis=axis, sizes=sizes)
    dropped = [i for i in range(len(sizes)) if data.draw(st.booleans())]
    if len(dropped) == len(sizes):
        dropped = dropped[1:]
    check(op, [np.random.default_rng(seed).standard_normal(shape)], seed=seed, none_outputs=dropped)


@given(shapes=BROADCAST2, seed=SEEDS)
def test_expand(shapes: Any, seed: int) -> None:
    s, t = shapes.input_shapes
    check(O.Expand(shape=t), [np.random.default_rng(seed).standard_normal(s)], seed=seed)


@given(
    data=st.data(),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4),
    mode=st.sampled_from(["constant", "reflect", "edge"]),
    seed=SEEDS,
)
def test_pad(data: st.DataObject, shape: tuple[int, ...], mode: str, seed: int) -> None:
    r = len(shape)
    pads = [0] * (2 * r)
    for i, d in enumerate(shape):
        # Negative pads crop first; reflect/edge need something left to pad from.
        lo = -(d - 1) if mode != "constant" else -d
        pads[i] = data.draw(st.integers(max(lo, -2), 5))
        pads[i + r] = data.draw(st.integers(max(lo - min(pads[i], 0), -2), 5))
    op = O.Pad(pads=tuple(pads), mode=mode, value=data.draw(st.sampled_from([0.0, -1.5])))
    assert valid(op, [np.zeros(shape)])
    check(op, [np.random.default_rng(seed).standard_normal(shape)], seed=seed)


def test_fill_has_no_inputs() -> None:
    op = O.Fill(shape=(2, 3), value=1.0)
    (y,) = forward(op, [])
    assert A.vjp(op, [], (y,), [np.ones((2, 3), np.float32)]) == []


# ----------------------------------------------------------------------------- full checks


_RNG = np.random.default_rng(7)


def _r(*shape: int) -> Array:
    return _RNG.standard_normal(shape)


def _d(*shape: int) -> Array:
    return distinct(_RNG, shape)


XBAR_CONV = O.XbarMVM(
    layer="c", kind="conv", kernel=(2, 2), strides=(1, 2), pads=(1, 0, 0, 1), dilations=(1, 1)
)
FULL: list[tuple[str, O.Op, list[Array]]] = [
    (
        "conv2d_group",
        O.Conv((2, 1), (1, 0, 0, 1), (1, 2), 2),
        [_r(1, 4, 4, 5), _r(2, 2, 2, 2), _r(2)],
    ),
    ("conv1d", O.Conv((2,), (2, 1), (2,), 1), [_r(2, 1, 5), _r(3, 1, 2)]),
    ("xbar_conv", XBAR_CONV, [_r(1, 2, 3, 3), _r(2, 4, 2), _r(4)]),
    ("xbar_linear", O.XbarMVM(layer="l", kind="linear"), [_r(2, 3), _r(1, 3, 2), _r(2)]),
    ("max_pool_ceil", O.MaxPool((2, 3), (2, 2), (1, 1, 0, 1), (1, 1), True), [_d(1, 2, 4, 5)]),
    ("max_pool_dilated", O.MaxPool((2, 2), (1, 1), (0, 0, 0, 0), (2, 1)), [_d(1, 1, 4, 3)]),
    ("avg_pool_incl", O.AveragePool((3, 2), (2, 2), (1, 1, 1, 0), True, True), [_r(1, 2, 4, 5)]),
    ("avg_pool_excl", O.AveragePool((3, 2), (2, 2), (1, 1, 1, 0), True, False), [_r(1, 2, 4, 5)]),
    ("layer_norm", O.LayerNorm(axis=1), [_r(2, 3, 2), _r(3, 1), _r(2)]),
    ("batch_norm", O.BatchNorm(), [_r(2, 3, 2), _r(3), _r(3), _r(3), np.array([0.5, 1.0, 2.0])]),
    ("softmax", O.Softmax(axis=0), [_r(3, 2)]),
    ("log_softmax", O.LogSoftmax(axis=1), [_r(2, 4)]),
    ("pad_reflect_wide", O.Pad((5, -1, 4, 2), "reflect"), [_r(3, 4)]),
    ("pad_edge", O.Pad((2, 0, 1, 3), "edge"), [_r(2, 3)]),
    ("pad_constant", O.Pad((1, -1, -1, 2), "constant", 2.0), [_r(3, 3)]),
    ("gather", O.Gather(axis=1), [_r(2, 4), np.array([[0, -1], [3, 0], [-4, 2]])]),
    ("slice_neg", O.Slice((-1, 1), (-100, 100), (0, 1), (-2, 2)), [_r(5, 4)]),
    ("matmul_1d_batched", O.MatMul(), [_r(3), _r(2, 1, 3, 2)]),
    ("matmul_batch_bcast", O.MatMul(), [_r(2, 1, 2, 3), _r(3, 3, 2)]),
    ("gemm", O.Gemm(0.5, 2.0, True, True), [_r(3, 2), _r(4, 3), _r(1, 4)]),
    ("where", O.Where(), [np.array([[True], [False]]), _r(2, 3), _r(3)]),
    ("pow", O.Pow(), [np.abs(_r(2, 3)) + 0.3, _r(3)]),
    ("gelu", O.Gelu(), [_r(2, 3)]),
    ("gelu_tanh", O.Gelu(approximate="tanh"), [_r(2, 3)]),
    ("hard_swish", O.HardSwish(), [np.array([-4.0, -2.5, -1.0, 0.5, 2.9, 3.5])]),
    ("reduce_max", O.ReduceMax(axes=(0, 2), keepdims=False), [_d(2, 3, 2)]),
    ("global_max", O.GlobalMaxPool(), [_d(2, 2, 2, 3)]),
    ("expand", O.Expand(shape=(2, 1, 3)), [_r(4, 1)]),
]


@pytest.mark.parametrize(("name", "op", "ins"), FULL, ids=[c[0] for c in FULL])
def test_full_gradient(name: str, op: O.Op, ins: list[Array]) -> None:
    assert valid(op, ins)
    check_full(op, ins)


# ----------------------------------------------------------------------------- conventions


def grad1(op: O.Op, ins: list[Array], g: Array | None = None) -> list[Array | None]:
    ys = forward(op, ins)
    return A.vjp(op, ins, ys, [np.ones(y.shape, y.dtype) if g is None else g for y in ys])


def grad0(op: O.Op, x: Sequence[float]) -> list[float]:
    (gx,) = grad1(op, [np.array(x)])
    assert gx is not None
    return [float(v) for v in gx]


def test_kinks() -> None:
    x = [-1.0, 0.0, 1.0]
    assert grad0(O.Relu(), x) == [0.0, 0.0, 1.0]
    assert grad0(O.LeakyRelu(alpha=0.25), x) == [0.25, 1.0, 1.0]
    assert grad0(O.Abs(), x) == [-1.0, 0.0, 1.0]
    assert grad0(O.Clip(min=-1.0, max=1.0), [-2.0, -1.0, 0.0, 1.0, 2.0]) == [0, 0, 1, 0, 0]
    assert grad0(O.Clip(min=0.0), x) == [0.0, 0.0, 1.0]  # as Relu
    assert grad0(O.Clip(), x) == [1.0, 1.0, 1.0]
    assert grad0(O.HardSigmoid(alpha=0.5, beta=0.5), x) == [0.0, 0.5, 0.0]
    assert grad0(O.HardSwish(), [-3.0, 0.0, 3.0]) == [0.0, 0.5, 1.0]


def test_gelu_at_zero() -> None:
    for approximate in ("none", "tanh"):
        assert grad0(O.Gelu(approximate=approximate), [0.0, -0.0]) == [0.5, 0.5]


def test_masked_positions_get_zero_even_for_non_finite_cotangents() -> None:
    x = np.array([-1.0, -2.0, 1.0, 3.0], np.float32)
    g = np.array([np.inf, np.nan, 2.0, -np.inf], np.float32)
    (gx,) = A.vjp(O.Relu(), [x], forward(O.Relu(), [x]), [g])
    assert gx is not None and gx.tolist() == [0.0, 0.0, 2.0, -np.inf]
    (gx,) = A.vjp(O.Clip(max=2.0), [x], forward(O.Clip(max=2.0), [x]), [g])
    assert gx is not None and gx[[0, 2, 3]].tolist() == [np.inf, 2.0, 0.0] and np.isnan(gx[1])
    cond = np.array([True, False, True, False])
    _, ga, gb = A.vjp(O.Where(), [cond, x, x], forward(O.Where(), [cond, x, x]), [g])
    assert ga is not None and gb is not None
    assert ga.tolist() == [np.inf, 0.0, 2.0, 0.0] and gb[[0, 2]].tolist() == [0.0, 0.0]


def test_ties() -> None:
    a, b = np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])
    ga, gb = grad1(O.Max(), [a, b])
    assert ga is not None and gb is not None
    assert ga.tolist() == [0.0, 0.5, 1.0] and gb.tolist() == [1.0, 0.5, 0.0]
    ga, gb = grad1(O.Min(), [a, np.array(2.0)])
    assert ga is not None and gb is not None
    assert ga.tolist() == [1.0, 0.5, 0.0] and gb.tolist() == 1.5
    (gx,) = grad1(O.ReduceMax(axes=(1,)), [np.array([[1.0, 5.0, 5.0, 5.0], [2.0, 2.0, 0.0, 1.0]])])
    assert gx is not None
    np.testing.assert_allclose(gx, [[0, 1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0, 0]])
    # Pools route everything to the first maximum in row-major window order.
    (gx,) = grad1(O.MaxPool(), [np.ones((1, 1, 2, 4))])
    assert gx is not None and gx[0, 0].tolist() == [[1, 0, 1, 0], [0, 0, 0, 0]]
    (gx,) = grad1(O.GlobalMaxPool(), [np.array([[[[1.0, 3.0], [3.0, 0.0]]]])])
    assert gx is not None and gx[0, 0].tolist() == [[0, 1], [0, 0]]


def test_max_pool_padding_never_wins() -> None:
    x = -np.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # all negative: a zero pad would win
    op = O.MaxPool(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1))
    (gx,) = grad1(op, [x])
    assert gx is not None and gx[0, 0].tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]
    (gx,) = grad1(O.MaxPool(kernel=(2, 2), strides=(2, 2), ceil_mode=True), [x])
    assert gx is not None and gx[0, 0].tolist() == [[1, 0, 1], [0, 0, 0], [1, 0, 1]]


def test_pow_conventions() -> None:
    a = np.array([0.0, -2.0, 4.0, 0.0])
    b = np.array([0.0, 2.0, 0.5, 3.0])
    ga, gb = grad1(O.Pow(), [a, b])
    assert ga is not None and gb is not None
    assert ga.tolist() == [0.0, -4.0, 0.25, 0.0]  # b == 0 -> 0 even at a == 0
    np.testing.assert_allclose(gb, [0.0, 0.0, 2 * math.log(4.0), 0.0])  # a <= 0 -> 0


def test_sqrt_log_at_singular_points_follow_ieee() -> None:
    x = np.array([0.0, 1.0], np.float32)
    (gs,) = grad1(O.Sqrt(), [x])
    (gl,) = grad1(O.Log(), [x])
    assert gs is not None and gl is not None
    assert gs.tolist() == [math.inf, 0.5] and gl.tolist() == [math.inf, 1.0]


# ----------------------------------------------------------------------------- dtypes, aliasing


@pytest.mark.parametrize(
    ("op", "ins"),
    [
        (O.Identity(), [np.ones((2, 3))]),
        (O.Dropout(), [np.ones((2, 3))]),
        (O.Add(), [np.ones((2, 3)), np.ones((2, 3))]),
        (O.Sub(), [np.ones((2, 3)), np.ones((2, 3))]),
        (O.Reshape(shape=(3, 2)), [np.ones((2, 3))]),
        (O.Transpose(perm=(0, 1)), [np.ones((2, 3))]),
        (O.Concat(axis=0), [np.ones((2, 3))]),
        (O.Concat(axis=1), [np.ones((2, 1)), np.ones((2, 2))]),
        (O.Expand(shape=(2, 3)), [np.ones((2, 3))]),
        (O.Pad(pads=(0, 0, 0, 0)), [np.ones((2, 3))]),
        (O.Slice(starts=(0,), ends=(9,), axes=(0,), steps=(1,)), [np.ones((2, 3))]),
        (O.Split(axis=0, sizes=(2,)), [np.ones((2, 3))]),
        (O.ReduceSum(axes=()), [np.ones((2, 3))]),
        (O.MaxPool(kernel=(1, 1), strides=(1, 1)), [np.ones((1, 1, 2, 3))]),
        (O.GlobalAveragePool(), [np.ones((2, 3, 1, 1))]),
    ],
    ids=lambda v: getattr(v, "NAME", ""),
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_results_are_fresh_and_typed(op: O.Op, ins: list[Array], dtype: Any) -> None:
    xs = [a.astype(dtype) for a in ins]
    ys = forward(op, xs)
    gs = [np.full(y.shape, 2.0, dtype=y.dtype) for y in ys]
    grads = A.vjp(op, xs, ys, list(gs))
    assert_fresh(grads, [*xs, *ys, *gs])
    for x, gr in zip(xs, grads, strict=True):
        assert gr is not None and gr.dtype == x.dtype and gr.shape == x.shape
        gr += 1  # writable
    assert all((g == 2).all() for g in gs)


def test_float16_gradients_are_float16_and_accurate() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float16)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float16)
    op = O.Conv(pads=(1, 1, 1, 1))
    (y,) = forward(op, [x, w])
    g = rng.standard_normal(y.shape).astype(np.float16)
    gx, gw = A.vjp(op, [x, w], (y,), [g])
    x64, w64, y64, g64 = (a.astype(np.float64) for a in (x, w, y, g))
    rx, rw = A.vjp(op, [x64, w64], (y64,), [g64])
    assert gx is not None and gw is not None and rx is not None and rw is not None
    assert gx.dtype == gw.dtype == np.float16
    np.testing.assert_allclose(gx, rx, rtol=2e-2, atol=5e-2)
    np.testing.assert_allclose(gw, rw, rtol=2e-2, atol=1e-1)


@pytest.mark.parametrize(
    ("op", "shapes"),
    [
        (O.Linear(), [(0, 3), (3, 2), (2,)]),
        (O.Linear(), [(2, 0), (0, 3), (3,)]),
        (O.MatMul(), [(2, 0), (0, 3)]),
        (O.MatMul(), [(0, 2), (3, 2, 4)]),
        (O.MatMul(), [(3, 0, 2), (2, 4)]),
        (O.Add(), [(0, 3), (3,)]),
        (O.LayerNorm(axis=1), [(0, 4), (4,)]),
        (O.Softmax(axis=0), [(2, 0)]),
        (O.ReduceMax(axes=(0,)), [(2, 0)]),
        (O.Conv(), [(0, 2, 3, 3), (1, 2, 2, 2)]),
        (O.GlobalMaxPool(), [(2, 0, 3, 3)]),
    ],
    ids=lambda v: getattr(v, "NAME", ""),
)
def test_empty_tensors(op: O.Op, shapes: list[tuple[int, ...]]) -> None:
    ins = [np.ones(s, np.float32) for s in shapes]
    ys = forward(op, ins)
    grads = A.vjp(op, ins, ys, [np.ones(y.shape, np.float32) for y in ys])
    for x, gr in zip(ins, grads, strict=True):
        assert gr is not None and gr.shape == x.shape and gr.dtype == np.float32
        assert np.isfinite(gr).all()
