"""The EaPU-vs-baselines table on real Fashion-MNIST, for the MLP and LeNet-5.

    apt-get update && apt-get install -y dataset-fashion-mnist   # idx files, found automatically
    python benchmarks/fashion_mnist.py [--models mlp,lenet] [--seeds 2]

Same measurements as ``benchmarks/eapu_vs_bp.py`` (accuracy mean ± std over seeds, write
pulses, writes vs bp, max writes per device, training and weight-update energy and their
ratios to bp, energy shares, break-even write energy) on 28×28 Fashion-MNIST with
``models/mlp.onnx`` (784-256-128-10) and ``models/lenet.onnx``, compiled with R_wg = 0.0125 per
µS, σ = c = 2 µS, Adam lr 1e-3, batch 64. To finish well under an hour on 2 cores the MLP trains
``--mlp-epochs`` epochs on the full 60k/10k split and LeNet ``--lenet-epochs`` epochs on the
first ``--lenet-limit`` training and test images (its simulated read noise on every transposed
im2col MVM makes a LeNet step ~100× dearer than an MLP step); the header says which.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eapu_vs_bp import (
    RULES,
    compile_paper,
    print_break_even,
    print_shares,
    print_table,
    run_table,
)

from xbarc.runtime import data as data_mod
from xbarc.runtime.energy import EnergyModel

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mlp,lenet")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--mlp-epochs", type=int, default=5)
    ap.add_argument("--lenet-epochs", type=int, default=3)
    ap.add_argument("--mlp-limit", type=int, default=0)
    ap.add_argument("--lenet-limit", type=int, default=6000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--data-dir", type=Path, default=None)
    args = ap.parse_args()
    try:
        ds = data_mod.load("fashion-mnist", data_dir=args.data_dir, seed=0)
    except Exception as e:  # not installed
        print(f"Fashion-MNIST not found ({e}); apt-get install -y dataset-fashion-mnist")
        return
    print(f"# EaPU vs baselines on Fashion-MNIST ({ds.source})\n")
    print(
        "R_wg = 0.0125 per µS, σ = c = 2 µS, Adam lr 1e-3 (constant), batch 64, "
        f"{args.seeds} seeds; engine and BLAS threads {args.threads}."
    )
    rules = tuple(r for r in args.rules.split(",") if r)
    t_all = time.perf_counter()
    write = EnergyModel.default().constants["write_pulse"].value
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(args.threads):
        work = Path(tmp)
        for model in args.models.split(","):
            epochs = args.mlp_epochs if model == "mlp" else args.lenet_epochs
            limit = args.mlp_limit if model == "mlp" else args.lenet_limit
            mapped = compile_paper(REPO / "models" / f"{model}.onnx", work / f"{model}.mapped.bin")
            base = {
                "optimizer": "adam",
                "lr": 1e-3,
                "epochs": epochs,
                "batch": 64,
                "clip": 2.0,
                "write_noise": 2.0,
                "limit": limit,
            }
            n_train = limit or ds.x_train.shape[0]
            n_test = min(limit, ds.x_test.shape[0]) if limit else ds.x_test.shape[0]
            t0 = time.perf_counter()
            extra = [("pulse lr=0.1", "pulse", {"lr": 0.1})] if "pulse" in rules else []
            stats, u = run_table(
                mapped,
                "fashion-mnist",
                rules=rules,
                seeds=args.seeds,
                base=base,
                threads=args.threads,
                workdir=work,
                data_dir=args.data_dir,
                extra=extra,
            )
            title = (
                f"{model}: {epochs} epochs on {n_train:,} training images, "
                f"tested on {n_test:,}" + (" (a subset via --limit)" if limit else " (all)")
            )
            print(
                f"\n{model}: desired update |u|/R_wg (EaPU, seed 0): median {u[0]:.4f} µS, "
                f"p90 {u[1]:.4f} µS → σ = 2 µS is {2 / u[0]:.0f}× the median, {2 / u[1]:.0f}× "
                "the p90."
            )
            print_table(stats, title)
            print_shares(stats)
            print_break_even(stats, write)
            print(f"\n{model}: {time.perf_counter() - t0:.0f} s")
    print(f"\nwall time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
