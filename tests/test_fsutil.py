"""xbarc.fsutil: atomic writes that a kill cannot leave half-done, and stale temp-file cleanup.

The kill -9 runs of the real commands are in test_crash.py; these tests cover the naming,
locking and cleanup rules themselves.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

import pytest

from xbarc import fsutil


def stale(path: Path, middle: str = "abcd1234") -> Path:
    """A temp file as a writer killed mid-write leaves it (no process holds its lock)."""
    q = path.with_name(f".{path.name}.{middle}.tmp")
    q.write_bytes(b"half")
    return q


def test_write_replaces_and_keeps_the_mode(tmp_path: Path) -> None:
    p = tmp_path / "out.json"
    fsutil.atomic_write_text(p, "one")
    p.chmod(0o640)
    fsutil.atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert stat.S_IMODE(p.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["out.json"]


def test_new_file_gets_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        fsutil.atomic_write_bytes(tmp_path / "new", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o640


def test_an_error_inside_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "m.bin"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError), fsutil.atomic_output(p) as f:
        f.write(b"new, half")
        raise RuntimeError("boom")
    assert p.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["m.bin"]


def test_the_next_write_removes_stale_temps_of_its_own_output_only(tmp_path: Path) -> None:
    p = tmp_path / "m.bin"
    mine = [stale(p), stale(p, "x_9zz0q1")]
    others = [
        stale(tmp_path / "m.bin.ckpt"),  # another output's temp (".m.bin.ckpt.XXXXXXXX.tmp")
        tmp_path / ".m.bin.tmp",  # no random part: not a name xbarc writes
        tmp_path / ".m.bin.notmine!.tmp",
        tmp_path / ".m.bin.ABCDEFGH.tmp",  # tempfile never makes upper case
    ]
    for q in others[1:]:
        q.write_bytes(b"keep")
    assert fsutil.temp_files(p) == sorted(mine)
    fsutil.atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new"
    assert not any(q.exists() for q in mine)
    assert all(q.exists() for q in others)


def test_a_live_writers_temp_is_left_alone(tmp_path: Path) -> None:
    p = tmp_path / "m.bin"
    live = stale(p)
    fd = os.open(live, os.O_RDONLY)  # another open file description: flock conflicts with it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert fsutil.remove_stale_temps(p) == []
        fsutil.atomic_write_bytes(p, b"new")
        assert live.exists()
    finally:
        os.close(fd)
    assert fsutil.remove_stale_temps(p) == [live]
    assert not live.exists()


def test_temps_are_locked_while_written(tmp_path: Path) -> None:
    p = tmp_path / "m.bin"
    with fsutil.atomic_output(p) as f:
        f.write(b"partial")
        (tmp,) = fsutil.temp_files(p)
        assert fsutil.remove_stale_temps(p) == []  # its writer holds the lock
        assert tmp.exists() and not p.exists()
    assert p.read_bytes() == b"partial" and fsutil.temp_files(p) == []


def test_a_temp_taken_by_a_cleaner_before_its_lock_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race between mkstemp and flock: another run removes the new, still unlocked file."""
    p = tmp_path / "m.bin"
    real = fsutil.tempfile.mkstemp
    calls = []

    def racing_mkstemp(**kw: str) -> tuple[int, str]:
        fd, name = real(**kw)
        calls.append(name)
        if len(calls) == 1:
            assert fsutil.remove_stale_temps(p) == [Path(name)]
        return fd, name

    monkeypatch.setattr(fsutil.tempfile, "mkstemp", racing_mkstemp)
    fsutil.atomic_write_bytes(p, b"data")
    assert len(calls) == 2 and p.read_bytes() == b"data"
    assert sorted(os.listdir(tmp_path)) == ["m.bin"]
