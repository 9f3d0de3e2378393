"""Speed of one on-chip EaPU training step against the plain NumPy float32 matmuls of the step.

    python benchmarks/train_step.py [--threads 1,2] [--repeat 7] [--profile]

For the 784-256-128-10 MLP (``models/mlp.onnx``) and LeNet-5 (``models/lenet.onnx``), compiled
with R_wg = 0.0125 per µS, batch 64, Adam, rule ``eapu`` (σ = c = 2 µS):

* **xbarc step**: the time per batch of the training loop (``Trainer.run_epoch`` over 16
  batches of real Fashion-MNIST images when the Debian package is installed, else the seeded
  synthetic set; the epoch's evaluation is on one sample and not counted), so it includes the
  converter re-calibration every ``RECAL_EVERY`` steps and the counter bookkeeping; the median
  over ``--repeat`` epochs. Two device settings: the default chip (8-bit DAC/ADC, 1 % read
  noise, programming noise) and ideal periphery (``Engine(ideal=True)``: float converters, no
  noise), which isolates the cost of the simulated non-idealities.
* **floor**: for every crossbar layer the three float32 products of the same shapes,
  ``x @ W``, ``dy @ Wᵀ`` and ``xᵀ @ dy`` (convolutions im2col'd: ``x`` is ``[N·Ho·Wo, kh·kw·Cin]``),
  median over repeats. Goal: xbarc step / floor ≤ 1.5.
* **aihwkit** (only when importable): ``AnalogSGD`` step of the same MLP on a pulsed
  ``ConstantStepDevice``; goal xbarc / aihwkit ≤ 1/3. Rows are skipped otherwise.

Threads: engine kernels and BLAS (threadpoolctl) use the same count, listed per row. The script
re-executes itself once with ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads that spin after a
parallel region starve OpenBLAS's threads on 2 cores) and without ``OPENBLAS_CORETYPE`` /
``OPENBLAS_L2_SIZE`` (for this command only; see shared/anchors.md), and says so.
``--profile`` prints the cProfile top functions of the MLP step.
"""

from __future__ import annotations

import argparse
import os
import sys

_ENV_NOTE = []
if os.environ.get("XBARC_BENCH_ENV") != "1":
    env = dict(os.environ)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if env.pop(var, None) is not None:
            _ENV_NOTE.append(f"unset {var}")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["XBARC_BENCH_ENV"] = "1"
    env["XBARC_BENCH_ENV_NOTE"] = "; ".join(_ENV_NOTE)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import cProfile  # noqa: E402
import io  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from xbarc import api  # noqa: E402
from xbarc.backend import lower as backend  # noqa: E402
from xbarc.ir import ops as O  # noqa: E402
from xbarc.passes import ChipConfig  # noqa: E402
from xbarc.runtime import data as data_mod  # noqa: E402
from xbarc.runtime.engine import Engine, limit_other_blas  # noqa: E402
from xbarc.runtime.train import TrainConfig, Trainer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BATCH = 64
STEPS = 16


def load_data(shape: tuple[int, ...]) -> tuple[data_mod.Dataset, str]:
    try:
        ds = data_mod.load("fashion-mnist", seed=0)
        name = "Fashion-MNIST"
    except Exception:  # not installed: seeded synthetic data of the same shape
        ds = data_mod.load("synthetic", seed=0, synthetic=data_mod.SyntheticSpec(shape=shape))
        name = "synthetic"
    ds = ds.adapted(shape)
    n = BATCH * STEPS
    small = data_mod.Dataset(
        ds.name, ds.x_train[:n], ds.y_train[:n], ds.x_test[:1], ds.y_test[:1], ds.classes, ds.source
    )
    return small, name


def trainer(prog_path: Path, ideal: bool, threads: int, ds: data_mod.Dataset) -> Trainer:
    eng = Engine(backend.load(prog_path), ideal=ideal, seed=0, threads=threads)
    cfg = TrainConfig(rule="eapu", optimizer="adam", lr=1e-3, batch=BATCH, epochs=10**6)
    return Trainer(eng, cfg, ds)


def time_epochs(tr: Trainer, repeat: int) -> float:
    """Median seconds per training step over ``repeat`` epochs (evaluation excluded)."""
    tr.run_epoch(0)  # warm-up (graph instantiation, calibration, buffers)
    per_step = []
    orig = tr.evaluate
    tr.evaluate = lambda x, y: (0.0, 0.0)  # type: ignore[method-assign]
    try:
        for e in range(1, repeat + 1):
            t0 = time.perf_counter()
            tr.run_epoch(e)
            per_step.append((time.perf_counter() - t0) / STEPS)
    finally:
        tr.evaluate = orig  # type: ignore[method-assign]
    return statistics.median(per_step)


def floor_shapes(prog_path: Path, ds: data_mod.Dataset) -> list[tuple[int, int, int, int]]:
    """(positions P, rows R, cols C, groups) of every crossbar layer at batch 64."""
    eng = Engine(backend.load(prog_path), ideal=True, seed=0, threads=1)
    tape: list[Any] = []
    eng.forward(ds.x_train[:BATCH], tape=tape)
    out = []
    for node, _args, _outs, xs in tape:
        if isinstance(node.op, O.XbarMVM):
            lm = eng.layers[node.op.layer].lm
            out.append((xs[0].shape[0], lm.rows, lm.cols, lm.groups))
    return out


def time_floor(shapes: list[tuple[int, int, int, int]], repeat: int) -> float:
    rng = np.random.default_rng(0)
    mats = []
    for p, r, c, g in shapes:
        for _ in range(g):
            x = rng.standard_normal((p, r), dtype=np.float32)
            w = rng.standard_normal((r, c), dtype=np.float32)
            dy = rng.standard_normal((p, c), dtype=np.float32)
            mats.append((x, w, dy))

    def once() -> None:
        for x, w, dy in mats:
            _ = x @ w
            _ = dy @ w.T
            _ = x.T @ dy

    once()
    ts = []
    for _ in range(max(repeat * 5, 20)):
        t0 = time.perf_counter()
        once()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def time_aihwkit(repeat: int) -> float | None:
    try:
        import torch
        from aihwkit.nn import AnalogLinear, AnalogSequential
        from aihwkit.optim import AnalogSGD
        from aihwkit.simulator.configs import SingleRPUConfig
        from aihwkit.simulator.configs.devices import ConstantStepDevice
    except Exception:
        return None
    cfg = SingleRPUConfig(device=ConstantStepDevice())
    model = AnalogSequential(
        AnalogLinear(784, 256, rpu_config=cfg),
        torch.nn.ReLU(),
        AnalogLinear(256, 128, rpu_config=cfg),
        torch.nn.ReLU(),
        AnalogLinear(128, 10, rpu_config=cfg),
    )
    opt = AnalogSGD(model.parameters(), lr=0.1)
    opt.regroup_param_groups(model)
    x, y = torch.randn(BATCH, 784), torch.randint(0, 10, (BATCH,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    ts = []
    for _ in range(max(20, repeat * 5)):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def profile_step(tr: Trainer, top: int = 14) -> str:
    tr.run_epoch(0)
    tr.evaluate = lambda x, y: (0.0, 0.0)  # type: ignore[method-assign]
    pr = cProfile.Profile()
    pr.enable()
    for e in range(1, 4):
        tr.run_epoch(e)
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(top)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if "ncalls" in ln)
    return "\n".join(lines[start : start + top + 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--models", default="mlp,lenet")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    note = os.environ.get("XBARC_BENCH_ENV_NOTE", "")
    blas = {i["internal_api"]: i.get("architecture") for i in threadpool_info()}
    print("# xbarc EaPU training step vs the NumPy float32 floor\n")
    print(
        f"batch {BATCH}; rule eapu, Adam lr 1e-3, σ = c = 2 µS, R_wg = 0.0125/µS; BLAS {blas}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
        + (f"; {note} for this command" if note else "; OPENBLAS_CORETYPE/L2_SIZE were not set")
        + f"; {os.cpu_count()} CPUs (shared, noisy: medians)."
    )
    rows = []
    aihw_ms = None
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            mapped = Path(tmp) / f"{model}.mapped.bin"
            api.compile_model(
                REPO / "models" / f"{model}.onnx", ChipConfig(weight_scale=0.0125), output=mapped
            )
            eng0 = Engine(backend.load(mapped), ideal=True, threads=1)
            ds, dname = load_data(eng0.input_shape)
            shapes = floor_shapes(mapped, ds)
            for t in threads:
                with threadpool_limits(t):
                    floor = time_floor(shapes, args.repeat)
                # The engine sets its own thread pools (OpenMP at t, SciPy's BLAS at t,
                # other BLAS at 1); see Engine / limit_other_blas.
                with threadpool_limits(t, user_api="blas"):
                    limit_other_blas()
                    real = time_epochs(trainer(mapped, False, t, ds), args.repeat)
                    ideal = time_epochs(trainer(mapped, True, t, ds), args.repeat)
                rows.append((model, dname, t, floor, real, ideal))
                print(f"  {model} threads {t}: done", file=sys.stderr, flush=True)
            if model == "mlp":
                with threadpool_limits(1):
                    aihw = time_aihwkit(args.repeat)
                aihw_ms = None if aihw is None else 1e3 * aihw
                if args.profile:
                    with threadpool_limits(1):
                        prof = profile_step(trainer(mapped, False, 1, ds))
                    print("\ncProfile, MLP, default chip, 1 thread, 3 epochs of 16 steps:\n")
                    print("```\n" + prof + "\n```")
    print(
        "\n| model | data | threads | floor (ms) | xbarc step, default chip (ms) | ratio | "
        "xbarc step, ideal periphery (ms) | ratio | goal |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for model, dname, t, floor, real, ideal in rows:
        print(
            f"| {model} | {dname} | {t} | {1e3 * floor:.3f} | {1e3 * real:.2f} | "
            f"{real / floor:.1f}× | {1e3 * ideal:.2f} | {ideal / floor:.1f}× | ≤ 1.5× |"
        )
    if aihw_ms is None:
        print("\naihwkit is not importable here: its rows are skipped (see shared/anchors.md).")
    else:
        mlp1 = next(r for r in rows if r[0] == "mlp" and r[2] == 1)
        print(
            f"\naihwkit AnalogSGD, ConstantStep, MLP, 1 thread: {aihw_ms:.2f} ms/step; "
            f"xbarc / aihwkit = {1e3 * mlp1[4] / aihw_ms:.2f} (goal ≤ 0.33)"
        )


if __name__ == "__main__":
    main()
