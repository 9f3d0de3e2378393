"""Compile time and peak memory of ViT-B/16-sized models, as figures measured in one run.

    python benchmarks/compile_scale.py [--tile 256x256] [--scales 1,2,4] [--scale-by depth]
                                       [--mode cli] [--profile] [--compile-args "--pack none"]

Builds a ViT-B/16-shaped model (86 M weights: d = 768, 12 heads, MLP 3072, 224×224 input,
16×16 patches, 1000 classes) and models ``s`` times smaller for every ``s`` in ``--scales``
with ``onnx.helper`` (``tests/onnx_builders.py``; random weights, no torch), saved with external
data so the frontend memory-maps the weights. ``--scale-by depth`` (default) keeps every layer
of ViT-B/16 and uses ``round(12 / s)`` blocks (12, 6, 3: 86.6 M, 44.1 M, 22.8 M weights);
``--scale-by width`` keeps 12 blocks and uses d = 768/√s rounded to a multiple of 64 (768, 512,
384; heads = d/64, MLP = 4d: 86.6 M, 38.7 M, 22.0 M weights).

Each model is compiled in a fresh subprocess:

* ``--mode cli`` (default): ``python -m xbarc compile model.onnx --tile T -o out.bin --json``,
  the whole path (import, passes, lower, report, mapped.bin written);
* ``--mode passes``: import + passes + ``backend.lower.lower`` + report, nothing written.

and measured: wall time (goal ≤ 10 s) and peak RSS from ``os.wait4`` (``ru_maxrss`` of that
child alone), with peak RssAnon / RssFile of the child polled from ``/proc`` (file-backed pages
are the memory-mapped weights and the memory-mapped output, which the kernel can drop), and
peak RSS ÷ weight bytes (goal ≤ 2). ``--profile`` then runs the largest model once more
in-process in a subprocess, phase by phase (import, each pass, lower, report, write), printing
time, RSS and tracemalloc peak per phase and the top functions of a cProfile.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import onnx_builders as B  # noqa: E402

GOAL_SECONDS = 10.0
GOAL_RATIO = 2.0


@dataclass
class Result:
    scale: int
    label: str
    weights: int
    weight_bytes: int
    seconds: float
    peak_rss: int
    peak_anon: int
    peak_file: int
    tiles: int | None
    returncode: int


def model_spec(scale: int, how: str) -> tuple[B.Spec, str]:
    """The ViT-B/16-shaped model ``scale`` times smaller, and a label."""
    if how == "depth":
        depth = max(1, round(12 / scale))
        return B.vit(depth=depth), f"depth {depth}, d 768"
    d = max(64, round(768 / math.sqrt(scale) / 64) * 64)
    return B.vit(dim=d, heads=d // 64, mlp=4 * d), f"depth 12, d {d}"


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(rest.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return out


def run_measured(cmd: list[str], cwd: Path, stdout: Path) -> tuple[float, int, dict[str, int], int]:
    """Run ``cmd`` (stdout to ``stdout``, stderr beside it); wall seconds, ru_maxrss of that
    child in bytes, polled /proc peaks, return code."""
    peaks: dict[str, int] = {}
    done = threading.Event()
    errpath = stdout.with_suffix(".stderr")
    with open(stdout, "wb") as out, open(errpath, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err)

        def poll() -> None:
            while not done.is_set():
                for k, v in _status(proc.pid).items():
                    peaks[k] = max(peaks.get(k, 0), v)
                done.wait(0.005)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        seconds = time.perf_counter() - t0
        done.set()
        th.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        tail = errpath.read_text(errors="replace")[-3000:]
        sys.stderr.write(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}\n")
    return seconds, usage.ru_maxrss * 1024, peaks, proc.returncode


PASSES_ONLY = """
import json, sys
from xbarc.backend import lower as backend, report
from xbarc.frontend import load_onnx
from xbarc.passes import ChipConfig, default_pipeline, parse_tile
rows, cols = parse_tile(sys.argv[2])
cfg = ChipConfig(tile_rows=rows, tile_cols=cols)
g = load_onnx(sys.argv[1], batch=1)
default_pipeline(cfg)(g)
p = backend.lower(g, cfg, source=sys.argv[1])
print(json.dumps({"totals": report.build(p)["totals"]}))
"""

PROFILE = """
import cProfile, io, json, pstats, sys, time, tracemalloc
from pathlib import Path

def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) * 1024
    return out

rows = []
t_last = time.perf_counter()
def phase(name):
    global t_last
    now = time.perf_counter()
    cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    rows.append({"phase": name, "seconds": now - t_last, "traced_peak": peak, **status()})
    t_last = time.perf_counter()

model, tile, out, mode, overrides = sys.argv[1:6]
prof = cProfile.Profile()
if mode == "trace":
    tracemalloc.start()
else:
    prof.enable()
t_last = time.perf_counter()
from xbarc.backend import lower as backend, report
from xbarc.frontend import load_onnx
from xbarc.passes import ChipConfig, default_passes, parse_tile
phase("import xbarc")
r, c = parse_tile(tile)
cfg = ChipConfig(tile_rows=r, tile_cols=c).replace(**json.loads(overrides))
g = load_onnx(model, batch=1)
phase("load_onnx")
for p in default_passes(cfg):
    p.requires(g); p.run(g); p.ensures(g)
    phase(p.name)
    g.verify()
    phase("  verify")
prog = backend.lower(g, cfg, source=model)
phase("backend.lower")
rep = report.build(prog)
phase("report.build")
backend.save(prog, out)
phase("backend.save")
report.write_files(rep, Path(out))
phase("report files")
if mode == "trace":
    print(json.dumps(rows))
else:
    prof.disable()
    s = io.StringIO()
    st = pstats.Stats(prof, stream=s)
    st.sort_stats("tottime").print_stats(18)
    print(json.dumps(rows))
    sys.stderr.write(s.getvalue())
"""


def config_overrides(compile_args: str) -> dict[str, object]:
    """``--weight-bits 8 --signing offset`` → ``{"weight_bits": 8, "signing": "offset"}``."""
    words = compile_args.split()
    out: dict[str, object] = {}
    for flag, value in zip(words[::2], words[1::2], strict=False):
        key = flag.removeprefix("--").replace("-", "_")
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tile", default="256x256")
    ap.add_argument("--scales", default="1,2,4", help="comma-separated size divisors")
    ap.add_argument("--scale-by", choices=("depth", "width"), default="depth")
    ap.add_argument("--mode", choices=("cli", "passes"), default="cli")
    ap.add_argument("--compile-args", default="", help="extra `xbarc compile` flags (cli mode)")
    ap.add_argument("--profile", action="store_true", help="phase profile of the largest model")
    ap.add_argument("--keep", type=Path, help="build the models here and keep them")
    args = ap.parse_args()
    scales = [int(s) for s in args.scales.split(",")]

    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="xbarc-scale-")
    work = args.keep or Path(tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, tile {args.tile}, "
        f"mode {args.mode}, scale by {args.scale_by}, models in {work}"
    )
    results: list[Result] = []
    paths: dict[int, Path] = {}
    try:
        for s in scales:
            spec, label = model_spec(s, args.scale_by)
            path = work / f"vit_s{s}.onnx"
            t0 = time.perf_counter()
            if not path.exists():
                spec.save(path, external=True)
            build = time.perf_counter() - t0
            paths[s] = path
            out = work / f"vit_s{s}.mapped.bin"
            if args.mode == "cli":
                cmd = [
                    sys.executable,
                    "-m",
                    "xbarc",
                    "compile",
                    str(path),
                    "--tile",
                    args.tile,
                    "-o",
                    str(out),
                    "--json",
                    *args.compile_args.split(),
                ]
            else:
                cmd = [sys.executable, "-c", PASSES_ONLY, str(path), args.tile]
            log = work / f"vit_s{s}.stdout.json"
            secs, rss, peaks, rc = run_measured(cmd, work, log)
            tiles = None
            if rc == 0:
                with contextlib.suppress(ValueError, KeyError):
                    tiles = json.loads(log.read_text())["totals"]["tiles"]
            results.append(
                Result(
                    s,
                    label,
                    spec.n_weights,
                    4 * spec.n_weights,
                    secs,
                    rss,
                    peaks.get("RssAnon", 0),
                    peaks.get("RssFile", 0),
                    tiles,
                    rc,
                )
            )
            print(
                f"  scale {s}: built in {build:.1f} s, compiled in {secs:.2f} s"
                + (f", out.bin {mib(out.stat().st_size)}" if out.exists() else "")
            )
            if out.exists() and not args.keep:
                out.unlink()  # keep the disk footprint at one output at a time

        print()
        head = (
            f"{'scale':>5}  {'model':<17} {'weights':>12} {'weight MiB':>10} {'tiles':>6} "
            f"{'time s':>7} {'peak RSS':>10} {'anon':>9} {'file':>9} {'RSS/W':>6}"
        )
        print(head)
        print("-" * len(head))
        for r in results:
            ratio = r.peak_rss / r.weight_bytes
            flag = (
                ("" if r.seconds <= GOAL_SECONDS else " t>goal")
                + ("" if ratio <= GOAL_RATIO else " m>goal")
                + ("" if r.returncode == 0 else " FAILED")
            )
            print(
                f"{r.scale:>5}  {r.label:<17} {r.weights:>12,} {r.weight_bytes / 2**20:>10,.0f} "
                f"{r.tiles if r.tiles is not None else '-':>6} {r.seconds:>7.2f} "
                f"{mib(r.peak_rss):>10} {mib(r.peak_anon):>9} {mib(r.peak_file):>9} "
                f"{ratio:>6.2f}{flag}"
            )
        print(
            f"goals: compile time <= {GOAL_SECONDS:g} s, peak RSS / weight bytes <= "
            f"{GOAL_RATIO:g} (anon = heap, file = mapped weights and output pages)"
        )
        if len(results) > 1:
            a, b = results[0], results[-1]
            print(
                f"scaling {b.scale}→{a.scale}: weights ×{a.weights / b.weights:.2f}, "
                f"time ×{a.seconds / b.seconds:.2f}, peak RSS ×{a.peak_rss / b.peak_rss:.2f}"
            )

        if args.profile:
            big = paths[min(scales)]
            out = work / "profile.mapped.bin"
            for mode in ("trace", "cprofile"):
                cmd = [
                    sys.executable,
                    "-c",
                    PROFILE,
                    str(big),
                    args.tile,
                    str(out),
                    mode,
                    json.dumps(config_overrides(args.compile_args)),
                ]
                res = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
                if res.returncode:
                    sys.stderr.write(res.stderr[-3000:])
                    continue
                rows = json.loads(res.stdout.strip().splitlines()[-1])
                title = (
                    "phases (tracemalloc on: times inflated)"
                    if mode == "trace"
                    else "phases (cProfile on: times inflated)"
                )
                print(f"\n{title}, scale {min(scales)}:")
                print(
                    f"  {'phase':<20} {'s':>6} {'traced peak':>12} {'RSS':>10} {'anon':>9} "
                    f"{'file':>9} {'HWM':>10}"
                )
                for row in rows:
                    print(
                        f"  {row['phase']:<20} {row['seconds']:>6.2f} "
                        f"{mib(row['traced_peak']) if mode == 'trace' else '-':>12} "
                        f"{mib(row['VmRSS']):>10} {mib(row['RssAnon']):>9} "
                        f"{mib(row['RssFile']):>9} {mib(row['VmHWM']):>10}"
                    )
                if mode == "cprofile":
                    print("\ntop functions by own time:")
                    print("\n".join(res.stderr.strip().splitlines()[:40]))
                if out.exists():
                    out.unlink()
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
