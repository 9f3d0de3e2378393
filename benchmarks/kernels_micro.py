"""Micro-benchmarks of the compiled kernels, as ratios measured in one run (no asserts).

    python benchmarks/kernels_micro.py [--repeat 20]

* ``mvm_forward`` / ``mvm_backward`` time divided by the time of the plain NumPy float32 product
  of the same shapes (``x @ g[0]``, resp. ``dy @ g[0].T``), one slice: ideal (fast path, one
  sgemm per slice), with a 6-bit ADC, and with the ADC and read noise, on 128-row (resp.
  64-column) tiles.
* ``im2col`` / ``col2im``: compiled time divided by the ``reference.py`` twin's time.

Each figure is the best of ``--repeat`` runs after one warm-up; thread counts are the defaults
(BLAS and OpenMP), printed at the top.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from xbarc.runtime import _kernels, reference

F32 = np.float32


def best(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_mvm(b: int, r: int, c: int, repeat: int, rng: np.random.Generator) -> None:
    s = 1
    x = rng.uniform(-1, 1, (b, r)).astype(F32)
    g = rng.normal(0, 20, (s, r, c)).astype(F32)
    sw = np.ones(s, F32)
    out = np.empty((b, c), F32)
    work = np.empty((b, c), F32)
    threads = _kernels.n_threads_default()
    e2, e3, e4 = np.zeros((0, 0), F32), np.zeros((0, 0, 0), F32), np.zeros((0, 0, 0, 0), F32)
    ref_out = np.empty((b, c), F32)
    t_np = best(lambda: np.matmul(x, g[0], out=ref_out), repeat)

    def ideal() -> None:
        _kernels.mvm_forward(x, g, sw, 128, 0, e2, 0.0, e3, e4, work, out, threads)

    rb = 128
    nr = -(-r // rb)
    adc = np.full((nr, s), 200.0, F32)
    rms = np.full((nr, s, c), 20.0, F32)
    noise = rng.standard_normal((nr, s, b, c), dtype=F32)

    def adc_only() -> None:
        _kernels.mvm_forward(x, g, sw, rb, 6, adc, 0.0, e3, e4, work, out, threads)

    def nonideal() -> None:
        _kernels.mvm_forward(x, g, sw, rb, 6, adc, 0.05, rms, noise, work, out, threads)

    t_ideal = best(ideal, repeat)
    t_adc = best(adc_only, repeat)
    t_non = best(nonideal, repeat)
    print(
        f"mvm_forward  B={b:5d} R={r:4d} C={c:4d} ({nr} row blocks): numpy {t_np * 1e3:7.3f} ms"
        f" | ideal {t_ideal / t_np:5.2f}x | adc6 {t_adc / t_np:5.2f}x"
        f" | adc6+noise {t_non / t_np:5.2f}x"
    )

    # transposed: dy[B, C] -> out[B, R]
    dy = rng.uniform(-1, 1, (b, c)).astype(F32)
    out_t = np.empty((b, r), F32)
    work_t = np.empty((b, r), F32)
    ref_t = np.empty((b, r), F32)
    gt = g[0].T
    t_np_t = best(lambda: np.matmul(dy, gt, out=ref_t), repeat)
    cb = 64
    nc = -(-c // cb)
    adc_t = np.full((nc, s), 200.0, F32)
    rms_t = np.full((nc, s, r), 20.0, F32)
    noise_t = rng.standard_normal((nc, s, b, r), dtype=F32)

    def ideal_t() -> None:
        _kernels.mvm_backward(dy, g, sw, cb, 0, e2, 0.0, e3, e4, work_t, out_t, threads)

    def adc_only_t() -> None:
        _kernels.mvm_backward(dy, g, sw, cb, 6, adc_t, 0.0, e3, e4, work_t, out_t, threads)

    def nonideal_t() -> None:
        _kernels.mvm_backward(dy, g, sw, cb, 6, adc_t, 0.05, rms_t, noise_t, work_t, out_t, threads)

    t_ideal_t = best(ideal_t, repeat)
    t_adc_t = best(adc_only_t, repeat)
    t_non_t = best(nonideal_t, repeat)
    print(
        f"mvm_backward B={b:5d} R={r:4d} C={c:4d} ({nc} col blocks): numpy {t_np_t * 1e3:7.3f} ms"
        f" | ideal {t_ideal_t / t_np_t:5.2f}x | adc6 {t_adc_t / t_np_t:5.2f}x"
        f" | adc6+noise {t_non_t / t_np_t:5.2f}x"
    )


def bench_im2col(n: int, c: int, h: int, repeat: int, rng: np.random.Generator) -> None:
    x = rng.standard_normal((n, c, h, h)).astype(F32)
    win = (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)
    cols = np.empty((n * h * h, c * 9), F32)
    threads = _kernels.n_threads_default()
    t_c = best(lambda: _kernels.im2col(x, *win, cols, threads), repeat)
    t_r = best(lambda: reference.im2col(x, *win, cols), repeat)
    back = np.empty_like(x)
    t_cc = best(lambda: _kernels.col2im(cols, n, c, h, h, *win, back, threads), repeat)
    t_rc = best(lambda: reference.col2im(cols, n, c, h, h, *win, back), repeat)
    print(
        f"im2col 3x3 pad 1 N={n} C={c} H=W={h} -> [{n * h * h}, {c * 9}]: "
        f"compiled {t_c * 1e3:.3f} ms = {t_c / t_r:.2f}x reference | "
        f"col2im {t_cc * 1e3:.3f} ms = {t_cc / t_rc:.2f}x reference"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    try:
        from threadpoolctl import threadpool_info

        blas = {(i["internal_api"], i["num_threads"]) for i in threadpool_info()}
    except ImportError:
        blas = set()
    print(
        f"OpenMP={_kernels.OPENMP} n_threads={_kernels.n_threads_default()} "
        f"blas={sorted(blas)} repeat={args.repeat}"
    )
    rng = np.random.default_rng(0)
    bench_mvm(4096, 576, 64, args.repeat, rng)
    bench_mvm(64, 784, 256, args.repeat, rng)
    bench_im2col(4, 64, 32, args.repeat, rng)


if __name__ == "__main__":
    main()
