"""``xbarc eval`` end to end: in-process through ``main`` and once through ``python -m xbarc``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import run_cli

from xbarc import api
from xbarc.passes import ChipConfig

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
TRAINED_ACC = 0.9611  # digits_mlp_trained on the digits test split (models/README.md)


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("eval")
    out = {}
    for name in ("digits_mlp_trained", "resnet8"):
        out[name] = d / f"{name}.mapped.bin"
        api.compile_model(MODELS / f"{name}.onnx", ChipConfig(), output=out[name])
    return out


def test_eval_prints_accuracy_counters_energy(
    mapped: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        ["eval", str(mapped["digits_mlp_trained"]), "--data", "digits"], monkeypatch, capsys
    )
    assert code == 0, err
    assert "digits_mlp_trained on digits (360 test samples, seed 0)" in out
    acc_line = next(line for line in out.splitlines() if line.startswith("accuracy:"))
    acc = float(acc_line.split()[1].rstrip("%")) / 100
    assert abs(acc - TRAINED_ACC) < 0.03
    assert "output error vs ideal device:" in out
    for title in ("per-tile counters", "inference energy", "energy constants used"):
        assert title in out
    for col in ("mvm", "dac", "adc", "cell_reads", "array_read", "total", "gpu baseline"):
        assert col in out
    assert "adc_8b" in out and "read_cell_bit" in out


def test_eval_json_is_one_document(
    mapped: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = mapped["digits_mlp_trained"]
    code, out, err = run_cli(["eval", str(path), "--json", "--seed", "3"], monkeypatch, capsys)
    assert code == 0, err
    doc = json.loads(out)  # the whole stdout is one JSON document
    for key in ("accuracy", "counters", "energy", "constants", "output_error", "digital"):
        assert key in doc
    assert doc["samples"] == 360 and doc["seed"] == 3 and doc["ideal"] is False
    assert abs(doc["accuracy"] - TRAINED_ACC) < 0.03
    n_tiles = len(doc["counters"]["mvm"])
    assert n_tiles >= 1
    for field in ("mvm", "dac", "adc", "cell_reads"):
        assert len(doc["counters"][field]) == n_tiles
        assert sum(doc["counters"][field]) == doc["counters_totals"][field] > 0
    assert doc["counters_totals"]["mvm"] == 360 * 2  # two layers, one tile each, 360 vectors
    comps = doc["energy"]["components"]
    assert doc["energy"]["total"] == pytest.approx(sum(comps.values()), rel=1e-12)
    assert comps["adc"] > 0 and comps["dac"] > 0 and comps["array_read"] > 0
    names = [row[0] for row in doc["constants"]]
    assert "read_cell_bit" in names and "adc_8b" in names
    assert 0 < doc["output_error"] < 0.5


def test_eval_ideal(
    mapped: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(mapped["digits_mlp_trained"])
    code, out, err = run_cli(["eval", path, "--ideal"], monkeypatch, capsys)
    assert code == 0, err
    assert "ideal device" in out and "output error" not in out
    code, out, err = run_cli(["eval", path, "--ideal", "--json"], monkeypatch, capsys)
    doc = json.loads(out)
    assert doc["ideal"] is True and doc["output_error"] is None
    assert doc["accuracy"] == pytest.approx(TRAINED_ACC, abs=1e-4)  # the float model exactly
    assert any("ideal ADC" in n for n in doc["energy"]["notes"])


def test_eval_synthetic(
    mapped: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(mapped["resnet8"])
    args = ["eval", path, "--data", "synthetic", "--limit", "12", "--batch", "5", "--json"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["data"] == "synthetic" and doc["samples"] == 12
    assert doc["accuracy"] is None or 0 <= doc["accuracy"] <= 1
    # resnet8: one MVM per output position and row block; 12 samples, each layer counted once
    assert doc["counters_totals"]["mvm"] > 0
    code2, out2, _ = run_cli(args, monkeypatch, capsys)
    assert code2 == 0 and json.loads(out2)["accuracy"] == doc["accuracy"]  # seeded


def test_eval_missing_cifar10_is_one_line_exit_2(
    mapped: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("XBARC_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no cached data set either
    args = ["eval", str(mapped["resnet8"]), "--data", "cifar10", "--data-dir", str(tmp_path / "no")]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and "cifar10" in lines[0].lower()
    assert "Traceback" not in err and out == ""


def test_eval_missing_file_is_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run_cli(["eval", str(tmp_path / "none.bin")], monkeypatch, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "none.bin" in lines[0]


def test_eval_through_python_m(mapped: dict[str, Path]) -> None:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    # Not from the repository root: there ``python -m xbarc`` would find the source folder
    # the bare source folders before the installed package.
    args = ["eval", str(mapped["digits_mlp_trained"]), "--limit", "60", "--json", "--ideal"]
    proc = subprocess.run(
        [sys.executable, "-m", "xbarc", *args],
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    assert doc["samples"] == 60 and doc["ideal"] is True
    assert set(doc) >= {"accuracy", "counters", "energy", "constants"}
