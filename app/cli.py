"""The ``xbarc`` command line: a thin typer driver over the library.

Every command is a few lines that call library functions, so anything the CLI does a test can
do too. An :class:`~xbarc.errors.XbarcError` becomes one line on stderr and exit code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from xbarc import __version__
from xbarc.errors import XbarcError
from xbarc.passes.config import parse_tile

if TYPE_CHECKING:
    from xbarc.passes import ChipConfig

app = typer.Typer(
    name="xbarc",
    help="Compile neural networks onto analog crossbar tiles and train them on-chip with EaPU.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)
err = Console(stderr=True)
out = Console()
if not out.is_terminal:  # pipes and files: don't squeeze tables into 80 columns
    out = Console(width=160)
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        out.print(f"xbarc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and verify the IR after every pass.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print version.")
    ] = False,
) -> None:
    _state["debug"] = debug


ModelArg = Annotated[str, typer.Argument(help="ONNX file, or the name of a bundled model.")]
VerifyOpt = Annotated[
    bool,
    typer.Option(
        "--verify/--no-verify",
        help="Check every array's CRC-32 on load (--no-verify skips the pass over huge files).",
    ),
]


@app.command(
    "ir",
    help=("Print the IR of an ONNX model.  Example: [bold]xbarc ir models/vit.onnx --batch 2[/]."),
)
def ir_cmd(
    model: ModelArg,
    batch: Annotated[int, typer.Option(help="Batch size for a symbolic batch axis.")] = 1,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the graph as JSON (ops, attributes, types).")
    ] = False,
) -> None:
    """Print the IR of an ONNX model."""
    from xbarc.backend.program_json import graph_to_json
    from xbarc.frontend import load_onnx
    from xbarc.models import resolve

    g = load_onnx(resolve(model), batch=batch)
    if as_json:
        _print_json(graph_to_json(g, lambda v: v.name or "const"))
        return
    sys.stdout.write(str(g))


@contextmanager
def _progress(label: str) -> Iterator[Callable[[str, float], None]]:
    """A rich progress bar on stderr; yields a hook (description, fraction).

    Not drawn when stderr is not a terminal (logs and pipes stay clean).
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if not err.is_terminal:
        yield lambda _d, _f: None
        return

    with Progress(
        TextColumn("[bold]{task.fields[label]}[/] {task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=1.0, label=label)

        def hook(desc: str, frac: float) -> None:
            bar.update(task, description=desc, completed=frac)

        yield hook


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _chip_config(config: Path | None, **flags: object) -> ChipConfig:
    from xbarc.passes import ChipConfig

    given = {k: v for k, v in flags.items() if v is not None}
    if "tile" in given:
        given["tile_rows"], given["tile_cols"] = parse_tile(str(given.pop("tile")))
    if config is not None:
        cfg = ChipConfig.from_toml(config, **given)
        if cfg.energy:  # checked here to name the file
            from xbarc.runtime.energy import EnergyModel

            EnergyModel.default().with_overrides(cfg.energy, where=str(config))
        return cfg
    return ChipConfig().replace(**given) if given else ChipConfig()


@app.command(
    "compile",
    help=(
        "Map a model onto crossbar tiles.  Example: [bold]xbarc compile models/vit.onnx "
        "--tile 256x256 -o vit.mapped.bin[/]."
    ),
)
def compile_cmd(
    model: ModelArg,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="mapped.bin to write.")
    ] = None,
    tile: Annotated[
        str | None, typer.Option(help="Tile size ROWSxCOLS \\[default: 256x256].")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Chip TOML (\\[chip], \\[device], \\[energy]).")
    ] = None,
    batch: Annotated[int, typer.Option(help="Batch size the IR is instantiated at.")] = 1,
    weight_bits: Annotated[
        int | None, typer.Option(help="Weight bits; 0 = analog \\[default: 0].")
    ] = None,
    cell_bits: Annotated[
        int | None, typer.Option(help="Bits per cell (bit slices) \\[default: 2].")
    ] = None,
    signing: Annotated[str | None, typer.Option(help="differential | offset.")] = None,
    weight_scale: Annotated[
        float | None, typer.Option(help="Weight per µS (R_wg); 0 = per layer \\[default: 0].")
    ] = None,
    dac_bits: Annotated[
        int | None, typer.Option(help="Input DAC bits; 0 = ideal \\[default: 8].")
    ] = None,
    adc_bits: Annotated[
        int | None, typer.Option(help="Column ADC bits; 0 = ideal \\[default: 8].")
    ] = None,
    input_mode: Annotated[str | None, typer.Option(help="parallel | bit-serial.")] = None,
    pack: Annotated[str | None, typer.Option(help="none | greedy \\[default: greedy].")] = None,
    replicate: Annotated[int | None, typer.Option(help="Most copies of a hot layer.")] = None,
    tile_budget: Annotated[
        int | None, typer.Option(help="Most tiles on the chip (0 = any).")
    ] = None,
    dump_ir: Annotated[
        Path | None, typer.Option(help="Write the IR after every pass here.")
    ] = None,
    plot: Annotated[bool, typer.Option(help="Write a tile-utilisation heatmap PNG.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Map a model onto crossbar tiles."""
    from xbarc import api
    from xbarc.backend import report
    from xbarc.models import resolve

    cfg = _chip_config(
        config,
        tile=tile,
        weight_bits=weight_bits,
        cell_bits=cell_bits,
        signing=signing,
        weight_scale=weight_scale,
        dac_bits=dac_bits,
        adc_bits=adc_bits,
        input_mode=input_mode,
        pack=pack,
        replicate=replicate,
        tile_budget=tile_budget,
    )
    with _progress("compile") as hook:
        res = api.compile_model(
            resolve(model),
            cfg,
            output=output,
            batch=batch,
            dump_ir=dump_ir,
            verify_each=True,
            progress=hook,
        )
    files = [str(p) for p in res.report_files]
    if plot:
        png = (
            res.output.with_suffix("").with_suffix(".tiles.png")
            if res.output.suffix == ".bin"
            else Path(f"{res.output}.tiles.png")
        )
        files.append(str(report.plot(res.report, png)))
    if as_json:
        _print_json({"output": str(res.output), "files": files, **res.report})
        return
    _show_report(res.report)
    out.print(f"wrote [bold]{escape(str(res.output))}[/] and {escape(', '.join(files))}")


def _show_report(rep: dict[str, object]) -> None:
    from rich.table import Table

    t = Table(title=f"tile utilisation: {rep['model']}", title_justify="left")
    cols = [
        ("layer", "layer"),
        ("op", "op"),
        ("logical", "R×C"),
        ("physical", "R×Cphys"),
        ("row_tiles", "rt"),
        ("col_tiles", "ct"),
        ("replicas", "rep"),
        ("tiles", "tiles"),
        ("util_logical", "U log"),
        ("util_physical", "U phys"),
        ("mvms", "MVMs"),
        ("dac", "DAC"),
        ("adc", "ADC"),
        ("digital_ops", "dig ops"),
    ]
    for _, head in cols:
        t.add_column(head, justify="left" if head in ("layer", "op") else "right")
    for row in rep["layers"]:  # type: ignore[attr-defined]
        cells = []
        for key, _ in cols:
            v = row[key]
            cells.append(f"{v:.1%}" if key.startswith("util") else str(v))
        t.add_row(*cells)
    out.print(t)
    tot = rep["totals"]
    assert isinstance(tot, dict)
    out.print(
        f"tiles {tot['tiles']} ({tot['tile_shape']}, {tot['tiles_unpacked']} before packing), "
        f"chip utilisation {tot['chip_utilisation']:.1%}, crossbar share of MACs "
        f"{tot['crossbar_mac_share']:.1%} ({tot['crossbar_macs']:,} xbar / "
        f"{tot['digital_macs']:,} digital MACs per inference)"
    )


@app.command(
    "inspect",
    help=(
        "Show a mapped.bin's manifest and tile table.  Example: [bold]xbarc inspect "
        "vit.mapped.bin[/]."
    ),
)
def inspect_cmd(
    mapped: Annotated[Path, typer.Argument(help="A mapped.bin file.")],
    verify: VerifyOpt = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Show a mapped.bin's manifest and tile table."""
    from rich.table import Table

    from xbarc.backend import container
    from xbarc.backend import lower as backend

    p = backend.load(mapped, verify=verify)
    summary = {
        "file": str(mapped),
        "format": container.inspect(mapped, verify=False),  # checked (or not) by the load
        "xbarc_version": p.extra.get("xbarc_version"),
        "source": p.source,
        "state": p.state,
        "config_hash": p.config.hash(),
        "config": p.config.to_dict(),
        "tiles": p.n_tiles,
        "tile_shape": list(p.tile_shape),
        "layers": [lm.to_dict() for lm in p.layers.values()],
        "tile_table": [
            {
                "tile": t.tile,
                "layer": t.layer,
                "group": t.group,
                "replica": t.replica,
                "rows": [t.row0, t.row0 + t.rows],
                "cols": [t.col0, t.col0 + t.cols],
                "at": [t.trow, t.tcol],
            }
            for t in p.graph.tiles
        ],
    }
    if as_json:
        _print_json(summary)
        return
    src = p.source
    out.print(
        f"[bold]{escape(str(mapped))}[/]: {escape(str(src.get('file', src.get('name'))))} "
        f"(sha256 {src.get('sha256', '?')[:12]}), state {p.state}, "
        f"{p.n_tiles} tiles of {p.tile_shape[0]}x{p.tile_shape[1]}, "
        f"config {p.config.hash()[:12]}"
    )
    t = Table(title="tile table", title_justify="left")
    for h in ("tile", "layer", "group", "replica", "rows", "cols", "at"):
        t.add_column(h)
    for r in summary["tile_table"]:  # type: ignore[union-attr]
        t.add_row(*(str(r[k]) for k in ("tile", "layer", "group", "replica", "rows", "cols", "at")))
    out.print(t)


@app.command(
    "report",
    help=(
        "Reprint the tile-utilisation report.  Example: [bold]xbarc report "
        "vit.mapped.bin --plot[/]."
    ),
)
def report_cmd(
    mapped: Annotated[Path, typer.Argument(help="A mapped.bin file (compiled or trained).")],
    plot: Annotated[bool, typer.Option(help="Write heatmap PNGs beside the file.")] = False,
    verify: VerifyOpt = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Reprint the tile-utilisation report."""
    from xbarc.backend import lower as backend
    from xbarc.backend import report

    p = backend.load(mapped, verify=verify)
    rep = report.build(p)
    files = []
    if plot:
        files.append(str(report.plot(rep, Path(f"{mapped}.tiles.png"))))
        tr = rep.get("training")
        if isinstance(tr, dict):
            for key, label in (("write_pulses", "write pulses"), ("max_writes", "max writes")):
                name = key.replace("_", "-")
                files.append(
                    str(
                        report.plot(
                            rep,
                            Path(f"{mapped}.{name}.png"),
                            values=key,
                            rows=tr["per_tile"],
                            title=f"{rep['model']}: {label} per tile (all training runs)",
                        )
                    )
                )
    if as_json:
        _print_json({**rep, "files": files})
        return
    _show_report(rep)
    if "training" in rep:
        _show_training(rep["training"])  # type: ignore[arg-type]
    if files:
        out.print(f"wrote {', '.join(files)}", markup=False)


def _show_training(tr: dict[str, object]) -> None:
    """Per-tile update counts over all training runs, writes per device, endurance left."""
    from rich.table import Table

    runs = tr["runs"]
    assert isinstance(runs, list)
    t = Table(
        title=f"training: {len(runs)} run(s) "
        + ", ".join(f"{r['rule']} × {r['epochs']} epochs" for r in runs),
        title_justify="left",
    )
    heads = ("tile", "requested", "applied", "skipped", "pulses", "max writes", "mean writes")
    for h in (*heads, "endurance left"):
        t.add_column(h, justify="right")
    for row in tr["per_tile"]:  # type: ignore[attr-defined]
        t.add_row(
            str(row["tile"]),
            f"{row['updates_requested']:,}",
            f"{row['updates_applied']:,}",
            f"{row['updates_skipped']:,}",
            f"{row['write_pulses']:,}",
            f"{row['max_writes']:,}",
            f"{row['mean_writes']:.2f}",
            f"{row['endurance_left']:.4%}",
        )
    out.print(t)
    out.print(
        f"wear: max {tr['max_writes']:,} writes/device (mean {tr['mean_writes']:.2f}); endurance "
        f"{tr['endurance']:.0e} cycles, {tr['endurance_left']:.4%} left on the most-written device"
    )


DataOpt = Annotated[str, typer.Option(help="digits | mnist | fashion-mnist | cifar10 | synthetic.")]
DataDirOpt = Annotated[
    Path | None, typer.Option(help="Folder with the data files (default: $XBARC_DATA/<name>).")
]
KernelsOpt = Annotated[
    str, typer.Option(help="cython (default) | numpy (the reference twins, for debugging).")
]
ThreadsOpt = Annotated[int | None, typer.Option(help="Threads for the kernels \\[default: all].")]


@app.command(
    "eval",
    help=(
        "Run a mapped model on a test set: accuracy, counters, inference energy.  "
        "Example: [bold]xbarc eval digits.mapped.bin --data digits[/]."
    ),
)
def eval_cmd(
    mapped: Annotated[Path, typer.Argument(help="A mapped.bin file.")],
    data: DataOpt = "digits",
    data_dir: DataDirOpt = None,
    ideal: Annotated[bool, typer.Option(help="No noise, float DAC/ADC, exact weights.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of programming and read noise.")] = 0,
    threads: ThreadsOpt = None,
    limit: Annotated[int, typer.Option(help="Use only the first N test samples.")] = 0,
    batch: Annotated[int, typer.Option(help="Samples per forward call.")] = 256,
    kernels: KernelsOpt = "cython",
    verify: VerifyOpt = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run a mapped model on a test set: accuracy, counters, inference energy."""
    from xbarc import api

    with _progress("eval") as hook:
        res = api.evaluate(
            mapped,
            data,
            data_dir=data_dir,
            ideal=ideal,
            seed=seed,
            threads=threads,
            kernels=kernels,
            limit=limit,
            batch=batch,
            progress=hook,
            verify=verify,
        )
    if as_json:
        _print_json(res)
        return
    from rich.table import Table

    acc = res["accuracy"]
    line = f"[bold]{escape(str(res['model']))}[/] on {res['data']} ({res['samples']} test samples"
    line += ", ideal device)" if res["ideal"] else f", seed {res['seed']})"
    out.print(line)
    if acc is not None:
        out.print(f"accuracy: [bold]{acc:.2%}[/]")
    if res["output_error"] is not None:
        out.print(f"output error vs ideal device: {res['output_error']:.3%} (relative RMS)")
    t = Table(title="per-tile counters", title_justify="left")
    fields = ("mvm", "dac", "adc", "cell_reads")
    t.add_column("tile", justify="right")
    for f in fields:
        t.add_column(f, justify="right")
    cnt = res["counters"]
    for k in range(len(cnt["mvm"])):
        t.add_row(str(k), *(f"{cnt[f][k]:,}" for f in fields))
    out.print(t)
    _energy_table(res["energy_rows"], "inference energy")
    _constants_table(res["energy"]["constants_used"])


def _energy_table(rows: list[tuple[str, ...]], title: str) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for h in ("component", "events", "energy", "per sample", "share"):
        t.add_column(h, justify="left" if h == "component" else "right")
    for r in rows:
        t.add_row(*r)
    out.print(t)


def _constants_table(used: list[dict[str, object]]) -> None:
    from rich.table import Table

    from xbarc.runtime.energy import format_value

    t = Table(title="energy constants used (value, node, source)", title_justify="left")
    for h in ("constant", "value", "node", "source"):
        t.add_column(h, overflow="fold")
    for c in used:
        value = format_value(float(c["value"]), str(c["unit"]))  # type: ignore[arg-type]
        t.add_row(str(c["name"]), value, str(c["node"]), escape(f"{c['source']} [{c['tag']}]"))
    out.print(t)


@app.command(
    "train",
    help=(
        "Train a mapped model on-chip with EaPU or a baseline rule.  Example: "
        "[bold]xbarc train digits.mapped.bin --data digits --rule eapu --epochs 10 -o "
        "digits.trained.bin[/]."
    ),
)
def train_cmd(
    mapped: Annotated[Path, typer.Argument(help="A mapped.bin file (compiled or trained).")],
    data: DataOpt = "digits",
    data_dir: DataDirOpt = None,
    rule: Annotated[
        str | None, typer.Option(help="eapu | bp | pulse | mixed | float \\[eapu].")
    ] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam | sgd \\[adam].")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate \\[1e-3].")] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum \\[0.9].")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs \\[10].")] = None,
    batch: Annotated[int | None, typer.Option(help="Batch size \\[64].")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every random choice \\[0].")] = None,
    schedule: Annotated[str | None, typer.Option(help="constant | step | cosine.")] = None,
    step_size: Annotated[
        int | None, typer.Option(help="Epochs per step of the step schedule.")
    ] = None,
    gamma: Annotated[
        float | None, typer.Option(help="Factor of the step schedule \\[0.1].")
    ] = None,
    clip: Annotated[float | None, typer.Option(help="EaPU threshold c in µS \\[2.0].")] = None,
    write_noise: Annotated[
        float | None, typer.Option(help="Write noise σ in µS \\[default: the chip's, 2 µS].")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Use only the first N train/test samples.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML file with a \\[train] table.")] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Trained mapped.bin.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from <output>.ckpt.")] = False,
    compare: Annotated[
        str, typer.Option(help="Also train these rules on the same tiles, e.g. bp,pulse.")
    ] = "",
    threads: ThreadsOpt = None,
    kernels: KernelsOpt = "cython",
    verify: VerifyOpt = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a mapped model on-chip with EaPU or a baseline rule."""
    from xbarc import api
    from xbarc.runtime.train import TrainConfig

    opts: dict[str, object] = {}
    if config is not None:
        opts.update(_toml_table(config, "train"))
    for name, value in (
        ("rule", rule),
        ("optimizer", optimizer),
        ("lr", lr),
        ("momentum", momentum),
        ("epochs", epochs),
        ("batch", batch),
        ("seed", seed),
        ("schedule", schedule),
        ("step_size", step_size),
        ("gamma", gamma),
        ("clip", clip),
        ("limit", limit),
        ("write_noise", write_noise),
    ):
        if value is not None:
            opts[name] = value
    cfg = TrainConfig.from_mapping(opts)
    extra = [r.strip() for r in compare.split(",") if r.strip() and r.strip() != cfg.rule]
    rules = [cfg.rule, *extra]
    cfgs = [TrainConfig.from_mapping({**opts, "rule": r}) for r in rules]  # check all first
    results = []
    for i, (r, rcfg) in enumerate(zip(rules, cfgs, strict=True)):
        target = output if i == 0 else _with_rule(output or Path(mapped.name), r)
        with _train_progress(f"train {r}", rcfg.epochs) as hook:
            res = api.train(
                mapped,
                data,
                rcfg,
                output=target,
                data_dir=data_dir,
                threads=threads,
                kernels=kernels,
                resume=resume and i == 0,
                progress=hook,
                verify=verify,
            )
        results.append(res)
    if as_json:
        _print_json(results[0] if len(results) == 1 else {"runs": results})
        return
    for res in results:
        _show_train(res)
    if len(results) > 1:
        _show_comparison(results)


def _with_rule(path: Path, rule: str) -> Path:
    stem = path.name.removesuffix(".bin").removesuffix(".trained").removesuffix(".mapped")
    return path.with_name(f"{stem}.{rule}.trained.bin")


def _toml_table(path: Path, table: str) -> dict[str, object]:
    from xbarc.fsutil import toml_table

    return toml_table(path, table)


@contextmanager
def _train_progress(label: str, epochs: int) -> Iterator[Callable[[dict[str, object]], None]]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if not err.is_terminal:
        yield lambda _info: None
        return

    with Progress(
        TextColumn("[bold]{task.fields[label]}[/] epoch {task.fields[epoch]}/" + str(epochs)),
        BarColumn(),
        TextColumn(
            "loss {task.fields[loss]} acc {task.fields[acc]} "
            "writes {task.fields[writes]} energy {task.fields[energy]}"
        ),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(
            "", total=1.0, label=label, epoch=1, loss="-", acc="-", writes=0, energy="-"
        )
        writes = 0
        energy = 0.0

        def hook(info: dict[str, object]) -> None:
            nonlocal writes, energy
            if "record" in info:
                rec = info["record"]
                writes += int(getattr(rec, "pulses", 0))
                energy += float(getattr(rec, "energy_j", 0.0))
                bar.update(task, writes=f"{writes:,}", energy=_fmt_j(energy))
                return
            seen, total = int(info["seen"]), int(info["total"])  # type: ignore[call-overload]
            ep = int(info["epoch"])  # type: ignore[call-overload]
            bar.update(
                task,
                completed=(ep + seen / max(total, 1)) / max(epochs, 1),
                epoch=ep + 1,
                loss=f"{float(info['loss']):.4f}",  # type: ignore[arg-type]
                acc=f"{float(info['acc']):.2%}",
            )  # type: ignore[arg-type]

        yield hook


def _fmt_j(j: float) -> str:
    from xbarc.runtime.energy import format_value

    return format_value(j, "J")


def _show_train(res: dict[str, object]) -> None:
    from rich.table import Table

    cfg = res["config"]
    assert isinstance(cfg, dict)
    t = Table(
        title=f"train {cfg['rule']} ({cfg['optimizer']}, lr {cfg['lr']}) on {res['data']}",
        title_justify="left",
    )
    for h in (
        "epoch",
        "loss",
        "train acc",
        "test acc",
        "requested",
        "applied",
        "skipped",
        "pulses",
        "max writes/device",
        "energy",
    ):
        t.add_column(h, justify="right")
    for h in res["history"]:  # type: ignore[attr-defined]
        t.add_row(
            str(h["epoch"] + 1),
            f"{h['loss']:.4f}",
            f"{h['train_acc']:.2%}",
            f"{h['test_acc']:.2%}",
            f"{h['requested']:,}",
            f"{h['applied']:,}",
            f"{h['skipped']:,}",
            f"{h['pulses']:,}",
            f"{h['max_writes']:,}",
            _fmt_j(h["energy_j"]),
        )
    out.print(t)
    cnt = res["tile_counters"]
    assert isinstance(cnt, dict)
    tt = Table(title="per-tile update counters (this run)", title_justify="left")
    fields = (
        "updates_requested",
        "updates_applied",
        "updates_skipped",
        "write_pulses",
        "mvm",
        "mvm_t",
    )
    tt.add_column("tile", justify="right")
    for f in fields:
        tt.add_column(f.replace("updates_", ""), justify="right")
    wear = res["wear"]
    assert isinstance(wear, dict)
    tt.add_column("max writes", justify="right")
    tt.add_column("endurance left", justify="right")
    for k in range(len(cnt["mvm"])):
        pt = wear["per_tile"][k]
        tt.add_row(
            str(k), *(f"{cnt[f][k]:,}" for f in fields), f"{pt['max']:,}", f"{pt['remaining']:.4%}"
        )
    out.print(tt)
    energy = res["energy"]
    assert isinstance(energy, dict)
    _energy_rows = _energy_rows_from(energy)
    _energy_table(_energy_rows, "training energy")
    out.print(
        f"wear: max {wear['max']:,} writes/device (p99 {wear['p99']:.1f}, mean "
        f"{wear['mean']:.2f}); endurance {wear['endurance']:.0e} cycles"
        + (
            f" → ~{wear['epochs_to_endurance']:.3g} epochs of this training"
            if wear["epochs_to_endurance"]
            else ""
        )
    )
    out.print(
        "constants: "
        + "; ".join(
            f"{c['name']} = {c['value']:.4g} {c['unit']} ({c['node']}, {c['source']})"
            for c in energy["constants_used"]
        ),
        markup=False,
    )
    written = ", ".join(res["files"])  # type: ignore[arg-type]
    out.print(f"wrote [bold]{escape(str(res['output']))}[/] and {escape(written)}")


def _energy_rows_from(energy: dict[str, object]) -> list[tuple[str, ...]]:
    comps = energy["components"]
    total = float(energy["total"])  # type: ignore[arg-type]
    samples = max(1, int(energy["samples"]))  # type: ignore[call-overload]
    counts = energy["counts"]
    assert isinstance(comps, dict) and isinstance(counts, dict)
    rows = []
    for k, v in [*comps.items(), ("total", total)]:
        share = f"{100 * v / total:.1f} %" if total else "-"
        rows.append((k, str(counts.get(k, "")), _fmt_j(v), _fmt_j(v / samples), share))
    gpu = float(energy["gpu_per_sample"])  # type: ignore[arg-type]
    rows.append(("gpu baseline (train)", "", _fmt_j(gpu * samples), _fmt_j(gpu), ""))
    return rows


def _update_energy(r: dict[str, Any]) -> float:
    """Joules of the weight updates alone: write pulses, verify reads, random draws."""
    comps = r["energy"]["components"]
    return float(comps["write"]) + float(comps["verify"]) + float(comps["rng"])


def _times(base: float, other: float) -> str:
    if other == base:
        return "1×"
    if other == 0:
        return "∞× lower"
    ratio = base / other
    r = ratio if ratio >= 1 else 1 / ratio
    text = f"{r:.3f}" if r < 10 else f"{r:.3g}"
    return f"{text}× lower" if ratio >= 1 else f"{text}× higher"


def _show_comparison(results: list[dict[str, Any]]) -> None:
    from rich.table import Table

    base = next((r for r in results if r["config"]["rule"] == "bp"), None)
    t = Table(title="rules on the same tiles", title_justify="left")
    heads = (
        "rule",
        "test acc",
        "write pulses",
        "writes vs bp",
        "max writes/device",
        "train energy",
        "vs bp",
        "update energy",
        "vs bp",
    )
    for h in heads:
        t.add_column(h, justify="right")
    for r in results:
        pulses = sum(h["pulses"] for h in r["history"])
        energy = float(r["energy"]["total"])
        upd = _update_energy(r)
        wr = er = ur = "-"
        if base is not None:
            bp_pulses = sum(h["pulses"] for h in base["history"])
            wr = f"{pulses / bp_pulses:.3%}" if bp_pulses else "-"
            er = _times(float(base["energy"]["total"]), energy)
            ur = _times(_update_energy(base), upd)
        t.add_row(
            str(r["config"]["rule"]),
            f"{r['final_test_acc']:.2%}",
            f"{pulses:,}",
            wr,
            f"{r['wear']['max']:,}",
            _fmt_j(energy),
            er,
            _fmt_j(upd),
            ur,
        )
    out.print(t)
    out.print(
        "update energy = write pulses + verify reads + random draws; the rest of the "
        "training energy (reads, converters, digital gradients) runs for every rule"
    )


def _usage_error(e: BaseException) -> bool:
    """Whether ``e`` is the option parser's usage error (click's, as typer bundles it)."""
    return hasattr(e, "format_message") and getattr(e, "exit_code", None) == 2


def main() -> None:
    """Entry point of the ``xbarc`` console script."""
    try:
        rv = app(standalone_mode=False)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except XbarcError as e:
        if _state["debug"]:
            raise
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        if _state["debug"]:
            raise
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception as e:
        if not _usage_error(e):
            raise
        ctx = getattr(e, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        msg = " ".join(e.format_message().split())  # type: ignore[attr-defined]
        if not msg:  # e.g. no arguments at all: the help text was shown
            sys.exit(2)
        err.print(f"[red]error:[/] {escape(msg)}{where}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]")
        sys.exit(130)


__all__ = ["app", "main"]
