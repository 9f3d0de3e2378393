"""``cifar10``: the binary or the python version of CIFAR-10, from a directory (never downloaded).

The python version is read with a restricted unpickler that can only rebuild plain numpy arrays.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from xbarc.errors import DataError
from xbarc.runtime.data import locations
from xbarc.runtime.data.dataset import Dataset
from xbarc.runtime.data.locations import read_bytes

FloatArray = npt.NDArray[np.float32]

#: Per-channel normalisation of CIFAR-10 (applied after scaling to [0, 1]).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
#: Where users get CIFAR-10 (xbarc never downloads it).
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

_CIFAR_BIN = (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")
_CIFAR_PY = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
_CIFAR_RECORD = 1 + 3 * 32 * 32
_CIFAR_SUBDIRS = {"bin": "cifar-10-batches-bin", "py": "cifar-10-batches-py"}


def _latin1_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` that only turns a latin-1 ``str`` back into ``bytes``.

    Python 3 writes ``bytes`` into protocol-2 pickles as ``_codecs.encode(str, "latin1")``; this
    accepts exactly that and nothing else (no other codec, no other argument types).
    """
    if type(text) is not str or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError("only _codecs.encode(<str>, 'latin1') is allowed")
    return text.encode("latin-1")


def _plain_bytes(*args: Any) -> bytes:
    """Stand-in for ``bytes``: ``bytes()`` (how protocol 2 writes ``b""``) or a copy of bytes."""
    if not args:
        return b""
    if len(args) == 1 and type(args[0]) in (bytes, bytearray):
        return bytes(args[0])
    raise pickle.UnpicklingError("only bytes() of nothing or of bytes is allowed")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals the CIFAR-10 unpickler resolves.

    What numpy needs to rebuild a plain array and its dtype (``_reconstruct``, ``ndarray``,
    ``dtype``, ``scalar``, and ``_frombuffer`` for protocol 5), under both the numpy 1 and the
    numpy 2 module names, plus two guarded stand-ins for how Python 3 writes ``bytes`` into a
    protocol-2 pickle (``_codecs.encode(<str>, "latin1")`` and ``bytes()``).
    """
    reconstruct = np.zeros(1, dtype=np.uint8).__reduce__()[0]
    scalar = np.uint8(0).__reduce__()[0]
    frombuffer = np.zeros(1, dtype=np.uint8).__reduce_ex__(5)[0]
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("builtins", "bytes"): _plain_bytes,
        ("__builtin__", "bytes"): _plain_bytes,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "_reconstruct")] = reconstruct
        table[(module, "scalar")] = scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(module, "_frombuffer")] = frombuffer
    return table


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain numpy arrays and nothing else."""

    _ALLOWED = _numpy_globals()

    def __init__(self, file: io.BytesIO, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        """Resolve only the numpy array / dtype constructors; refuse everything else."""
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"cifar10: refusing to unpickle {module}.{name} from {self._path} "
                "(not a CIFAR-10 batch; replace the file)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids (CIFAR-10 batches have none)."""
        raise DataError(f"cifar10: refusing persistent id in {self._path} (not a CIFAR-10 batch)")


def _plain(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if type(value) in (bytes, str, int, float) or value is None:
        return True
    if type(value) is np.ndarray:
        return bool(value.dtype != np.dtype(object))
    if type(value) in (list, tuple):
        return all(_plain(v) for v in value)
    return False


def _cifar_key(batch: dict[Any, Any], key: str) -> Any:
    if key.encode() in batch:
        return batch[key.encode()]
    return batch.get(key)


def _parse_cifar_py(path: Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    raw = read_bytes(path, "cifar10")
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), path).load()
    except DataError:
        raise
    except Exception as exc:  # any malformed pickle: EOF, bad opcode, bad numpy state, ...
        raise DataError(
            f"cifar10: {path} is not a readable CIFAR-10 python batch ({type(exc).__name__}: "
            f"{exc}); replace the file"
        ) from exc
    if type(batch) is not dict or not all(type(k) in (bytes, str) for k in batch):
        raise DataError(
            f"cifar10: {path} does not hold a dict with bytes keys (not a CIFAR-10 batch)"
        )
    if not all(_plain(v) for v in batch.values()):
        raise DataError(
            f"cifar10: {path} holds values other than plain data (not a CIFAR-10 batch)"
        )
    data = _cifar_key(batch, "data")
    labels = _cifar_key(batch, "labels")
    if (
        type(data) is not np.ndarray
        or data.dtype != np.uint8
        or data.ndim != 2
        or (data.shape[1] != 3 * 32 * 32)
    ):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"cifar10: {path}: b'data' must be a uint8 array [N, 3072], got {got}")
    if type(labels) is not list or not all(type(v) is int for v in labels):
        raise DataError(f"cifar10: {path}: b'labels' must be a list of ints")
    if len(labels) != len(data):
        raise DataError(
            f"cifar10: {path} has {len(data)} images but {len(labels)} labels (corrupt file)"
        )
    y = np.asarray(labels, dtype=np.int64)
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"cifar10: {path} has labels outside 0..9 (corrupt file)")
    return data, y


def _parse_cifar_bin(path: Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    raw = read_bytes(path, "cifar10")
    if len(raw) == 0 or len(raw) % _CIFAR_RECORD:
        raise DataError(
            f"cifar10: {path} has {len(raw)} bytes, not a positive multiple of the "
            f"{_CIFAR_RECORD}-byte record (truncated or not a CIFAR-10 binary batch)"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError(
            f"cifar10: {path} has label {int(labels.max())} (expected 0..9; "
            "not a CIFAR-10 binary batch, CIFAR-100 perhaps)"
        )
    return records[:, 1:], labels


def _cifar_layout(directory: Path) -> tuple[str, Path] | None:
    """Find the CIFAR-10 files under ``directory``: ``("bin"|"py", folder)``, binary first."""
    for kind, files in (("bin", _CIFAR_BIN), ("py", _CIFAR_PY)):
        for folder in (directory, directory / _CIFAR_SUBDIRS[kind]):
            if all((folder / f).is_file() for f in files):
                return kind, folder
    return None


def _cifar_normalise(pixels: npt.NDArray[np.uint8]) -> FloatArray:
    x = pixels.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(CIFAR10_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(CIFAR10_STD, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def find_cifar(data_dir: Path | None) -> tuple[str, Path]:
    searched = locations.search_dirs("cifar10", data_dir)
    for directory in searched:
        found = _cifar_layout(directory)
        if found is not None:
            return found
    where = " or ".join(str(d) for d in searched)
    raise DataError(
        f"cifar10: no CIFAR-10 files in {where} (need data_batch_1.bin..data_batch_5.bin and "
        "test_batch.bin, or the python version data_batch_1..data_batch_5 and test_batch, "
        f"directly there or in {_CIFAR_SUBDIRS['bin']}/ or {_CIFAR_SUBDIRS['py']}/; get them "
        f"from {CIFAR_URL} and set --data-dir / XBARC_DATA)"
    )


def load_cifar10(data_dir: Path | None, limit: int | None) -> Dataset:
    found = find_cifar(data_dir)
    kind, folder = found
    parse = _parse_cifar_bin if kind == "bin" else _parse_cifar_py
    files = _CIFAR_BIN if kind == "bin" else _CIFAR_PY
    train_x: list[npt.NDArray[np.uint8]] = []
    train_y: list[npt.NDArray[np.int64]] = []
    have = 0
    for fname in files[:5]:
        if limit is not None and have >= limit:
            break
        px, lab = parse(folder / fname)
        train_x.append(px)
        train_y.append(lab)
        have += len(lab)
    test_px, test_y = parse(folder / files[5])
    x_train = np.concatenate(train_x)[:limit]
    y_train = np.concatenate(train_y)[:limit]
    test_px, test_y = test_px[:limit], test_y[:limit]
    return Dataset(
        "cifar10",
        _cifar_normalise(x_train),
        y_train,
        _cifar_normalise(test_px),
        test_y,
        10,
        str(folder),
    )
