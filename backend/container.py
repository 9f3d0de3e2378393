"""mapped.bin: a versioned, mmap-able container of a JSON manifest and aligned arrays.

Layout (little-endian), modelled on safetensors: magic ``b"XBARCBIN"``, u16 major, u16 minor,
u32 flags (0), u64 manifest_len, the UTF-8 JSON manifest, zero padding to a multiple of 64 (the
data section starts there), then the arrays: 64-byte aligned, C order, zero padding between them
and nothing after the last. The writer adds ``format_version``, ``arrays`` (``{name: {dtype,
shape, offset, nbytes, crc32}}``, offsets relative to the data section) and, as the last member,
``"manifest_crc32":"<8 hex digits>"``: the CRC-32 of header and manifest with those digits written
as ``0`` (the IPv4-header trick). It is checked on every read, so a damaged header, manifest or
padding always raises :class:`FormatError`. The array CRCs need one pass over the data (about
3 GB/s, measured once with ``zlib.crc32`` over a 350 MB buffer: 0.12 s) and are
checked on every read too, unless ``read(..., verify=False)`` (``--no-verify``) skips them.
Newer minor versions are read; newer majors and unknown flags are refused.
"""

from __future__ import annotations

import json
import math
import mmap
import operator
import os
import re
import stat
import struct
import zlib
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from xbarc.errors import FormatError
from xbarc.fsutil import atomic_output

MAGIC = b"XBARCBIN"
MAJOR, MINOR = 1, 0
MAX_MANIFEST = 64 << 20
ALIGN = 64
MAX_NDIM = 32  # numpy 1.x's limit: every file opens with every supported numpy
_HEADER = struct.Struct("<8sHHIQ")
_TRAILER = re.compile(rb'"manifest_crc32":"[0-9a-f]{8}"}')  # 28 bytes, the manifest's end
_HEX8 = re.compile("[0-9a-f]{8}")
_RESERVED = ("format_version", "arrays", "manifest_crc32")
_CHUNK = 16 << 20  # bytes converted at a time when an ndarray needs a byte swap or a copy
_DTYPES = {
    d.str: d for d in map(np.dtype, ["<f2", "<f4", "<f8", "i1", "<i2", "<i4", "<i8", "u1"])
} | {d.str: d for d in map(np.dtype, ["<u2", "<u4", "<u8", "?"])}

Array = NDArray[Any]


@dataclass(frozen=True)
class ArraySpec:
    """An array that ``write`` produces lazily, by calling ``fill(view)`` on its file region.

    The view is a writable mapping of the output file, so hundreds of MB of conductances can
    be written tile by tile without ever being held in memory.
    """

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fill: Callable[[Array], None]


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _dump(body: dict[str, Any]) -> bytes:
    doc = {**body, "manifest_crc32": "0" * 8}  # placeholder, patched by _seal
    return json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _seal(header: bytes, raw: bytes) -> bytes:
    """``raw`` with the manifest_crc32 digits set to the CRC of header + manifest (digits 0)."""
    crc = zlib.crc32(b'00000000"}', zlib.crc32(memoryview(raw)[:-10], zlib.crc32(header)))
    return raw[:-10] + b'%08x"}' % crc


def write(
    path: str | os.PathLike[str],
    manifest: Mapping[str, Any],
    arrays: Mapping[str, Array | ArraySpec],
) -> None:
    """Write a mapped.bin atomically (``xbarc.fsutil.atomic_output``), arrays in mapping order.

    Memory stays O(one chunk): ndarrays are written from views (converted chunk by chunk only
    when not C-contiguous little-endian), and each :class:`ArraySpec` fills a mapped region.

    Raises:
        ValueError: a bad array name, dtype or shape, or a manifest that is not finite JSON.
        OSError: the file cannot be written. Any failure leaves ``path`` as it was.
    """
    p, end = Path(path), 0
    entries: dict[str, dict[str, Any]] = {}
    jobs: list[tuple[int, np.dtype[Any], Array | ArraySpec]] = []
    for name, a in arrays.items():
        if not isinstance(name, str) or not name or not isinstance(a, ArraySpec | np.ndarray):
            raise ValueError(f"array {name!r}: need a non-empty name and an ndarray or ArraySpec")
        dt = _DTYPES.get(np.dtype(a.dtype).newbyteorder("<").str)
        shape = tuple(operator.index(d) for d in a.shape)
        if dt is None or len(shape) > MAX_NDIM or min(shape, default=0) < 0:
            raise ValueError(f"array {name!r}: unsupported dtype {a.dtype} or shape {shape}")
        off, nbytes = _align(end), math.prod(shape) * dt.itemsize
        end = off + nbytes
        entries[name] = {"dtype": dt.str, "shape": list(shape), "offset": off, "nbytes": nbytes}
        entries[name]["crc32"] = "0" * 8  # fixed width: the real CRCs keep the manifest length
        jobs.append((off, dt, a))
    body = {k: v for k, v in manifest.items() if k not in _RESERVED}
    body |= {"format_version": f"{MAJOR}.{MINOR}", "arrays": entries}
    n = len(_dump(body))
    if n > MAX_MANIFEST:
        raise ValueError(f"manifest of {n} bytes exceeds the {MAX_MANIFEST}-byte limit")
    start = _align(_HEADER.size + n)
    with atomic_output(p) as f:
        os.ftruncate(f.fileno(), start + end)  # the zero padding, for free
        for (off, dt, a), e in zip(jobs, entries.values(), strict=True):
            pos = start + off
            crc = _fill(f, pos, dt, a) if isinstance(a, ArraySpec) else _copy(f, pos, dt, a)
            e["crc32"] = f"{crc:08x}"
        header = _HEADER.pack(MAGIC, MAJOR, MINOR, 0, n)
        f.seek(0)
        f.write(header + _seal(header, _dump(body)))


def _copy(f: IO[bytes], pos: int, dt: np.dtype[Any], a: Array) -> int:
    f.seek(pos)
    rows = a.reshape(1) if a.ndim == 0 else a  # slices along axis 0 are contiguous in C order
    step, crc = max(1, _CHUNK // max(1, rows[:1].nbytes)), 0
    for i in range(0, len(rows), step):
        chunk = np.ascontiguousarray(rows[i : i + step], dtype=dt).reshape(-1).view(np.uint8)
        f.write(chunk.data)
        crc = zlib.crc32(chunk.data, crc)
    return crc


def _fill(f: IO[bytes], pos: int, dt: np.dtype[Any], spec: ArraySpec) -> int:
    if math.prod(spec.shape) == 0:  # an empty region cannot be mapped
        spec.fill(np.empty(spec.shape, dt))
        return 0
    f.flush()
    view = np.memmap(f, dt, "r+", offset=pos, shape=tuple(spec.shape))
    spec.fill(view)
    release(view)
    flat = np.asarray(view).reshape(-1).view(np.uint8)
    crc = 0
    for i in range(0, flat.size, _CHUNK):
        crc = zlib.crc32(flat[i : i + _CHUNK].data, crc)
        release(view)  # keep resident pages bounded while checksumming
    return crc  # the mapping closes when its last view goes


def release(view: np.ndarray) -> None:
    """Write back a memory-mapped ``ArraySpec`` view and drop its resident pages.

    A producer filling a huge array layer by layer calls this between layers so the process
    holds at most one layer's pages (the data stays in the file). No-op for other arrays.
    """
    if not isinstance(view, np.memmap):
        return
    view.flush()
    mm = getattr(view, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        with suppress(ValueError, OSError):
            mm.madvise(mmap.MADV_DONTNEED)


@dataclass(eq=False)
class Container:
    """A read mapped.bin: its manifest (``arrays`` included) and array views over one mmap.

    Use it as a context manager or call :meth:`close`. Views still referenced elsewhere keep
    the mapping alive until they go; ``close`` drops the container's own references.
    """

    path: Path
    major: int
    minor: int
    manifest: dict[str, Any]
    _views: dict[str, Array] = field(default_factory=dict, repr=False)
    _mm: mmap.mmap | None = field(default=None, repr=False)

    @property
    def arrays(self) -> Mapping[str, Array]:
        """Name → array view (read-only unless read with ``writable_copy``)."""
        return MappingProxyType(self._views)

    def close(self) -> None:
        """Drop the array views and, unless views are still alive elsewhere, the mapping."""
        self._views.clear()
        if self._mm is not None:
            with suppress(BufferError):
                self._mm.close()
            self._mm = None

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _finite(s: str) -> float:
    """JSON number → float, refusing NaN, ±Infinity and overflows such as 1e999."""
    if not math.isfinite(x := float(s)):
        raise ValueError(f"{s[:20]} is not a finite number")
    return x


def _problem(e: object, room: int) -> str | None:
    """What is wrong with an ``arrays`` entry, if anything; ``room``: data section bytes."""
    if not isinstance(e, dict):
        return "entry is not an object"
    fields: list[Any] = [e.get(k) for k in ("dtype", "shape", "offset", "nbytes", "crc32")]
    dt, shape, off, nb, crc = fields
    if not isinstance(dt, str) or dt not in _DTYPES:
        return f"unsupported dtype {str(dt)[:20]!r}"
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        return f"shape is not a list of at most {MAX_NDIM} dimensions"
    if not all(type(d) is int and 0 <= d < 2**62 for d in [off, nb, *shape]):
        return "shape, offset and nbytes must be integers in [0, 2**62)"
    size = _DTYPES[dt].itemsize
    if nb != math.prod(shape) * size or math.prod(d or 1 for d in shape) * size >= 2**62:
        return f"nbytes {nb} does not match shape {shape} of {dt}"  # (and numpy's size limit)
    if off % ALIGN:
        return f"offset {off} is not {ALIGN}-byte aligned"
    if off + nb > room:
        return f"bytes [{off}, {off + nb}) of the data lie beyond the end of the file"
    if not isinstance(crc, str) or not _HEX8.fullmatch(crc):
        return "crc32 is not 8 lowercase hex digits"
    return None


def read(
    path: str | os.PathLike[str], *, verify: bool = True, writable_copy: bool = False
) -> Container:
    """Open a mapped.bin; arrays are views over an mmap (copy-on-write with ``writable_copy``).

    ``verify`` checks every array's CRC-32 (one pass over the data); without it the array
    bytes are taken as they are.

    Raises:
        FormatError: one line naming the file and the problem: unreadable, truncated, corrupted,
            an unknown major version; with ``verify``, also an array CRC mismatch (naming the
            array).
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except (OSError, ValueError) as err:  # O_NONBLOCK: opening a FIFO must not hang
        raise FormatError(f"{p}: cannot open ({getattr(err, 'strerror', None) or err})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FormatError(f"{p}: not a regular file")
        if st.st_size < _HEADER.size:
            raise FormatError(f"{p}: {st.st_size} bytes, shorter than the header")
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY if writable_copy else mmap.ACCESS_READ)
    except (OSError, ValueError) as err:  # ValueError: the file shrank since fstat
        raise FormatError(f"{p}: cannot map ({getattr(err, 'strerror', None) or err})") from None
    finally:
        os.close(fd)
    try:
        return _parse(Container(p, 0, 0, {}, _mm=mm), mm, verify, writable_copy)
    except BaseException:
        with suppress(BufferError):
            mm.close()
        raise


def _parse(c: Container, mm: mmap.mmap, verify: bool, writable: bool) -> Container:
    def bad(msg: str) -> FormatError:
        return FormatError(f"{c.path}: {msg}")

    def u8(start: int, n: int) -> NDArray[np.uint8]:
        return np.frombuffer(mm, np.uint8, n, start)  # a view, no copy

    size, hs = len(mm), _HEADER.size
    magic, c.major, c.minor, flags, n = _HEADER.unpack_from(mm, 0)
    if magic != MAGIC:
        raise bad("not an xbarc mapped.bin (bad magic)")
    if c.major > MAJOR:
        raise bad(f"mapped.bin format {c.major}.{c.minor} needs a newer xbarc")
    if c.major < 1:
        raise bad(f"mapped.bin format {c.major}.{c.minor} is a pre-release, not supported")
    if flags:
        raise bad(f"unknown flags 0x{flags:x} in mapped.bin format {c.major}.{c.minor}")
    if n > MAX_MANIFEST:
        raise bad(f"manifest length {n} exceeds the {MAX_MANIFEST}-byte limit")
    if hs + n > size:
        raise bad(f"truncated: the manifest needs {hs + n} bytes, the file has {size}")
    raw = mm[hs : hs + n]
    try:
        doc = json.loads(raw.decode(), parse_float=_finite, parse_constant=_finite)
    except UnicodeDecodeError:
        raise bad("manifest is not UTF-8") from None
    except (ValueError, RecursionError) as err:
        raise bad(f"manifest is not JSON ({str(err)[:100]})") from None
    if not isinstance(doc, dict) or not _TRAILER.fullmatch(raw[-28:]):
        raise bad("manifest is not a JSON object ending in its manifest_crc32")
    if _seal(mm[:hs], raw) != raw:
        raise bad("header or manifest corrupted (manifest_crc32 mismatch)")
    doc.pop("manifest_crc32", None)
    c.manifest, metas, data = doc, doc.get("arrays"), _align(hs + n)
    if not isinstance(metas, dict):
        raise bad("manifest lacks an 'arrays' object")
    regions: list[tuple[int, int, str]] = []
    for name, e in metas.items():
        if problem := _problem(e, size - data) if name else "the name is empty":
            raise bad(f"array {name!r}: {problem}")
        regions.append((e["offset"], e["offset"] + e["nbytes"], name))
    pos, prev = hs + n - data, "the manifest"  # end of the last region, relative to data
    for start, end, name in sorted(regions):
        if start == end:
            continue  # an empty array overlaps nothing
        if start < pos:
            raise bad(f"arrays {prev!r} and {name!r} overlap")
        if u8(data + pos, start - pos).any():
            raise bad(f"nonzero bytes in the padding before array {name!r}")
        pos, prev = end, name
    data_end = max((end for _, end, _ in regions), default=0)
    if u8(data + pos, max(0, data_end - pos)).any():
        raise bad("nonzero padding after the last array")
    if size != data + data_end:
        raise bad(f"{size} bytes, but the manifest describes {data + data_end}")
    for name, e in metas.items() if verify else ():
        if zlib.crc32(u8(data + e["offset"], e["nbytes"]).data) != int(e["crc32"], 16):
            raise bad(f"array {name!r}: data corrupted (crc32 mismatch)")
    for name, e in metas.items():
        dt, count = _DTYPES[e["dtype"]], math.prod(e["shape"])
        a = np.frombuffer(mm, dt, count, data + e["offset"]) if count else np.empty(0, dt)
        a.flags.writeable = writable
        c._views[name] = a.reshape(e["shape"])
    return c


def inspect(path: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any]:
    """A JSON-able summary: versions, sizes, manifest keys and the array table.

    Raises:
        FormatError: as :func:`read`.
    """
    with read(path, verify=verify) as c:
        metas = c.manifest["arrays"]
        return {
            "version": f"{c.major}.{c.minor}",
            "file_size": os.path.getsize(c.path),
            "manifest_keys": list(c.manifest),
            "arrays": [
                {"name": k} | {f: v[f] for f in ("dtype", "shape", "offset", "nbytes")}
                for k, v in metas.items()
            ],
            "array_bytes": sum(v["nbytes"] for v in metas.values()),
        }
