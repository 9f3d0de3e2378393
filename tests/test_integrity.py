"""Every command that reads a mapped.bin checks its array checksums; ``--no-verify`` skips it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from xbarc import api
from xbarc.backend import container
from xbarc.passes import ChipConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import run_cli

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="module")
def flipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits MLP compiled, with one byte of its tile conductances flipped."""
    d = tmp_path_factory.mktemp("integrity")
    good = d / "m.bin"
    api.compile_model(MODELS / "digits_mlp.onnx", ChipConfig(), output=good)
    with container.read(good) as c:
        names = list(c.manifest["arrays"])
        nbytes = c.manifest["arrays"]["tiles/g"]["nbytes"]
    assert names[-1] == "tiles/g"  # the last array: the file ends with its bytes
    blob = bytearray(good.read_bytes())
    start = len(blob) - nbytes
    blob[start + 1001] ^= 0x40
    bad = d / "bad.bin"
    bad.write_bytes(bytes(blob))
    return bad


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "{f}", "--limit", "8", "--threads", "1"],
        ["report", "{f}"],
        ["inspect", "{f}"],
        ["train", "{f}", "--limit", "8", "--epochs", "1", "--threads", "1", "-o", "{o}"],
    ],
    ids=lambda a: a[0],
)
def test_a_flipped_array_byte_is_one_line_exit_2(
    flipped: Path,
    args: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = flipped.with_name(f"{args[0]}.trained.bin")
    argv = [a.format(f=flipped, o=out) for a in args]
    code, _, err = run_cli(argv, monkeypatch, capsys)
    assert code == 2
    assert err.strip() == f"error: {flipped}: array 'tiles/g': data corrupted (crc32 mismatch)"
    assert not out.exists()
    code, _, err = run_cli([*argv, "--no-verify"], monkeypatch, capsys)
    assert code == 0, err
