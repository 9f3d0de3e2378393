"""Energy presets as data files: bundled presets load, copies load the same, bad files fail."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest

from xbarc.errors import ConfigError
from xbarc.runtime.energy import (
    DEFAULT_CONSTANTS,
    DEFAULT_PRESET,
    PRESET_DIR,
    REQUIRED,
    EnergyModel,
    load_preset,
    preset_names,
)

GOOD = """\
[preset]
name = "mine"

[constants.{name}]
value = 1e-12
unit = "J/x"
node = "n/a"
source = "a datasheet"
tag = "src"
"""


def test_bundled_presets_load_with_provenance() -> None:
    names = preset_names()
    assert DEFAULT_PRESET in names
    for name in names:
        p = load_preset(name)
        assert p.name == name and p.path.parent == PRESET_DIR
        assert set(REQUIRED) <= set(p.constants)
        assert len(p.sha256) == 64
        for c in p.constants.values():
            assert c.source.strip() and c.unit.startswith("J") and c.node.strip()
            if c.tag == "derived":
                assert c.note.strip(), f"{name}/{c.name}: a derived constant shows its arithmetic"


def test_default_preset_is_the_default_model() -> None:
    m = EnergyModel.default()
    assert m.preset == DEFAULT_PRESET
    assert m.constants == dict(DEFAULT_CONSTANTS)
    assert m.digest() == EnergyModel.from_preset(DEFAULT_PRESET).digest()
    assert m.with_overrides({"write_pulse": 2e-12}).digest() != m.digest()


def test_default_values_follow_their_derivation() -> None:
    """The literal values in default-45nm.toml are the arithmetic their notes show."""
    v = {n: c.value for n, c in DEFAULT_CONSTANTS.items()}
    assert v["read_cell_bit"] == 0.3e-3 * 100e-9 / (128 * 128)
    assert v["adc_6b"] == 1.26e-3 / 1e9
    assert v["adc_8b"] == 2e-3 / 1.28e9
    assert v["adc_10b"] == 6.92e-3 / 1.5e9
    assert v["verify_read"] == 0.5**2 * 10e-6 * 10e-9 + 2e-3 / 1.28e9
    assert v["rng_draw"] == 10 * 0.1e-12
    assert v["sram_byte"] == 10e-12 / 8
    assert v["gpu_train_flop"] == 400.0 / (2470 * 3 * 8.2e9)
    assert v["gpu_infer_flop"] == 400.0 / (2470 * 3 * 8.2e9) * (3 * 1200) / 3382


def test_a_copied_preset_loads_the_same(tmp_path: Path) -> None:
    dst = tmp_path / "my-chip.toml"
    shutil.copy(PRESET_DIR / f"{DEFAULT_PRESET}.toml", dst)
    p = load_preset(dst)
    assert dict(p.constants) == dict(DEFAULT_CONSTANTS)
    m = EnergyModel.from_preset(str(dst))
    assert m.constants == dict(DEFAULT_CONSTANTS) and m.preset == DEFAULT_PRESET
    text = dst.read_text().replace('name = "default-45nm"', 'name = "my-chip"')
    dst.write_text(text.replace("value = 1e-12\n", "value = 3e-12\n", 1))
    m2 = EnergyModel.from_preset(dst)
    assert m2.preset == "my-chip" and m2.constants["write_pulse"].value == 3e-12


def _preset_without(tmp_path: Path, name: str, field: str) -> Path:
    data = (PRESET_DIR / f"{DEFAULT_PRESET}.toml").read_text()
    lines = data.splitlines()
    start = lines.index(f"[constants.{name}]")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("["))
    del_at = next(i for i in range(start, end) if lines[i].startswith(f"{field} = "))
    del lines[del_at]
    p = tmp_path / "bad.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize("field", ["source", "unit", "value", "node", "tag"])
def test_preset_missing_field_is_one_clear_error(tmp_path: Path, field: str) -> None:
    p = _preset_without(tmp_path, "write_pulse", field)
    with pytest.raises(ConfigError, match=f"missing {field}") as info:
        load_preset(p)
    msg = str(info.value)
    assert str(p) in msg and "[constants.write_pulse]" in msg and "\n" not in msg


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[preset]\n", r"needs a \[constants\] table"),
        ("[energy]\nwrite_pulse = 1e-12\n", r"unknown table \[energy\]"),
        ("[constants]\nwrite_pulse = 1e-12\n", "must be a table"),
        (GOOD.format(name="write_pulse").replace('"J/x"', '"pJ"'), "unit must be joules"),
        (GOOD.format(name="write_pulse").replace('"src"', '"guess"'), "tag"),
        (GOOD.format(name="write_pulse").replace("1e-12", '"1e-12"'), "number"),
        (GOOD.format(name="write_pulse").replace("1e-12", "-1.0"), "> 0"),
        (GOOD.format(name="write_pulse") + 'colour = "red"\n', "unknown field 'colour'"),
        (GOOD.format(name="write_pulse"), "lacks read_cell_bit"),
        ("[constants\n", "cannot read TOML"),
    ],
)
def test_bad_preset_files(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "p.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_preset(p)
    assert str(p) in str(info.value)


def test_unknown_preset_name_lists_the_bundled_ones() -> None:
    with pytest.raises(ConfigError, match=DEFAULT_PRESET):
        load_preset("no-such-preset")


def test_bundled_files_are_plain_toml() -> None:
    for name in preset_names():
        data = tomllib.loads((PRESET_DIR / f"{name}.toml").read_text(encoding="utf-8"))
        assert set(data) <= {"preset", "constants"}
