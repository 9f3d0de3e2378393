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
    g = rng.normal(0, 20, (1, r, c)).astype(F32)
    # forward: x[B, R] -> [B, C] on 128-row tiles; transposed: dy[B, C] -> [B, R] on
    # 64-column tiles
    _bench_direction("mvm_forward ", _kernels.mvm_forward, g, b, r, c, 128, "row", repeat, rng)
    _bench_direction("mvm_backward", _kernels.mvm_backward, g, b, c, r, 64, "col", repeat, rng)


def _bench_direction(
    label: str,
    kernel: Callable[..., None],
    g: np.ndarray,
    b: int,
    k: int,
    n: int,
    block: int,
    what: str,
    repeat: int,
    rng: np.random.Generator,
) -> None:
    """One MVM direction: inputs ``[b, k]``, outputs ``[b, n]``, ideal / ADC / ADC + noise."""
    s = g.shape[0]
    sw = np.ones(s, F32)
    x = rng.uniform(-1, 1, (b, k)).astype(F32)
    out, work, ref = (np.empty((b, n), F32) for _ in range(3))
    mat = g[0] if what == "row" else g[0].T
    t_np = best(lambda: np.matmul(x, mat, out=ref), repeat)
    threads = _kernels.n_threads_default()
    e2, e3, e4 = np.zeros((0, 0), F32), np.zeros((0, 0, 0), F32), np.zeros((0, 0, 0, 0), F32)
    nb = -(-k // block)
    adc = np.full((nb, s), 200.0, F32)
    rms = np.full((nb, s, n), 20.0, F32)
    noise = rng.standard_normal((nb, s, b, n), dtype=F32)
    t_ideal = best(lambda: kernel(x, g, sw, block, 0, e2, 0.0, e3, e4, work, out, threads), repeat)
    t_adc = best(lambda: kernel(x, g, sw, block, 6, adc, 0.0, e3, e4, work, out, threads), repeat)
    t_non = best(
        lambda: kernel(x, g, sw, block, 6, adc, 0.05, rms, noise, work, out, threads), repeat
    )
    rows, cols = (k, n) if what == "row" else (n, k)
    print(
        f"{label} B={b:5d} R={rows:4d} C={cols:4d} ({nb} {what} blocks): numpy "
        f"{t_np * 1e3:7.3f} ms | ideal {t_ideal / t_np:5.2f}x | adc6 {t_adc / t_np:5.2f}x"
        f" | adc6+noise {t_non / t_np:5.2f}x"
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
