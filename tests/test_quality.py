"""Code-quality gates run with the suite: ruff (lint) and mypy --strict on the typed packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = [
    "app",
    "frontend",
    "ir",
    "passes",
    "backend",
    "runtime",
    "models",
    "tests",
    "benchmarks",
]
TYPED = [
    "xbarc.ir",
    "xbarc.passes",
    "xbarc.backend",
    "xbarc.frontend",
    "xbarc.runtime.engine",
    "xbarc.runtime.energy",
]


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install '.[test]')")
    dirs = [d for d in SOURCES if (REPO / d).exists()]
    proc = subprocess.run(
        [ruff, "check", *dirs], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _shadow_tree(root: Path) -> Path:
    """Mirror the installed package layout with symlinks, so mypy sees ``xbarc.*``
    from this checkout whether or not the install is editable."""
    with open(REPO / "pyproject.toml", "rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    for pkg, src in mapping.items():
        dest = root.joinpath(*pkg.split("."))
        dest.mkdir(parents=True, exist_ok=True)
        for f in (REPO / src).iterdir():
            if f.suffix in (".py", ".pyi") and f.is_file():
                (dest / f.name).symlink_to(f)
    return root


def test_mypy_strict(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    shadow = _shadow_tree(tmp_path / "src")
    args = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(REPO / "pyproject.toml"),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    for pkg in TYPED:
        args += ["-p", pkg]
    env = {**os.environ, "MYPYPATH": str(shadow)}
    proc = subprocess.run(args, cwd=shadow, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
