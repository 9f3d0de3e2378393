"""Library entry points the CLI calls (each usable from Python and tests)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xbarc.backend import lower as backend
from xbarc.backend import report as report_mod
from xbarc.errors import DataError, XbarcError
from xbarc.frontend import load_onnx
from xbarc.fsutil import remove_stale_temps
from xbarc.passes import ChipConfig, default_pipeline
from xbarc.passes.base import Pass

Progress = Callable[[str, float], None]
"""Progress hook: (description, fraction done in [0, 1])."""


@dataclass
class CompileResult:
    """What ``xbarc compile`` produced."""

    program: backend.Program
    report: dict[str, Any]
    output: Path
    report_files: list[Path]


def default_output(model: Path) -> Path:
    """``vit.onnx`` → ``vit.mapped.bin`` in the current folder."""
    return Path(f"{model.name.removesuffix('.onnx')}.mapped.bin")


def compile_model(
    model: Path,
    cfg: ChipConfig,
    *,
    output: Path | None = None,
    batch: int = 1,
    dump_ir: Path | None = None,
    verify_each: bool = True,
    progress: Progress | None = None,
) -> CompileResult:
    """Import ``model``, run the default pipeline, write mapped.bin and the report files."""
    out = output or default_output(model)
    if out.exists() and out.is_dir():
        raise XbarcError(f"{out}: output path is a directory")
    if not out.parent.exists():
        raise XbarcError(f"{out.parent}: output folder does not exist")
    if cfg.energy:  # fail before any work, not when the mapped.bin is later run
        from xbarc.runtime.energy import EnergyModel

        EnergyModel.default().with_overrides(cfg.energy, where="chip config")
    note = progress or (lambda _d, _f: None)
    note("import", 0.0)
    g = load_onnx(model, batch=batch)
    pm = default_pipeline(cfg, verify_each=verify_each, dump_dir=dump_ir)
    n = len(pm.passes)

    def on_pass(p: Pass, i: int) -> None:
        note(p.name, 0.1 + 0.6 * i / n)

    pm.on_pass = on_pass
    pm(g)
    note("lower", 0.7)
    program = backend.lower(g, cfg, source=model)
    rep = report_mod.build(program)
    program.extra["report_totals"] = rep["totals"]
    note("write", 0.8)
    backend.save(program, out)
    files = report_mod.write_files(rep, out)
    note("done", 1.0)
    return CompileResult(program, rep, out, files)


# ---------------------------------------------------------------------------- eval


def load_data(name: str, engine: Any, *, data_dir: Path | None, seed: int, limit: int = 0) -> Any:
    """A data set adapted to the program's per-sample input shape.

    ``synthetic`` is generated for the program: its input shape, and one class per output
    value. A classification set needs a score per class in the program's output.
    """
    from xbarc.runtime import data as data_mod

    engine_input, engine_output = engine.input_shape, engine.output_shape
    engine_dtype = engine.program.graph.inputs[0].type.dtype.numpy
    if engine_dtype.kind != "f":
        raise DataError(
            f"the model's input is {engine_dtype} (token ids?); xbarc's data sets hold float "
            "samples: run such a model through the Python API (Engine.forward)"
        )
    synthetic = None
    if name.lower() == "synthetic":
        synthetic = data_mod.SyntheticSpec(
            shape=engine_input, classes=data_mod.synthetic_classes(engine_output)
        )
    ds = data_mod.load(name, data_dir=data_dir, seed=seed, synthetic=synthetic)
    data_mod.check_classes(ds, engine_output)
    ds = ds.adapted(engine_input)
    return ds.limited(limit) if limit else ds


def evaluate(
    mapped: Path,
    data: str,
    *,
    data_dir: Path | None = None,
    ideal: bool = False,
    seed: int = 0,
    threads: int | None = None,
    kernels: str = "cython",
    limit: int = 0,
    batch: int = 256,
    progress: Progress | None = None,
    verify: bool = True,
) -> dict[str, Any]:
    """Run the test split through the mapped program; accuracy, output error, counters, energy.

    The output error is the relative RMS difference to the same program with ideal device
    settings (skipped with ``ideal``). ``verify=False`` skips the array checksums on load.
    """
    from xbarc.runtime.energy import EnergyModel, format_constants
    from xbarc.runtime.engine import Engine

    note = progress or (lambda _d, _f: None)
    prog = backend.load(mapped, verify=verify)
    eng = Engine(prog, ideal=ideal, seed=seed, threads=threads, kernels=kernels)
    ds = load_data(
        data,
        eng,
        data_dir=data_dir,
        seed=seed,
        limit=limit,
    )
    ref = (
        None
        if ideal
        else Engine(eng.program, ideal=True, seed=seed, threads=threads, kernels=kernels)
    )
    x, y = ds.x_test, ds.y_test
    if x.shape[0] == 0:
        raise XbarcError(f"data set {ds.name} has no test samples")
    if not ideal:  # converter ranges from the first batch (ideal converters have none)
        eng.calibrate(x[: min(batch, x.shape[0])])
    correct = 0
    err_num = err_den = 0.0
    for i in range(0, x.shape[0], batch):
        xb = x[i : i + batch]
        out = eng.forward(xb)
        if ds.classes:
            correct += int((out.reshape(out.shape[0], -1).argmax(axis=1) == y[i : i + batch]).sum())
        if ref is not None:
            r = ref.forward(xb)
            err_num += float(((out - r) ** 2).sum())
            err_den += float((r**2).sum())
        note("eval", min(1.0, (i + batch) / x.shape[0]))
    p = eng.program
    cfg = p.config
    model = (
        EnergyModel.default().with_overrides(cfg.energy, where="chip config [energy]")
        if cfg.energy
        else EnergyModel.default()
    )
    macs = sum(n.placement.macs for n in p.graph.nodes if n.placement is not None)
    energy = model.breakdown(
        eng.counters,
        eng.digital,
        dac_bits=1 if cfg.input_mode == "bit-serial" else (0 if ideal else cfg.dac_bits),
        adc_bits=0 if ideal else cfg.adc_bits,
        samples=x.shape[0],
        gpu_flops_per_sample=2.0 * macs,
        training=False,
    )
    return {
        "model": p.source.get("name", p.graph.name),
        "data": ds.name,
        "data_source": ds.source,
        "samples": int(x.shape[0]),
        "accuracy": correct / x.shape[0] if ds.classes else None,
        "output_error": None if ref is None else (err_num / err_den) ** 0.5 if err_den else 0.0,
        "ideal": ideal,
        "seed": seed,
        "config_hash": cfg.hash(),
        "counters": eng.counters.to_dict(),
        "counters_totals": eng.counters.totals(),
        "digital": eng.digital.to_dict(),
        "energy": energy.to_dict(),
        "energy_rows": energy.rows(),
        "constants": format_constants(model),
    }


# ---------------------------------------------------------------------------- train


def train(
    mapped: Path,
    data: str,
    cfg: Any,
    *,
    output: Path | None = None,
    data_dir: Path | None = None,
    threads: int | None = None,
    kernels: str = "cython",
    resume: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
    checkpoint: bool = True,
    verify: bool = True,
) -> dict[str, Any]:
    """Train a mapped program on-chip; write the trained mapped.bin and its report files.

    ``verify=False`` skips the array checksums of the file read (``mapped``, or the
    checkpoint with ``resume``).
    """
    from xbarc.backend import lower as backend_mod
    from xbarc.runtime.engine import Engine
    from xbarc.runtime.train import Trainer, prepare_data

    out = output or Path(f"{mapped.name.removesuffix('.bin').removesuffix('.mapped')}.trained.bin")
    ckpt = Path(f"{out}.ckpt")
    start = mapped
    if resume:
        if not ckpt.exists():
            raise XbarcError(f"--resume: no checkpoint {ckpt} (it is written after every epoch)")
        start = ckpt
    prog = backend_mod.load(start, verify=verify)
    eng = Engine(prog, ideal=cfg.rule == "float", seed=cfg.seed, threads=threads, kernels=kernels)
    ds = load_data(
        data,
        eng,
        data_dir=data_dir,
        seed=cfg.seed,
    )
    trainer = Trainer(eng, cfg, prepare_data(ds, eng, cfg))
    if resume:
        trainer.restore(prog)
    for epoch in range(trainer.epoch, cfg.epochs):
        rec = trainer.run_epoch(epoch, progress)
        if progress is not None:
            progress({"epoch_done": epoch, "record": rec})
        if checkpoint:
            trainer.checkpoint(ckpt)
    result = trainer.result()
    trained = trainer.trained_program()
    backend_mod.save(trained, out)
    if ckpt.exists():
        ckpt.unlink()
    remove_stale_temps(ckpt)  # of a checkpoint write killed in an earlier run
    summary = result.to_dict()
    summary["output"] = str(out)
    summary["data"] = trainer.data.name
    summary["data_source"] = trainer.data.source
    files = write_train_report(summary, out)
    summary["files"] = [str(f) for f in files]
    return summary


def write_train_report(summary: dict[str, Any], out: Path) -> list[Path]:
    """``<out>.report.json`` (everything) and ``<out>.report.csv`` (per-epoch metrics)."""
    import json

    from xbarc.fsutil import atomic_write_text

    stem = out.with_suffix("") if out.suffix == ".bin" else out
    jpath, cpath = Path(f"{stem}.report.json"), Path(f"{stem}.report.csv")
    atomic_write_text(jpath, json.dumps(summary, indent=2, sort_keys=True, default=float) + "\n")
    atomic_write_text(cpath, report_mod.rows_csv(summary["history"]))
    return [jpath, cpath]
