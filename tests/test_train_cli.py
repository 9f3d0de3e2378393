"""``xbarc train`` and ``xbarc report`` on trained files, through the real entry point.

In-process runs call ``xbarc.cli.main`` with ``sys.argv`` set (so the exit-code handling of
``main`` is the one under test); one subprocess run checks that the rich progress bar is drawn on
stderr while stdout carries exactly one JSON document, and one kills a training run after an
epoch checkpoint and resumes it with ``--resume``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xbarc import api
from xbarc.backend import lower as backend
from xbarc.passes import ChipConfig

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
XBARC = [sys.executable, "-m", "xbarc"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``xbarc ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from xbarc import cli

    old = sys.argv
    sys.argv = ["xbarc", *args]
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = int(e.code or 0) if not isinstance(e.code, str) else 1
    finally:
        sys.argv = old
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "digits.mapped.bin"
    api.compile_model(MODELS / "digits_mlp.onnx", ChipConfig(weight_scale=0.0125), output=out)
    return out


COMMON = ["--data", "digits", "--limit", "96", "--batch", "32", "--threads", "1"]


def test_train_json_prints_one_document(mapped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = mapped.with_name("j.trained.bin")
    code, stdout, _ = run_cli(
        ["train", str(mapped), *COMMON, "--epochs", "2", "--json", "-o", str(out)], capsys
    )
    assert code == 0
    doc = json.loads(stdout)  # exactly one document: json.loads rejects trailing data
    assert isinstance(doc, dict)
    assert doc["output"] == str(out) and out.exists()
    assert len(doc["history"]) == 2
    assert doc["config"]["rule"] == "eapu"
    for key in ("final_test_acc", "energy", "wear", "tile_counters", "files"):
        assert key in doc
    assert all(Path(f).exists() for f in doc["files"])
    assert stdout.count("\n") == stdout.rstrip("\n").count("\n") + 1  # ends with one newline


def test_compare_prints_the_comparison(mapped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = mapped.with_name("c.trained.bin")
    code, stdout, _ = run_cli(
        ["train", str(mapped), *COMMON, "--epochs", "1", "--compare", "bp", "-o", str(out)],
        capsys,
    )
    assert code == 0
    assert "rules on the same tiles" in stdout
    table = stdout[stdout.index("rules on the same tiles") :]
    rows = {line.split("│")[1].strip(): line for line in table.splitlines() if "│" in line}
    assert {"eapu", "bp"} <= set(rows)
    assert "100.000%" in rows["bp"]  # bp's writes relative to itself
    assert "per-tile update counters" in stdout and "endurance left" in stdout
    # every constant's source keeps its evidence tag (rich markup would eat "[mem]")
    consts = next(ln for ln in stdout.splitlines() if ln.startswith("constants: "))
    assert "[mem]" in stdout[stdout.index(consts) :] and "Horowitz" in stdout
    assert out.exists() and mapped.with_name("c.bp.trained.bin").exists()
    # and as JSON: one document with both runs
    code, stdout, _ = run_cli(
        [
            "train",
            str(mapped),
            *COMMON,
            "--epochs",
            "1",
            "--compare",
            "bp",
            "--json",
            "-o",
            str(out),
        ],
        capsys,
    )
    assert code == 0
    runs = json.loads(stdout)["runs"]
    assert [r["config"]["rule"] for r in runs] == ["eapu", "bp"]
    bp_w = sum(h["pulses"] for h in runs[1]["history"])
    eapu_w = sum(h["pulses"] for h in runs[0]["history"])
    assert 0 < eapu_w < bp_w


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--rule", "sgd"], "rule"),
        (["--optimizer", "rmsprop"], "optimizer"),
        (["--lr", "-1"], "lr"),
        (["--lr", "0"], "lr"),
        (["--epochs", "-1"], "epochs"),
        (["--batch", "0"], "batch"),
        (["--clip", "0"], "clip"),
        (["--schedule", "linear"], "schedule"),
        (["--compare", "bp,nope"], "rule"),
        (["--resume"], "--resume"),
        (["--data", "nope"], "nope"),
    ],
)
def test_bad_option_values_exit_2_with_one_line(
    mapped: Path, capsys: pytest.CaptureFixture[str], args: list[str], names: str
) -> None:
    out = mapped.with_name("bad.trained.bin")
    code, stdout, stderr = run_cli(["train", str(mapped), *args, "-o", str(out)], capsys)
    assert code == 2
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:") and names in lines[0]
    assert stdout == ""
    assert not out.exists()


def test_bad_files_and_config_exit_2(
    mapped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["train", str(tmp_path / "missing.bin")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "missing.bin" in err
    toml = tmp_path / "t.toml"
    toml.write_text("[train]\nrule = 'eapu'\nwarmup = 3\n")
    code, _, err = run_cli(["train", str(mapped), "--config", str(toml)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "warmup" in err
    toml.write_text("[train]\nlr = 'fast'\n")
    code, _, err = run_cli(["train", str(mapped), "--config", str(toml)], capsys)
    assert code == 2 and "lr" in err


def test_unparsable_option_exits_2(mapped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Type errors are caught by the option parser (its usage message, not our one line)."""
    code, stdout, stderr = run_cli(["train", str(mapped), "--lr", "fast"], capsys)
    assert code == 2 and stdout == "" and "--lr" in stderr


def test_report_shows_update_counts_and_endurance(
    mapped: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = mapped.with_name("r.trained.bin")
    code, _, _ = run_cli(["train", str(mapped), *COMMON, "--epochs", "1", "-o", str(out)], capsys)
    assert code == 0
    code, stdout, _ = run_cli(["report", str(out)], capsys)
    assert code == 0
    assert "training: 1 run(s) eapu × 1 epochs" in stdout
    for head in ("requested", "applied", "skipped", "pulses", "max writes", "endurance left"):
        assert head in stdout
    assert "left on the most-written device" in stdout
    code, stdout, _ = run_cli(["report", str(out), "--json"], capsys)
    tr = json.loads(stdout)["training"]
    p = backend.load(out)
    assert p.wear is not None
    assert sum(t["write_pulses"] for t in tr["per_tile"]) == int(p.wear.sum()) > 0
    assert sum(t["updates_requested"] for t in tr["per_tile"]) > 0
    assert tr["endurance_left"] == pytest.approx(1 - p.wear.max() / 1e6)
    # a compiled file's report has no training section
    code, stdout, _ = run_cli(["report", str(mapped)], capsys)
    assert code == 0 and "training:" not in stdout
    # --plot: utilisation, write pulses and max writes per tile as PNG heatmaps
    code, stdout, _ = run_cli(["report", str(out), "--plot", "--json"], capsys)
    files = [Path(f) for f in json.loads(stdout)["files"]]
    assert [f.name.removeprefix(out.name) for f in files] == [
        ".tiles.png",
        ".write-pulses.png",
        ".max-writes.png",
    ]
    for f in files:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_bar_goes_to_stderr(mapped: Path) -> None:
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "120"}
    out = mapped.with_name("p.trained.bin")
    proc = subprocess.run(
        [*XBARC, "train", str(mapped), *COMMON, "--epochs", "1", "--json", "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "train eapu" in proc.stderr and "epoch" in proc.stderr  # the bar, drawn on stderr
    json.loads(proc.stdout)  # stdout: the document only, no bar, no colour codes
    assert "\x1b[" not in proc.stdout


@pytest.mark.slow
def test_killed_run_resumes_with_the_cli(mapped: Path) -> None:
    """SIGKILL ``xbarc train`` once its first epoch checkpoint exists; ``--resume`` to the end
    gives the bytes of an uninterrupted run's weights, digital parameters and wear."""
    d = mapped.parent
    args = ["--data", "digits", "--limit", "640", "--batch", "8", "--epochs", "4", "--threads", "1"]
    full = d / "k.full.bin"
    subprocess.run([*XBARC, "train", str(mapped), *args, "-o", str(full)], check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    cut = d / "k.cut.bin"
    ckpt = Path(f"{cut}.ckpt")
    proc = subprocess.Popen(
        [*XBARC, "train", str(mapped), *args, "-o", str(cut)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert ckpt.exists() and not cut.exists(), "the run finished before it could be killed"
    epoch = backend.load(ckpt).extra["checkpoint"]["epoch"]
    assert 1 <= epoch < 4
    subprocess.run([*XBARC, "train", str(mapped), *args, "-o", str(cut), "--resume"],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    a, b = backend.load(full), backend.load(cut)
    np.testing.assert_array_equal(a.tiles_g, b.tiles_g)
    np.testing.assert_array_equal(a.wear, b.wear)
    consts_a: list[Any] = [v.const for v in a.graph.constants() if v.const is not None]
    consts_b: list[Any] = [v.const for v in b.graph.constants() if v.const is not None]
    for x, y in zip(consts_a, consts_b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert a.extra["training"] == b.extra["training"]


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model with 3 outputs (the tiny MLP of test_train)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from helpers import tiny_mlp

    d = tmp_path_factory.mktemp("tiny3")
    out = d / "tiny3.mapped.bin"
    api.compile_model(tiny_mlp(d / "tiny3.onnx"), ChipConfig(weight_scale=0.0125), output=out)
    return out


def test_fewer_outputs_than_classes_exit_2(tiny3: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tiny3.with_name("t.trained.bin")
    for cmd in (["train", str(tiny3), "-o", str(out)], ["eval", str(tiny3)]):
        code, _, stderr = run_cli([*cmd, *COMMON], capsys)
        assert code == 2, stderr
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "10 classes" in lines[0] and "[3]" in lines[0], stderr
        assert not out.exists()


def test_synthetic_data_takes_the_models_classes(
    tiny3: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tiny3.with_name("s.trained.bin")
    args = ["--data", "synthetic", "--limit", "96", "--epochs", "1", "--threads", "1"]
    code, stdout, stderr = run_cli(["train", str(tiny3), *args, "-o", str(out), "--json"], capsys)
    assert code == 0, stderr
    assert json.loads(stdout)["history"][0]["test_acc"] >= 0
    from xbarc.runtime import data as data_mod

    assert data_mod.synthetic_classes((3,)) == 3
    assert data_mod.synthetic_classes((1,)) == 10  # one output: no classes to take
