"""``xbarc ir`` and ``xbarc --help``: in-process through ``main`` and once through ``python -m``."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import run_cli
from onnx import helper

from xbarc.cli import main
from xbarc.errors import FrontendError
from xbarc.frontend import load_onnx

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"


def run_subprocess(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    # Not from the repository root: there ``python -m xbarc`` would find the source folder
    # the bare source folders before the installed package.
    return subprocess.run(
        [sys.executable, "-m", "xbarc", *args],
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("error:"), err
    return lines[0]


# ----------------------------------------------------------------------------- success


@pytest.mark.parametrize("batch", [None, 3])
def test_ir_prints_graph(
    batch: int | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = MODELS / "vit.onnx"
    args = ["ir", str(path)] + ([] if batch is None else ["--batch", str(batch)])
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert out == str(load_onnx(path, batch=batch or 1))
    assert out.startswith('graph "vit"')


def test_ir_accepts_bundled_model_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # so "digits_mlp" is not a path here
    code, out, err = run_cli(["ir", "digits_mlp"], monkeypatch, capsys)
    assert code == 0, err
    assert out == str(load_onnx(MODELS / "digits_mlp.onnx"))


def test_help_lists_commands_with_examples(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli(["--help"], monkeypatch, capsys)
    assert code == 0
    for cmd in ("ir", "compile", "inspect", "report"):
        assert f" {cmd} " in out, cmd
    assert "Example" in out
    code, out, _ = run_cli(["ir", "--help"], monkeypatch, capsys)
    assert code == 0
    assert "Example" in out and "--batch" in out


def test_option_help_keeps_its_brackets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Help is rich markup: an unescaped ``[default: 8]`` or ``[train]`` would vanish."""
    import re

    import typer

    from xbarc.cli import app

    monkeypatch.setenv("COLUMNS", "250")
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    checked = 0
    for name, cmd in group.commands.items():
        code, out, _ = run_cli([name, "--help"], monkeypatch, capsys)
        assert code == 0
        for param in cmd.params:
            text = (getattr(param, "help", None) or "").replace("\\[", "[")
            for frag in re.findall(r"\[(?!bold\]|/)[^\]]*\]", text):
                assert frag in out, f"xbarc {name} {param.name}: {frag!r} lost"
                checked += 1
    assert checked >= 10


def test_subprocess_ir_vit() -> None:
    proc = run_subprocess(["ir", str(MODELS / "vit.onnx")])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == str(load_onnx(MODELS / "vit.onnx"))
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- failures


def _bad_files(tmp: Path) -> dict[str, Path]:
    data = (MODELS / "lenet.onnx").read_bytes()
    (tmp / "trunc.onnx").write_bytes(data[: len(data) // 3])
    (tmp / "random.onnx").write_bytes(np.random.default_rng(0).bytes(3000))
    (tmp / "empty.onnx").write_bytes(b"")
    (tmp / "dir.onnx").mkdir()
    node = helper.make_node("NonMaxSuppression", ["b", "s"], ["y"], name="nms")
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [1, 4, 4]),
            helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, [1, 1, 4]),
        ],
        [helper.make_tensor_value_info("y", onnx.TensorProto.INT64, [None, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp / "nms.onnx"))
    return {
        "missing": tmp / "missing.onnx",
        "truncated": tmp / "trunc.onnx",
        "random": tmp / "random.onnx",
        "empty": tmp / "empty.onnx",
        "directory": tmp / "dir.onnx",
        "unsupported": tmp / "nms.onnx",
    }


BAD = ["missing", "truncated", "random", "empty", "directory", "unsupported"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_file_exit_2_one_line(
    kind: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _bad_files(tmp_path)[kind]
    code, out, err = run_cli(["ir", str(path)], monkeypatch, capsys)
    assert code == 2
    assert out == ""
    line = _one_error_line(err)
    assert str(path) in line
    if kind == "unsupported":
        assert "NonMaxSuppression" in line and "nms" in line


def test_bad_batch_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["ir", str(MODELS / "mlp.onnx"), "--batch", "0"], monkeypatch, capsys)
    assert code == 2
    assert "batch" in _one_error_line(err)


@pytest.mark.parametrize(
    "args", [["ir"], ["ir", "models/mlp.onnx", "--batch", "abc"], ["nosuchcommand"]]
)
def test_usage_error_exit_2_without_traceback(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2
    assert "Traceback" not in err
    line = _one_error_line(err)
    assert line.startswith("error:") and "--help" in line


def test_long_message_stays_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60) / ("f" * 60)
    deep.mkdir(parents=True)
    code, _, err = run_cli(["ir", str(deep / "model.onnx")], monkeypatch, capsys)
    assert code == 2
    assert str(deep / "model.onnx") in _one_error_line(err)


def test_brackets_in_message_survive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "model[abc].onnx"
    code, _, err = run_cli(["ir", str(path)], monkeypatch, capsys)
    assert code == 2
    assert str(path) in _one_error_line(err)


def test_debug_raises_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["xbarc", "--debug", "ir", str(tmp_path / "x.onnx")])
    try:
        with pytest.raises(FrontendError, match="no such file"):
            main()
    finally:
        # The flag lives in module state; reset it for the tests that follow.
        code, _, _ = run_cli(["ir", str(MODELS / "mlp.onnx")], monkeypatch, capsys)
        assert code == 0


def test_subprocess_bad_file_and_debug(tmp_path: Path) -> None:
    path = tmp_path / "trunc.onnx"
    path.write_bytes((MODELS / "mlp.onnx").read_bytes()[:1000])
    proc = run_subprocess(["ir", str(path)])
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert str(path) in _one_error_line(proc.stderr)
    proc = run_subprocess(["--debug", "ir", str(path)])
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "FrontendError" in proc.stderr


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ("[chip]\ntile_rows = 'big'\n", "tile_rows"),
        ("[chip\n", "cannot read TOML"),
        ("[device]\nwrite_noise = -1\n", "device.write_noise"),
        ("[energy]\nwrite_pulse = {value = -1}\n", "write_pulse"),
        ("[energy]\nno_such_constant = 1e-12\n", "no_such_constant"),
    ],
)
def test_compile_bad_chip_config_exit_2_naming_file_and_field(
    toml: str,
    names: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = tmp_path / "chip.toml"
    cfg.write_text(toml)
    out = tmp_path / "m.bin"
    args = ["compile", str(MODELS / "mlp.onnx"), "--config", str(cfg), "-o", str(out)]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "chip.toml" in line and names in line
    assert not out.exists()
