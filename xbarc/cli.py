"""The ``xbarc`` command line: a thin typer driver over the library.

Every command is a few lines that call library functions, so anything the CLI does a test can
do too. An :class:`~xbarc.errors.XbarcError` becomes one line on stderr and exit code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from xbarc import __version__
from xbarc.errors import XbarcError

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


@app.command("ir")
def ir_cmd(
    model: ModelArg,
    batch: Annotated[int, typer.Option(help="Batch size for a symbolic batch axis.")] = 1,
) -> None:
    """Print the IR of an ONNX model.  Example: [bold]xbarc ir models/vit.onnx --batch 2[/]."""
    from xbarc.frontend import load_onnx
    from xbarc.models import resolve

    g = load_onnx(resolve(model), batch=batch)
    sys.stdout.write(str(g))


def main() -> None:
    """Entry point of the ``xbarc`` console script."""
    try:
        app(standalone_mode=False)
    except XbarcError as e:
        if _state["debug"]:
            raise
        err.print(f"[red]error:[/] {e}", highlight=False, markup=True, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(2)
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
            if _state["debug"]:
                raise
            err.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
            sys.exit(2)
        raise


__all__ = ["Path", "app", "main"]
