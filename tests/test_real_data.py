"""Tests for fedmatch.data.real against small fixture files in each real on-disk format."""

from __future__ import annotations

import bz2
import gzip
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fedmatch.data.real import (
    DIGIT_FIVE_DOMAINS,
    load_digit_five_domain,
    load_real_domain,
    load_torchvision_domain,
)
from fedmatch.data.types import DomainArrays

# Native on-disk shapes of the FedBN Digit-Five pickles (channels-last).
DIGIT_FIVE_SHAPES = {
    "MNIST": (28, 28),
    "SVHN": (32, 32, 3),
    "USPS": (16, 16),
    "SynthDigits": (32, 32, 3),
    "MNIST_M": (32, 32, 3),
}
PER_PART = 4
NUM_TEST = 12


def _pixel_value(part: int, index: int) -> int:
    # Distinct per image and per part, so order and constant-preservation can both be checked.
    return (part * 23 + index * 5 + 3) % 256


def _constant_images(values: list[int], shape: tuple[int, ...]) -> np.ndarray:
    """One constant image per value; RGB channels get (v, 255 - v, 7) to pin channel order."""
    out = np.empty((len(values), *shape), dtype=np.uint8)
    for i, v in enumerate(values):
        if len(shape) == 3:
            out[i, ..., 0], out[i, ..., 1], out[i, ..., 2] = v, 255 - v, 7
        else:
            out[i] = v
    return out


def _expected_channels(v: int, rgb: bool) -> tuple[int, int, int]:
    return (v, 255 - v, 7) if rgb else (v, v, v)


def _dump_pair(path: Path, images: np.ndarray, labels: np.ndarray, *, use_np_save: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        if use_np_save:
            pair = np.empty(2, dtype=object)
            pair[0], pair[1] = images, labels
            np.save(fh, pair, allow_pickle=True)
        else:
            pickle.dump((images, labels), fh)


def _write_digit_five(root: Path, name: str) -> None:
    shape = DIGIT_FIVE_SHAPES[name]
    # Cover both writers FedBN users have and both label layouts.
    use_np_save = name in ("SVHN", "MNIST_M")
    column_labels = name in ("USPS", "SynthDigits")
    for part in range(10):
        values = [_pixel_value(part, i) for i in range(PER_PART)]
        labels = np.array([(part + i) % 10 for i in range(PER_PART)], dtype=np.int64)
        if column_labels:
            labels = labels[:, None]
        path = root / name / "partitions" / f"train_part{part}.pkl"
        _dump_pair(path, _constant_images(values, shape), labels, use_np_save=use_np_save)
    values = [_pixel_value(99, i) for i in range(NUM_TEST)]
    labels = np.arange(NUM_TEST, dtype=np.int64) % 10
    _dump_pair(
        root / name / "test.pkl", _constant_images(values, shape), labels, use_np_save=use_np_save
    )


@pytest.fixture
def digit_five_root(tmp_path: Path) -> Path:
    root = tmp_path / "digit5"
    for name in DIGIT_FIVE_DOMAINS:
        _write_digit_five(root, name)
    return root


def _assert_domain_arrays(d: DomainArrays, name: str, n_train: int, n_test: int) -> None:
    assert d.name == name
    assert d.x_train.shape == (n_train, 3, 28, 28) and d.x_train.dtype == np.uint8
    assert d.x_test.shape == (n_test, 3, 28, 28) and d.x_test.dtype == np.uint8
    assert d.y_train.shape == (n_train,) and d.y_train.dtype == np.int64
    assert d.y_test.shape == (n_test,) and d.y_test.dtype == np.int64


# --------------------------------------------------------------------------------------------
# Digit-Five
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DIGIT_FIVE_DOMAINS)
def test_digit_five_all_domains_shapes_labels_pixels(digit_five_root: Path, name: str) -> None:
    d = load_digit_five_domain(digit_five_root, name)
    _assert_domain_arrays(d, name, 10 * PER_PART, NUM_TEST)
    rgb = len(DIGIT_FIVE_SHAPES[name]) == 3
    for part in range(10):
        for i in range(PER_PART):
            img = d.x_train[part * PER_PART + i]
            for c, expected in enumerate(_expected_channels(_pixel_value(part, i), rgb)):
                assert np.all(img[c] == expected), (part, i, c)
            assert d.y_train[part * PER_PART + i] == (part + i) % 10
    np.testing.assert_array_equal(d.y_test, np.arange(NUM_TEST) % 10)
    for i in range(NUM_TEST):
        for c, expected in enumerate(_expected_channels(_pixel_value(99, i), rgb)):
            assert np.all(d.x_test[i, c] == expected), (i, c)


@pytest.mark.parametrize(
    ("percent", "n_train"),
    [
        (1.0, 10 * PER_PART),
        (0.1, PER_PART),  # FedBN: part0 only
        (0.3, 3 * PER_PART),
        (0.25, 2 * PER_PART),  # FedBN floors: int(0.25 * 10) == 2 parts
        (0.05, PER_PART // 2),  # FedBN: the first half of part0
    ],
)
def test_digit_five_train_percent(digit_five_root: Path, percent: float, n_train: int) -> None:
    d = load_digit_five_domain(digit_five_root, "MNIST", train_percent=percent)
    _assert_domain_arrays(d, "MNIST", n_train, NUM_TEST)
    expected_first = [_pixel_value(p, i) for p in range(10) for i in range(PER_PART)][:n_train]
    np.testing.assert_array_equal(d.x_train[:, 0, 0, 0], expected_first)


@pytest.mark.hostile("digit-five")
def test_digit_five_percent_only_needs_its_parts(digit_five_root: Path) -> None:
    (digit_five_root / "USPS" / "partitions" / "train_part7.pkl").unlink()
    d = load_digit_five_domain(digit_five_root, "USPS", train_percent=0.5)
    assert d.x_train.shape[0] == 5 * PER_PART
    with pytest.raises(FileNotFoundError, match=r"train_part7\.pkl"):
        load_digit_five_domain(digit_five_root, "USPS", train_percent=1.0)


@pytest.mark.parametrize("percent", [0.0, -0.1, 1.5])
@pytest.mark.hostile("digit-five")
def test_digit_five_bad_percent(digit_five_root: Path, percent: float) -> None:
    with pytest.raises(ValueError, match="train_percent"):
        load_digit_five_domain(digit_five_root, "MNIST", train_percent=percent)


@pytest.mark.hostile("digit-five")
def test_digit_five_missing_root_lists_every_path(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        load_digit_five_domain(root, "SVHN")
    msg = str(info.value)
    for part in range(10):
        assert str(root / "SVHN" / "partitions" / f"train_part{part}.pkl") in msg
    assert str(root / "SVHN" / "test.pkl") in msg
    assert "digit-five" in msg and "data-root" in msg and str(root) in msg
    assert "does not exist" in msg
    assert "FedBN" in msg  # where to get the data


@pytest.mark.hostile("digit-five")
def test_digit_five_missing_files_listed_all_at_once(digit_five_root: Path) -> None:
    missing = [
        digit_five_root / "MNIST_M" / "partitions" / "train_part3.pkl",
        digit_five_root / "MNIST_M" / "partitions" / "train_part8.pkl",
        digit_five_root / "MNIST_M" / "test.pkl",
    ]
    for path in missing:
        path.unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_digit_five_domain(digit_five_root, "MNIST_M")
    msg = str(info.value)
    for path in missing:
        assert str(path) in msg
    assert str(digit_five_root / "MNIST_M" / "partitions" / "train_part0.pkl") not in msg
    assert "Missing 3 of 11" in msg


@pytest.mark.hostile("digit-five")
def test_digit_five_unpicklable_file_is_named(digit_five_root: Path) -> None:
    bad = digit_five_root / "SynthDigits" / "partitions" / "train_part2.pkl"
    bad.write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        load_digit_five_domain(digit_five_root, "SynthDigits")


@pytest.mark.parametrize(
    ("images", "labels", "problem"),
    [
        (np.zeros((4, 3, 32, 32), np.uint8), np.zeros(4, np.int64), "shape"),  # channels-first
        (np.zeros((4, 28, 28), np.float32), np.zeros(4, np.int64), "uint8"),
        (np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 10, 2]), "0..9"),
        (np.zeros((4, 28, 28), np.uint8), np.zeros(5, np.int64), "labels must have shape"),
        (np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64), "no images"),
    ],
)
@pytest.mark.hostile("digit-five")
def test_digit_five_malformed_contents_are_named(
    digit_five_root: Path, images: np.ndarray, labels: np.ndarray, problem: str
) -> None:
    bad = digit_five_root / "MNIST" / "test.pkl"
    _dump_pair(bad, images, labels, use_np_save=False)
    with pytest.raises(ValueError, match=re.escape(problem)) as info:
        load_digit_five_domain(digit_five_root, "MNIST")
    assert str(bad) in str(info.value)


@pytest.mark.hostile("digit-five")
def test_digit_five_not_a_pair_is_named(digit_five_root: Path) -> None:
    bad = digit_five_root / "MNIST" / "test.pkl"
    with bad.open("wb") as fh:
        pickle.dump({"images": 1}, fh)
    with pytest.raises(ValueError, match="pair") as info:
        load_digit_five_domain(digit_five_root, "MNIST")
    assert str(bad) in str(info.value)


def test_digit_five_resize_matches_pil_bilinear(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(6) % 10
    root = tmp_path / "d5"
    _dump_pair(root / "SVHN" / "partitions" / "train_part0.pkl", images, labels, use_np_save=False)
    _dump_pair(root / "SVHN" / "test.pkl", images, labels, use_np_save=False)
    d = load_digit_five_domain(root, "SVHN", train_percent=0.1)
    pil = np.stack(
        [np.asarray(Image.fromarray(im).resize((28, 28), Image.BILINEAR)) for im in images]
    ).transpose(0, 3, 1, 2)
    assert np.abs(d.x_train.astype(int) - pil.astype(int)).max() <= 1


@pytest.mark.hostile("digit-five")
def test_unknown_names_and_kinds(digit_five_root: Path) -> None:
    with pytest.raises(ValueError, match=r"'SynthDigitz'.*MNIST, SVHN, USPS, SynthDigits"):
        load_digit_five_domain(digit_five_root, "SynthDigitz")
    with pytest.raises(ValueError, match=r"'MNIST_M'.*MNIST, SVHN, USPS"):
        load_torchvision_domain(digit_five_root, "MNIST_M")
    with pytest.raises(ValueError, match=r"'imagenet'.*digit-five, torchvision"):
        load_real_domain("imagenet", digit_five_root, "MNIST")


def test_load_real_domain_dispatches(digit_five_root: Path) -> None:
    d = load_real_domain("digit-five", digit_five_root, "USPS", train_percent=0.2)
    _assert_domain_arrays(d, "USPS", 2 * PER_PART, NUM_TEST)
    with pytest.raises(ValueError, match="train_percent"):
        load_real_domain("torchvision", digit_five_root, "USPS", train_percent=0.5)


# --------------------------------------------------------------------------------------------
# torchvision roots
# --------------------------------------------------------------------------------------------

MNIST_TRAIN, MNIST_TEST = 20, 10


def _idx_bytes(array: np.ndarray) -> bytes:
    magic = 2051 if array.ndim == 3 else 2049
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(root: Path, *, gz: bool = False) -> dict[str, np.ndarray]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", MNIST_TRAIN), ("t10k", MNIST_TEST)):
        images = _constant_images([(7 * i + 1) % 256 for i in range(n)], (28, 28))
        images[:, 0, 0] = 255  # a non-constant pixel must survive untouched (no resize at 28)
        labels = (np.arange(n) * 3 % 10).astype(np.uint8)
        arrays[f"{prefix}-images-idx3-ubyte"] = images
        arrays[f"{prefix}-labels-idx1-ubyte"] = labels
    for stem, array in arrays.items():
        data = _idx_bytes(array)
        if gz:
            (raw / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (raw / stem).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_torchvision_mnist(tmp_path: Path, gz: bool) -> None:
    arrays = _write_mnist(tmp_path, gz=gz)
    d = load_torchvision_domain(tmp_path, "MNIST")
    _assert_domain_arrays(d, "MNIST", MNIST_TRAIN, MNIST_TEST)
    for c in range(3):
        np.testing.assert_array_equal(d.x_train[:, c], arrays["train-images-idx3-ubyte"])
        np.testing.assert_array_equal(d.x_test[:, c], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(d.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(d.y_test, arrays["t10k-labels-idx1-ubyte"])
    if gz:  # decompression must not write into the user's data-root
        assert sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir()) == sorted(
            f"{stem}.gz" for stem in arrays
        )


@pytest.mark.hostile("digit-five")
def test_torchvision_mnist_missing_lists_all(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "train-labels-idx1-ubyte").unlink()
    (raw / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_torchvision_domain(tmp_path, "MNIST")
    msg = str(info.value)
    assert str(raw / "train-labels-idx1-ubyte") in msg
    assert str(raw / "t10k-images-idx3-ubyte") in msg
    assert "train-images-idx3-ubyte " not in msg and "(or t10k-images-idx3-ubyte.gz)" in msg
    assert "torchvision" in msg and str(tmp_path) in msg and "download=True" in msg


@pytest.mark.parametrize("damage", ["magic", "truncate"])
@pytest.mark.hostile("digit-five")
def test_torchvision_mnist_malformed_is_named(tmp_path: Path, damage: str) -> None:
    _write_mnist(tmp_path)
    bad = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    data = bad.read_bytes()
    data = struct.pack(">I", 1234) + data[4:] if damage == "magic" else data[:-3]
    bad.write_bytes(data)
    with pytest.raises(ValueError, match="magic" if damage == "magic" else "bytes") as info:
        load_torchvision_domain(tmp_path, "MNIST")
    assert str(bad) in str(info.value)


@pytest.mark.hostile("digit-five")
def test_torchvision_mnist_bad_label_is_named(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    bad = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    bad.write_bytes(_idx_bytes(np.full(MNIST_TRAIN, 11, dtype=np.uint8)))
    with pytest.raises(ValueError, match=r"0\.\.9") as info:
        load_torchvision_domain(tmp_path, "MNIST")
    assert str(bad) in str(info.value)


def _write_svhn(root: Path, n_train: int = 15, n_test: int = 7) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images = _constant_images([(11 * i + 2) % 256 for i in range(n)], (32, 32, 3))
        x = np.ascontiguousarray(images.transpose(1, 2, 3, 0))  # SVHN stores (H, W, 3, N)
        y = (np.arange(n) % 10 + 1).astype(np.uint8)[:, None]  # 1..10, 10 means digit 0
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})


def test_torchvision_svhn(tmp_path: Path) -> None:
    _write_svhn(tmp_path)
    d = load_torchvision_domain(tmp_path, "SVHN")
    _assert_domain_arrays(d, "SVHN", 15, 7)
    np.testing.assert_array_equal(d.y_train, (np.arange(15) % 10 + 1) % 10)
    assert 0 in d.y_train and d.y_train.max() == 9
    for i in range(15):
        for c, expected in enumerate(_expected_channels((11 * i + 2) % 256, rgb=True)):
            assert np.all(d.x_train[i, c] == expected)


@pytest.mark.hostile("digit-five")
def test_torchvision_svhn_missing_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_torchvision_domain(tmp_path / "empty", "SVHN")
    msg = str(info.value)
    assert "train_32x32.mat" in msg and "test_32x32.mat" in msg and "Missing 2 of 2" in msg

    _write_svhn(tmp_path)
    bad = tmp_path / "test_32x32.mat"
    scipy.io.savemat(bad, {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.full((4, 1), 11)})
    with pytest.raises(ValueError, match=r"0\.\.9") as info:
        load_torchvision_domain(tmp_path, "SVHN")
    assert str(bad) in str(info.value)

    bad.write_bytes(b"not a mat file at all")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        load_torchvision_domain(tmp_path, "SVHN")


def _usps_line(label: int, value: float) -> str:
    return f"{label} " + " ".join(f"{j + 1}:{value}" for j in range(256))


def _write_usps(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    values = [-1.0, 1.0, 0.0]  # -> pixels 0, 255, 127 (torchvision truncates 127.5)
    for fname, n in (("usps.bz2", 13), ("usps.t.bz2", 6)):
        lines = [_usps_line(i % 10 + 1, values[i % 3]) for i in range(n)]
        (root / fname).write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))


def test_torchvision_usps(tmp_path: Path) -> None:
    _write_usps(tmp_path)
    d = load_torchvision_domain(tmp_path, "USPS")
    _assert_domain_arrays(d, "USPS", 13, 6)
    np.testing.assert_array_equal(d.y_train, np.arange(13) % 10)  # 1..10 -> 0..9
    for i in range(13):
        assert np.all(d.x_train[i] == (0, 255, 127)[i % 3])


@pytest.mark.hostile("digit-five")
def test_torchvision_usps_missing_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_real_domain("torchvision", tmp_path, "USPS")
    msg = str(info.value)
    assert str(tmp_path / "usps.bz2") in msg and str(tmp_path / "usps.t.bz2") in msg

    _write_usps(tmp_path)
    bad = tmp_path / "usps.t.bz2"
    bad.write_bytes(b"plain text, not bz2")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        load_torchvision_domain(tmp_path, "USPS")

    bad.write_bytes(bz2.compress(b"3 1:0.5 2:0.5\n"))  # 2 features instead of 256
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        load_torchvision_domain(tmp_path, "USPS")


def test_torchvision_mnist_legacy_processed_cache(tmp_path: Path) -> None:
    import torch

    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir(parents=True)
    for fname, n in (("training.pt", 8), ("test.pt", 4)):
        data = torch.full((n, 28, 28), 42, dtype=torch.uint8)
        torch.save((data, torch.arange(n) % 10), processed / fname)
    d = load_torchvision_domain(tmp_path, "MNIST")
    _assert_domain_arrays(d, "MNIST", 8, 4)
    assert np.all(d.x_train == 42)
    np.testing.assert_array_equal(d.y_test, np.arange(4))
