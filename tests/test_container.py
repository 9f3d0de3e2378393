"""mapped.bin: round trips, corruption fuzzing, atomicity, determinism and memory.

Hand-crafted files are built by :func:`craft`, an independent implementation of the format
(header, manifest sealed with its CRC, zero padding, data), so the reader is not only tested
against its own writer.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import sys
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from xbarc.backend import container as C
from xbarc.errors import FormatError

DTYPES = ["<f2", "<f4", "<f8", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "|b1"]
RESERVED = {"arrays", "format_version", "manifest_crc32"}


def seal(
    body: bytes, data: bytes = b"", *, major: int = 1, minor: int = 0, flags: int = 0
) -> bytes:
    """A file from manifest bytes: the header, the manifest with its CRC patched in, the data."""
    header = struct.pack("<8sHHIQ", b"XBARCBIN", major, minor, flags, len(body))
    if body.endswith(b'"manifest_crc32":"00000000"}'):
        body = body[:-10] + b'%08x"}' % zlib.crc32(header + body)
    head = header + body
    return head + bytes(-len(head) % 64) + data


def craft(manifest: dict[str, Any], data: bytes = b"", **kw: int) -> bytes:
    doc = {**manifest, "manifest_crc32": "00000000"}
    return seal(json.dumps(doc, separators=(",", ":")).encode(), data, **kw)


def entry(dtype: str, shape: list[Any], offset: Any, data: bytes | None = None, **kw: Any) -> Any:
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize if dtype in DTYPES else 0
    crc = f"{zlib.crc32(data or b''):08x}"
    return {"dtype": dtype, "shape": shape, "offset": offset, "nbytes": nbytes, "crc32": crc} | kw


A_BYTES = np.arange(6, dtype="<f4").tobytes()  # 24 bytes at offset 0
B_BYTES = bytes(range(1, 9))  # 8 bytes at offset 64
GOOD = {
    "a": entry("<f4", [2, 3], 0, A_BYTES),
    "b": entry("|u1", [8], 64, B_BYTES),
}
GOOD_DATA = A_BYTES + bytes(40) + B_BYTES
EMPTY = entry("<f8", [0, 3], 128)  # after b: 56 bytes of padding to reach it


def put(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "m.bin"
    p.write_bytes(data)
    return p


def fails(path: Path, match: str | None = None, **kw: Any) -> str:
    """Reading ``path`` raises FormatError, with one line that names the file."""
    with pytest.raises(FormatError, match=match) as e:
        C.read(path, **kw).close()
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
    return msg


# --- round trips ---------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)
manifests = st.dictionaries(
    st.text(max_size=10).filter(lambda k: k not in RESERVED), json_values, max_size=5
)


@st.composite
def array_inputs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray | C.ArraySpec]:
    """(expected little-endian C-order array, what to hand to write)."""
    dt = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    a = draw(hnp.arrays(dt, shape))
    how = draw(st.sampled_from(["plain", "big-endian", "strided", "spec"]))
    if how == "big-endian":
        return a, a.astype(dt.newbyteorder(">"))
    if how == "strided":
        big = np.zeros((*shape, 2), dt)
        big[..., 1] = a
        return a, big[..., 1]  # not contiguous
    if how == "spec":
        return a, C.ArraySpec(dt, shape, lambda v: v.__setitem__(..., a))
    return a, a


@given(
    manifests,
    st.lists(st.tuples(st.text(min_size=1, max_size=8), array_inputs()), max_size=5),
)
def test_round_trip(
    tmp_path_factory: pytest.TempPathFactory, m: dict[str, Any], items: Any
) -> None:
    arrays = {name: given_ for name, (_, given_) in items}
    expected = {name: exp for name, (exp, _) in items}
    path = tmp_path_factory.mktemp("rt") / "m.bin"
    C.write(path, m, arrays)
    with C.read(path, verify=True) as c:
        assert {k: v for k, v in c.manifest.items() if k not in RESERVED} == m
        assert c.manifest["format_version"] == "1.0" and (c.major, c.minor) == (1, 0)
        assert list(c.arrays) == list(arrays)
        for name, a in c.arrays.items():
            want = expected[name]
            assert a.dtype.str == want.dtype.newbyteorder("<").str and a.shape == want.shape
            assert a.tobytes() == np.ascontiguousarray(want, want.dtype.newbyteorder("<")).tobytes()
            assert not a.flags.writeable and c.manifest["arrays"][name]["offset"] % 64 == 0
            assert a.size == 0 or a.ctypes.data % 64 == 0  # the data section is aligned, too


def test_views_are_zero_copy_aligned_and_outlive_close(tmp_path: Path) -> None:
    p = tmp_path / "m.bin"
    C.write(p, {}, {"x": np.arange(100, dtype=np.float64), "y": np.ones((3, 0), np.int8)})
    c = C.read(p)
    x = c.arrays["x"]
    assert x.base is not None and x.ctypes.data % 64 == 0
    with pytest.raises(ValueError, match="read-only"):
        x[0] = 1
    c.close()
    assert not c.arrays and x.sum() == 4950  # the mapping lives as long as a view does


def test_writable_copy_never_touches_the_file(tmp_path: Path) -> None:
    p = tmp_path / "m.bin"
    C.write(p, {}, {"x": np.zeros(10, np.int32)})
    before = p.read_bytes()
    with C.read(p, writable_copy=True) as c:
        c.arrays["x"][:] = 7
        assert c.arrays["x"].sum() == 70
    assert p.read_bytes() == before


def test_inspect(tmp_path: Path) -> None:
    p = tmp_path / "m.bin"
    C.write(p, {"kind": "k"}, {"g": np.zeros((2, 3), np.float32), "w": np.zeros(0, bool)})
    s = C.inspect(p)
    assert s["version"] == "1.0" and s["file_size"] == p.stat().st_size
    assert s["manifest_keys"] == ["kind", "format_version", "arrays"]
    assert [(a["name"], a["dtype"], a["shape"]) for a in s["arrays"]] == [
        ("g", "<f4", [2, 3]),
        ("w", "|b1", [0]),
    ]
    json.dumps(s)


@pytest.mark.parametrize(
    ("manifest", "arrays"),
    [
        ({}, {"": np.zeros(1)}),
        ({}, {"c": np.zeros(1, np.complex64)}),
        ({}, {"o": np.array([None], object)}),
        ({}, {"t": np.zeros(1, "M8[s]")}),
        ({}, {"l": [1, 2]}),
        ({"x": float("nan")}, {}),
        ({"x": float("inf")}, {}),
    ],
)
def test_write_rejects_what_read_would_not_return(
    tmp_path: Path, manifest: Any, arrays: Any
) -> None:
    with pytest.raises(ValueError):
        C.write(tmp_path / "m.bin", manifest, arrays)
    assert not list(tmp_path.iterdir())


# --- corruption ----------------------------------------------------------------------------


@pytest.fixture
def sample(tmp_path: Path) -> tuple[Path, list[tuple[int, int]]]:
    """A valid file and the [start, end) byte ranges of its array data."""
    p = tmp_path / "orig.bin"
    arrays = {
        "g": C.ArraySpec(np.dtype("<f4"), (2, 5), lambda v: v.__setitem__(..., 1.5)),
        "empty": np.zeros((0, 4), np.int16),
        "i": np.arange(7, dtype=">i8"),
        "m": np.array([True, False, True]),
    }
    C.write(p, {"kind": "test", "nested": {"é": [1, 2.5, None, True]}}, arrays)
    with C.read(p) as c:
        data = C._align(24 + struct.unpack_from("<Q", p.read_bytes(), 16)[0])
        ranges = [
            (data + e["offset"], data + e["offset"] + e["nbytes"])
            for e in c.manifest["arrays"].values()
        ]
    return p, ranges


def test_every_single_bit_flip_is_caught(
    sample: tuple[Path, list[tuple[int, int]]], tmp_path: Path
) -> None:
    orig, ranges = sample
    blob = orig.read_bytes()
    p = tmp_path / "m.bin"
    rng = np.random.default_rng(0)
    flips = [(pos, bit) for pos in range(24) for bit in range(8)]  # all of the header's
    flips += [(pos, int(rng.integers(8))) for pos in range(24, len(blob))]  # one per byte
    for pos, bit in flips:  # (a CRC-32 catches every single-bit error)
        bad = bytearray(blob)
        bad[pos] ^= 1 << bit
        p.write_bytes(bad)
        if any(a <= pos < b for a, b in ranges):
            C.read(p, verify=False).close()  # array bytes are checked unless verify=False
            fails(p, "crc32 mismatch")
        else:
            fails(p)


def test_random_garbage_raises_only_format_error(
    sample: tuple[Path, list[tuple[int, int]]], tmp_path: Path
) -> None:
    blob = sample[0].read_bytes()
    rng = np.random.default_rng(0)
    p = tmp_path / "m.bin"
    for _ in range(300):
        bad = bytearray(blob)
        start = int(rng.integers(0, len(blob)))
        n = int(rng.integers(1, 32))
        bad[start : start + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        p.write_bytes(bad)
        for verify in (False, True):
            with contextlib.suppress(FormatError):  # and nothing else
                C.read(p, verify=verify).close()


def test_truncation_is_caught(sample: tuple[Path, list[tuple[int, int]]], tmp_path: Path) -> None:
    orig, ranges = sample
    blob = orig.read_bytes()
    rng = np.random.default_rng(1)
    data_start = min(a for a, _ in ranges)
    cuts = [*range(data_start), *rng.integers(data_start, len(blob), 40).tolist(), len(blob) - 1]
    for n in cuts:
        fails(put(tmp_path, blob[:n]))
    fails(put(tmp_path, blob + b"\0"), "describes")


@pytest.mark.parametrize("n", [2**64 - 1, 2**63, 2**32, C.MAX_MANIFEST + 1])
def test_huge_manifest_len(
    sample: tuple[Path, list[tuple[int, int]]], tmp_path: Path, n: int
) -> None:
    blob = bytearray(sample[0].read_bytes())
    struct.pack_into("<Q", blob, 16, n)
    fails(put(tmp_path, bytes(blob)), "exceeds the 67108864-byte limit")


def test_manifest_len_past_the_end(
    sample: tuple[Path, list[tuple[int, int]]], tmp_path: Path
) -> None:
    blob = bytearray(sample[0].read_bytes())
    struct.pack_into("<Q", blob, 16, len(blob) - 23)
    fails(put(tmp_path, bytes(blob)), "truncated")


def test_no_allocation_from_an_unchecked_length(tmp_path: Path) -> None:
    """A 65 MiB (sparse) file claiming a 64 MiB + 1 manifest is refused before reading it."""
    p = tmp_path / "m.bin"
    with open(p, "wb") as f:
        f.write(struct.pack("<8sHHIQ", b"XBARCBIN", 1, 0, 0, C.MAX_MANIFEST + 1))
        f.truncate(C.MAX_MANIFEST + (1 << 20))
    tracemalloc.start()
    try:
        fails(p, "limit")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


@pytest.mark.parametrize(
    "blob",
    [b"", b"XBARCBIN", b"XBARCBIM" + bytes(16), b"PK\x03\x04" + bytes(60), bytes(4096)],
)
def test_bad_magic_or_too_short(tmp_path: Path, blob: bytes) -> None:
    msg = fails(put(tmp_path, blob))
    assert "bad magic" in msg or "shorter than the header" in msg


def test_versions(tmp_path: Path) -> None:
    arrays = {"arrays": GOOD}
    fails(put(tmp_path, craft(arrays, GOOD_DATA, major=2)), "format 2.0 needs a newer xbarc")
    fails(put(tmp_path, craft(arrays, GOOD_DATA, major=0, minor=3)), "format 0.3 is a pre-release")
    fails(put(tmp_path, craft(arrays, GOOD_DATA, flags=1)), "flags 0x1")
    with C.read(put(tmp_path, craft(arrays | {"future": 1}, GOOD_DATA, minor=7))) as c:
        assert (c.major, c.minor, c.manifest["future"]) == (1, 7, 1)  # minors are compatible
        assert c.arrays["a"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_crafted_good_file_reads(tmp_path: Path) -> None:
    with C.read(put(tmp_path, craft({"arrays": GOOD}, GOOD_DATA)), verify=True) as c:
        assert bytes(c.arrays["b"]) == B_BYTES


def with_entry(name: str, **kw: Any) -> dict[str, Any]:
    return {"arrays": GOOD | {name: GOOD.get(name, {}) | kw}}


@pytest.mark.parametrize(
    ("manifest", "data", "match"),
    [
        (with_entry("b", offset=0), GOOD_DATA, "overlap"),
        (with_entry("b", offset=32), GOOD_DATA, "not 64-byte aligned"),
        (with_entry("b", offset=128), GOOD_DATA, "beyond the end"),
        (with_entry("b", offset=-64), GOOD_DATA, "integers"),
        (with_entry("b", offset=64.0), GOOD_DATA, "integers"),
        (with_entry("b", offset=2**64), GOOD_DATA, "integers"),
        (with_entry("b", offset="64"), GOOD_DATA, "integers"),
        (with_entry("b", shape=[-8]), GOOD_DATA, "integers"),
        (with_entry("b", shape=[8.0]), GOOD_DATA, "integers"),
        (with_entry("b", shape=[True] * 8), GOOD_DATA, "integers"),
        (with_entry("b", shape=8), GOOD_DATA, "list of at most 32"),
        (with_entry("b", shape=[1] * 33), GOOD_DATA, "list of at most 32"),
        (with_entry("b", shape=[4]), GOOD_DATA, "does not match"),
        (with_entry("b", nbytes=9), GOOD_DATA, "does not match"),
        (with_entry("b", shape=[2**40, 2**40], nbytes=2**80), GOOD_DATA, "integers"),
        (with_entry("b", shape=[2**31, 2**31], nbytes=2**62 - 1), GOOD_DATA, "does not match"),
        (
            with_entry("e", dtype="<f8", shape=[0, 2**61], offset=64, nbytes=0, crc32="0" * 8),
            GOOD_DATA,
            "does not match",
        ),
        (with_entry("b", dtype="<c8"), GOOD_DATA, "dtype"),
        (with_entry("b", dtype="|O"), GOOD_DATA, "dtype"),
        (with_entry("b", dtype=">u1"), GOOD_DATA, "dtype"),
        (with_entry("b", dtype=["<f4"]), GOOD_DATA, "dtype"),
        (with_entry("b", dtype=None), GOOD_DATA, "dtype"),
        (with_entry("b", crc32=12345678), GOOD_DATA, "crc32"),
        (with_entry("b", crc32="XYZ"), GOOD_DATA, "crc32"),
        ({"arrays": GOOD | {"b": [1]}}, GOOD_DATA, "not an object"),
        ({"arrays": GOOD | {"": GOOD["b"]}}, GOOD_DATA, "name is empty"),
        ({"arrays": [GOOD]}, GOOD_DATA, "'arrays' object"),
        ({}, b"", "'arrays' object"),
        ({"arrays": GOOD}, A_BYTES + b"\1" + bytes(39) + B_BYTES, "padding"),
        ({"arrays": {"a": GOOD["a"]}}, A_BYTES + bytes(8), "describes"),
        ({"arrays": GOOD | {"e": EMPTY}}, GOOD_DATA + bytes(56), None),
        ({"arrays": GOOD | {"e": EMPTY}}, GOOD_DATA + bytes(55) + b"\1", "padding after"),
        ({"arrays": GOOD | {"e": EMPTY}}, GOOD_DATA + bytes(55), "beyond the end"),
        ({"arrays": GOOD}, GOOD_DATA + bytes(64), "describes"),
        ({"arrays": GOOD}, GOOD_DATA[:-1], "beyond the end"),
    ],
)
def test_crafted_layouts(
    tmp_path: Path, manifest: dict[str, Any], data: bytes, match: str | None
) -> None:
    if match is None:
        C.read(put(tmp_path, craft(manifest, data)), verify=True).close()
    else:
        fails(put(tmp_path, craft(manifest, data)), match)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b'{"x":"\xff","manifest_crc32":"00000000"}', "UTF-8"),
        (b'{"x":,"manifest_crc32":"00000000"}', "not JSON"),
        (b'{"x":NaN,"manifest_crc32":"00000000"}', "not JSON"),
        (b'{"x":-Infinity,"manifest_crc32":"00000000"}', "not JSON"),
        (b'{"x":1e999,"manifest_crc32":"00000000"}', "not JSON"),
        (b'{"x":' + b"9" * 5000 + b',"manifest_crc32":"00000000"}', "not JSON"),
        (b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b',"manifest_crc32":"00000000"}', "not JSON"),
        (b'["manifest_crc32","00000000"]', "not a JSON object"),
        (b'{"arrays":{}}', "manifest_crc32"),
        (b'{"arrays":{},"manifest_crc32":"0000000"}', "manifest_crc32"),
        (b'{"arrays":{},"manifest_crc32":"12345678"}', "mismatch"),
        (b'{"arrays":{}, "manifest_crc32":"00000000"}', None),  # space: fine if sealed
        (b"", "not JSON"),
    ],
)
def test_crafted_bad_manifests(tmp_path: Path, body: bytes, match: str) -> None:
    if match is None:
        C.read(put(tmp_path, seal(body))).close()
    else:
        fails(put(tmp_path, seal(body)), match)


def test_unreadable_paths(tmp_path: Path) -> None:
    fails(tmp_path / "missing.bin", "cannot open")
    fails(tmp_path, "not a regular file")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
        fails(tmp_path / "fifo", "not a regular file")  # and does not block
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        p = put(tmp_path, craft({"arrays": GOOD}, GOOD_DATA))
        p.chmod(0)
        fails(p, "cannot open")


# --- writing: atomicity, determinism, memory -----------------------------------------------


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "model.mapped.bin"
    C.write(p, {"v": 1}, {"x": np.arange(5)})
    before = p.read_bytes()

    def fill(v: np.ndarray) -> None:
        v[0] = 1.0
        raise RuntimeError("producer failed")

    arrays: Any = {"x": np.arange(9), "g": C.ArraySpec(np.dtype("<f4"), (4, 4), fill)}
    with pytest.raises(RuntimeError, match="producer failed"):
        C.write(p, {"v": 2}, arrays)
    assert p.read_bytes() == before and sorted(tmp_path.iterdir()) == [p]
    with pytest.raises(RuntimeError):
        C.write(tmp_path / "new.bin", {}, arrays)
    assert sorted(tmp_path.iterdir()) == [p]


def test_deterministic_and_spec_equals_ndarray(tmp_path: Path) -> None:
    g = np.linspace(0, 1, 60, dtype=np.float32).reshape(3, 4, 5)
    m = {"kind": "k", "cfg": {"rows": 4, "σ": 0.5}}
    C.write(tmp_path / "a.bin", m, {"g": g, "n": np.arange(3, dtype=">i2")})
    C.write(tmp_path / "b.bin", m, {"g": g, "n": np.arange(3, dtype=">i2")})
    spec = C.ArraySpec(np.dtype("<f4"), g.shape, lambda v: v.__setitem__(..., g))
    C.write(tmp_path / "c.bin", m, {"g": spec, "n": np.arange(3, dtype="<i2")})
    a = (tmp_path / "a.bin").read_bytes()
    assert a == (tmp_path / "b.bin").read_bytes() == (tmp_path / "c.bin").read_bytes()


def _rss_anon_kib() -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
    except (OSError, StopIteration):
        return None


def test_writing_a_200mb_spec_does_not_buffer_it(tmp_path: Path) -> None:
    """Tracked heap (Python + NumPy) and anonymous RSS stay far below the array size.

    ``ru_maxrss`` would not do: it counts the file pages the fill touches through the mapping
    (page cache, written back and reclaimable), so it rises by 200 MB for any mmap writer.
    """
    tiles, rows, cols = 50, 1024, 1024  # float32: 200 MiB
    anon: list[int | None] = [_rss_anon_kib()]

    def fill(v: np.ndarray) -> None:
        for t in range(tiles):
            v[t] = t
        anon.append(_rss_anon_kib())

    tracemalloc.start()
    try:
        C.write(
            tmp_path / "big.bin", {}, {"g": C.ArraySpec(np.dtype("<f4"), (tiles, rows, cols), fill)}
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
    if anon[0] is not None and anon[1] is not None:
        assert anon[1] - anon[0] < 64 << 10, anon
    with C.read(tmp_path / "big.bin", verify=True) as c:
        assert c.arrays["g"][49, 1023, 1023] == 49
    (tmp_path / "big.bin").unlink()  # pytest keeps the last runs' tmp_paths


def test_byteswapped_ndarray_is_converted_chunk_by_chunk(tmp_path: Path) -> None:
    a = np.ones((96, 256, 1024), ">f4")  # 96 MiB, needs a byte swap
    tracemalloc.start()
    try:
        C.write(tmp_path / "be.bin", {}, {"a": a})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 << 20, peak
    with C.read(tmp_path / "be.bin") as c:
        assert c.arrays["a"].dtype.str == "<f4" and c.arrays["a"][95, 255, 1023] == 1
    (tmp_path / "be.bin").unlink()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_new_file_gets_umask_permissions(tmp_path: Path) -> None:
    p = tmp_path / "m.bin"
    C.write(p, {}, {})
    mask = os.umask(0)
    os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask
    p.chmod(0o640)
    C.write(p, {}, {})
    assert p.stat().st_mode & 0o777 == 0o640
