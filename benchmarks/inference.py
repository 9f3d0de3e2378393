"""Inference speed of the crossbar runtime, as ratios measured in one run on this machine.

    python benchmarks/inference.py [--batch 64] [--repeats 15] [--threads 1] [--profile]

Printed (medians over ``--repeats`` after warm-up; no asserts):

* **throughput vs onnxruntime**: ``Engine`` in ideal mode against onnxruntime's CPU provider
  on the same ONNX file, both at ``--threads`` threads (onnxruntime: ``intra_op_num_threads``,
  ``inter_op_num_threads = 1``, no spinning; the engine: ``threads=`` for its OpenMP kernels and
  threadpoolctl for BLAS), for the bundled ResNet-8 and ViT at ``--batch``. The two are timed
  alternately so both see the same machine load. Goal ≥ 0.5.
* **first call**: the ideal engine's first forward (graph rebinding to the batch; an ideal
  engine needs no converter calibration) ÷ a steady-state forward, reported separately so
  that it does not enter the throughput.
* **MVM vs NumPy**: for every crossbar layer of ResNet-8, ViT and the 784-256-128-10 MLP, the
  engine's MVM (``Engine.mvm``: the tiled-MVM kernel and its wrapper, on the im2col'd inputs)
  ÷ a plain NumPy float32 ``x @ W`` of the same shapes; and the whole crossbar layer
  (``CrossbarReads.run``: im2col, DAC, MVM, bias, output layout) ÷ the same matmul. Goal ≤ 1.5.
* **noise + ADC cost**: a forward in non-ideal mode (8-bit DAC/ADC, read noise) ÷ one in ideal
  mode, per model (no goal; a figure to watch), and the non-ideal engine's first call (it
  calibrates the DAC/ADC ranges on that batch) ÷ its steady-state forward.

``--profile`` adds a cProfile of the engine's forward per model and the time spent in each
kernel and in each digital op kind.

BLAS and OpenMP thread counts are set with threadpoolctl, and the BLAS libraries found are
printed. ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` select OpenBLAS kernels; some machines
set them to work around old OpenBLAS bugs, and they slow a current NumPy. When either is set,
the script reruns itself once without them (``--child``) and prints both tables.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from threadpoolctl import threadpool_info, threadpool_limits

from xbarc import api
from xbarc.ir import interp
from xbarc.ir import ops as O
from xbarc.passes import ChipConfig
from xbarc.runtime import engine as engine_mod
from xbarc.runtime.engine import Engine

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
CORETYPE_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
Array = np.ndarray[Any, Any]


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def alternate(
    fa: Callable[[], object], fb: Callable[[], object], repeats: int
) -> tuple[float, float]:
    """Median times of ``fa`` and ``fb`` run alternately (same machine load for both)."""
    fa()
    fb()
    ta, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fa()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fb()
        tb.append(time.perf_counter() - t0)
    return float(np.median(ta)), float(np.median(tb))


def compile_to(model: str, folder: Path, **fields: Any) -> Path:
    out = folder / f"{model}.mapped.bin"
    api.compile_model(MODELS / f"{model}.onnx", ChipConfig(**fields), output=out, batch=1)
    return out


def input_batch(eng: Engine, batch: int) -> Array:
    return np.random.default_rng(0).standard_normal((batch, *eng.input_shape)).astype(np.float32)


# ------------------------------------------------------------------ measurements


def vs_onnxruntime(model: str, path: Path, batch: int, threads: int, repeats: int) -> dict:
    eng = Engine.load(path, ideal=True, threads=threads)
    x = input_batch(eng, batch)
    t0 = time.perf_counter()
    eng.forward(x)
    first = time.perf_counter() - t0
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # onnxruntime's workers spin after each run by default; timed alternately with the engine
    # on a small machine, they would take the cores from the engine's next forward (whose
    # OpenMP threads wait passively, see runtime/__init__.py). Neither side spins.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    sess = ort.InferenceSession(
        str(MODELS / f"{model}.onnx"), so, providers=["CPUExecutionProvider"]
    )
    feed = {sess.get_inputs()[0].name: x}
    want = sess.run(None, feed)[0]
    got = eng.forward(x)
    err = float(np.abs(got - want).max() / np.abs(want).max())
    t_eng, t_ort = alternate(lambda: eng.forward(x), lambda: sess.run(None, feed), repeats)
    return {"engine": t_eng, "ort": t_ort, "first": first, "err": err}


def layer_shapes(eng: Engine, x: Array) -> list[tuple[Any, list[Array], list[Array]]]:
    """(node, args, layer inputs per group) of every crossbar layer, from one taped forward."""
    tape: list[Any] = []
    eng.forward(x, tape=tape)
    return [(n, a, xs) for n, a, _o, xs in tape if isinstance(n.op, O.XbarMVM)]


def mvm_vs_numpy(path: Path, batch: int, threads: int, repeats: int) -> dict:
    eng = Engine.load(path, ideal=True, threads=threads)
    x = input_batch(eng, batch)
    t_mvm = t_xbar = t_np = 0.0
    for node, args, xs in layer_shapes(eng, x):
        layer = eng.layers[node.op.layer]
        for gi, xg in enumerate(xs):
            w = np.ascontiguousarray(layer.gdiff[gi, 0])
            out = np.empty((xg.shape[0], w.shape[1]), np.float32)
            t_np += median_time(lambda xg=xg, w=w, out=out: np.matmul(xg, w, out=out), repeats)
            t_mvm += median_time(lambda la=layer, gi=gi, xg=xg: eng.xbar.mvm(la, gi, xg), repeats)
        t_xbar += median_time(
            lambda node=node, args=args: eng.xbar.run(node, args, keep=False), repeats
        )
    return {"mvm": t_mvm, "xbar": t_xbar, "numpy": t_np}


def noise_cost(path: Path, batch: int, threads: int, repeats: int) -> dict:
    ideal = Engine.load(path, ideal=True, threads=threads)
    real = Engine.load(path, ideal=False, threads=threads)
    x = input_batch(ideal, batch)
    t0 = time.perf_counter()
    real.forward(x)  # calibrates the converter ranges on this batch first
    first = time.perf_counter() - t0
    t_real, t_ideal = alternate(lambda: real.forward(x), lambda: ideal.forward(x), repeats)
    return {"real": t_real, "ideal": t_ideal, "first": first}


# ------------------------------------------------------------------ profile


class TimedKernels:
    """Wraps a kernel module: every call is timed under the function's name."""

    def __init__(self, mod: Any, times: dict[str, float]) -> None:
        self._mod, self._times = mod, times

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._mod, name)
        if not callable(fn):
            return fn

        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self._times[name] += time.perf_counter() - t0

        return timed


def profile(model: str, path: Path, batch: int, threads: int, repeats: int) -> None:
    eng = Engine.load(path, ideal=True, threads=threads)
    x = input_batch(eng, batch)
    eng.forward(x)
    n = max(3, repeats // 3)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        eng.forward(x)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
    print(f"\n--- cProfile of {n} ideal forwards of {model} at batch {batch} (by own time)")
    print("\n".join(line for line in buf.getvalue().splitlines()[4:] if line.strip()))

    kern: dict[str, float] = defaultdict(float)
    ops: dict[str, float] = defaultdict(float)
    eng.k = TimedKernels(eng.k, kern)  # type: ignore[assignment]
    orig = interp.eval_node

    def timed_node(node: Any, args: list[Array]) -> Any:
        t0 = time.perf_counter()
        try:
            return orig(node, args)
        finally:
            ops[type(node.op).__name__] += time.perf_counter() - t0

    interp.eval_node = timed_node  # type: ignore[assignment]
    fast_orig = dict(engine_mod.FAST_DIGITAL)

    def timed_fast(kind: type, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(op: Any, args: list[Array]) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(op, args)
            finally:
                ops[kind.__name__ + "*"] += time.perf_counter() - t0

        return run

    engine_mod.FAST_DIGITAL.update({k: timed_fast(k, f) for k, f in fast_orig.items()})
    xbar_t = 0.0
    orig_xbar = eng.xbar.run

    def timed_xbar(node: Any, args: list[Array], **kw: Any) -> Any:
        nonlocal xbar_t
        t0 = time.perf_counter()
        try:
            return orig_xbar(node, args, **kw)
        finally:
            xbar_t += time.perf_counter() - t0

    eng.xbar.run = timed_xbar  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            eng.forward(x)
        total = (time.perf_counter() - t0) / n
    finally:
        interp.eval_node = orig  # type: ignore[assignment]
        engine_mod.FAST_DIGITAL.update(fast_orig)
    print(f"--- time per forward: {1e3 * total:.1f} ms; crossbar layers {1e3 * xbar_t / n:.1f} ms")
    for name, t in sorted(kern.items(), key=lambda kv: -kv[1]):
        print(f"    kernel {name:14s} {1e3 * t / n:8.2f} ms")
    for name, t in sorted(ops.items(), key=lambda kv: -kv[1])[:12]:
        print(f"    digital {name:13s} {1e3 * t / n:8.2f} ms")
    print("    (* = the engine's inference kernel for that op, not the interpreter's)")


# ------------------------------------------------------------------ main


def blas_summary() -> str:
    parts = []
    for lib in threadpool_info():
        parts.append(
            f"{lib.get('internal_api')} {lib.get('version')} ({lib.get('architecture', '-')}, "
            f"{lib.get('num_threads')} threads, {Path(lib.get('filepath', '')).name})"
        )
    return "; ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", action="store_true", help="cProfile and per-kernel times")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    set_vars = {k: os.environ[k] for k in CORETYPE_VARS if k in os.environ}
    label = (
        "without OPENBLAS_CORETYPE/L2_SIZE"
        if args.child
        else (", ".join(f"{k}={v}" for k, v in set_vars.items()) or "OPENBLAS_CORETYPE unset")
    )
    with threadpool_limits(limits=args.threads), tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(
            f"xbarc inference benchmark: batch {args.batch}, {args.threads} thread(s), "
            f"median of {args.repeats}; {label}"
        )
        print(f"BLAS: {blas_summary()}")
        load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
        print(
            f"onnxruntime {ort.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
            f"load average {load} (a shared machine's other work shows up in every figure)"
        )
        paths = {m: compile_to(m, folder) for m in ("resnet8", "vit", "mlp")}
        rows: list[tuple[str, str, str, str, str]] = []
        for m in ("resnet8", "vit"):
            r = vs_onnxruntime(m, paths[m], args.batch, args.threads, args.repeats)
            rows.append(
                (
                    "ideal throughput ÷ onnxruntime",
                    m,
                    f"{r['ort'] / r['engine']:.3f}",
                    "≥ 0.5",
                    f"engine {1e3 * r['engine']:.1f} ms, ort {1e3 * r['ort']:.1f} ms, "
                    f"rel err {r['err']:.1e}",
                )
            )
            rows.append(
                (
                    "first call ÷ steady forward",
                    m,
                    f"{r['first'] / r['engine']:.2f}",
                    "-",
                    f"first {1e3 * r['first']:.1f} ms (rebinding to the batch)",
                )
            )
        tot = {"mvm": 0.0, "xbar": 0.0, "numpy": 0.0}
        for m in ("resnet8", "vit", "mlp"):
            r = mvm_vs_numpy(paths[m], args.batch, args.threads, args.repeats)
            for k in tot:
                tot[k] += r[k]
            rows.append(
                (
                    "MVM kernel ÷ numpy matmul",
                    m,
                    f"{r['mvm'] / r['numpy']:.3f}",
                    "≤ 1.5",
                    f"mvm {1e3 * r['mvm']:.1f} ms, numpy {1e3 * r['numpy']:.1f} ms",
                )
            )
            rows.append(
                (
                    "crossbar layers ÷ numpy matmul",
                    m,
                    f"{r['xbar'] / r['numpy']:.3f}",
                    "-",
                    f"im2col+DAC+MVM+bias+layout {1e3 * r['xbar']:.1f} ms",
                )
            )
        rows.append(
            (
                "MVM kernel ÷ numpy matmul",
                "all",
                f"{tot['mvm'] / tot['numpy']:.3f}",
                "≤ 1.5",
                f"sum over {3} models",
            )
        )
        for m in ("resnet8", "vit", "mlp"):
            r = noise_cost(paths[m], args.batch, args.threads, args.repeats)
            rows.append(
                (
                    "non-ideal ÷ ideal forward",
                    m,
                    f"{r['real'] / r['ideal']:.2f}",
                    "-",
                    f"noise+DAC/ADC {1e3 * r['real']:.1f} ms vs {1e3 * r['ideal']:.1f} ms",
                )
            )
            rows.append(
                (
                    "non-ideal first call ÷ steady",
                    m,
                    f"{r['first'] / r['real']:.2f}",
                    "-",
                    f"first {1e3 * r['first']:.1f} ms (converter calibration + forward)",
                )
            )
        head = ("ratio", "model", "value", "goal", "details")
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        print()
        for r in [head, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if args.profile:
            for m in ("resnet8", "vit"):
                profile(m, paths[m], args.batch, args.threads, args.repeats)
    if set_vars and not args.child:
        env = {k: v for k, v in os.environ.items() if k not in CORETYPE_VARS}
        print(f"\n=== rerun without {', '.join(set_vars)} ===", flush=True)
        argv = [sys.executable, __file__, *sys.argv[1:], "--child"]
        subprocess.run(argv, env=env, check=False)


if __name__ == "__main__":
    main()
