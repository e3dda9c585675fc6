"""Hostile Digit-Five pickles and torchvision files: each is refused with an error naming the
file and what it should hold, runs nothing and allocates nothing it does not hold, or is read
as the images and labels it holds.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import io
import pickle
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
import torch

from fedmatch.data.digit_five import load_digit_five_domain
from fedmatch.data.safe_pickle import UnsafePickleError
from fedmatch.data.torchvision_roots import load_torchvision_domain
from tests.test_real_data import _idx_bytes, _write_mnist, _write_svhn, _write_usps

pytestmark = pytest.mark.hostile("digit-five")

GREY = np.zeros((2, 28, 28), np.uint8)
LABELS = np.array([3, 7], np.int64)


class _Call:
    """Pickles to ``call(*args)``: what a crafted file would run on load."""

    def __init__(self, call: Callable[..., Any], *args: Any) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.call, self.args


def _root(tmp_path: Path, test_pkl: bytes) -> tuple[Path, Path]:
    """A Digit-Five root with one good train part and ``test_pkl`` as MNIST's test.pkl."""
    root = tmp_path / "digit5"
    (root / "MNIST" / "partitions").mkdir(parents=True)
    (root / "MNIST" / "partitions" / "train_part0.pkl").write_bytes(pickle.dumps((GREY, LABELS)))
    (root / "MNIST" / "test.pkl").write_bytes(test_pkl)
    return root, root / "MNIST" / "test.pkl"


def _load(root: Path):
    return load_digit_five_domain(root, "MNIST", train_percent=0.1)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _object_pair(first: Any, second: Any) -> np.ndarray:
    pair = np.empty(2, dtype=object)
    pair[0], pair[1] = first, second
    return pair


# ------------------------------------------------------------------ code and memory safety


def _hostile_calls(marker: Path) -> dict[str, _Call]:
    inner = pickle.dumps(_Call(open, str(marker), "w"))
    return {
        "io.open": _Call(open, str(marker), "w"),
        "builtins.exec": _Call(exec, f"open({str(marker)!r}, 'w')"),
        "codecs.open": _Call(codecs.open, str(marker), "w"),
        "functools.partial": _Call(functools.partial, open, str(marker), "w"),
        "numpy.save": _Call(np.save, str(marker), np.zeros(1)),
        "pickle.loads": _Call(pickle.loads, inner),
    }


@pytest.mark.parametrize("name", list(_hostile_calls(Path("m"))))
def test_a_pickle_naming_any_other_global_is_refused_and_never_runs(
    tmp_path: Path, name: str
) -> None:
    marker = tmp_path / "pwned"
    root, path = _root(tmp_path, pickle.dumps((GREY, _hostile_calls(marker)[name]), protocol=0))
    with pytest.raises(UnsafePickleError) as err:
        _load(root)
    assert f"{path}: refusing to unpickle global {name}" in str(err.value)
    assert not marker.exists() and not marker.with_suffix(".npy").exists()


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        # ndarray((10**6, 10**6)): numpy's pickles never call it; it allocates a terabyte.
        (b"\x80\x02cnumpy\nndarray\n(J@B\x0f\x00J@B\x0f\x00\x86tR.", "call numpy.ndarray"),
        (
            b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
            b"(J@B\x0f\x00J@B\x0f\x00\x86tC\x01b\x87R.",
            "_reconstruct",
        ),
        (b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00@\x85R.", "builtins.bytes"),  # 1 GiB
        (b"\x80\x02Pabc\n.", "persistent id 'abc'"),
        (b"c__builtin__\neval\n(V1\ntR.", "global builtins.eval"),  # Python 2 names too
    ],
)
def test_a_pickle_that_would_allocate_or_look_up_anything_is_refused(
    tmp_path: Path, payload: bytes, fragment: str
) -> None:
    root, path = _root(tmp_path, payload)
    with pytest.raises(UnsafePickleError) as err:
        _load(root)
    assert str(err.value).startswith(f"{path}: refusing") and fragment in str(err.value)


def test_the_empty_bytes_call_python_writes_is_not_refused(tmp_path: Path) -> None:
    # Python 3 writes b"" into protocol 0-2 pickles as bytes(): the one call allowed.
    pair = (GREY, LABELS, b"")
    root, path = _root(tmp_path, pickle.dumps(pair, protocol=2))
    with pytest.raises(ValueError, match=re.escape(f"{path}: expected an (images, labels) pair")):
        _load(root)  # refused for its length 3, not for the bytes() call


# ------------------------------------------------------------------------- malformed files


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "not a pickled (images, labels) pair (EOFError"),
        (pickle.dumps((GREY, LABELS))[:40], "not a pickled (images, labels) pair"),
        (b"\x93NUMPY\x01\x00", "reading array header length"),
        (b"\x93NUMPY\x03\x00" + _npy(np.zeros(3))[8:], ".npy format version (3, 0)"),
        (_npy(_object_pair(GREY, LABELS)).replace(b"(2,)", b"(3,)"), "header shape (3,)"),
        (pickle.dumps({"images": GREY}), "expected an (images, labels) pair, got dict"),
        (pickle.dumps((GREY, LABELS, 1)), "got tuple of length 3"),
        (pickle.dumps(("abc", "def")), "images must have shape (N, H, W)"),
        (pickle.dumps((None, None)), "images must have shape (N, H, W)"),
    ],
)
def test_a_malformed_pickle_is_refused_naming_the_file(
    tmp_path: Path, content: bytes, fragment: str
) -> None:
    root, path = _root(tmp_path, content)
    with pytest.raises(ValueError) as err:
        _load(root)
    assert str(err.value).startswith(f"{path}: ") and fragment in str(err.value)


def test_an_npz_archive_is_refused_naming_its_keys(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, images=GREY, labels=LABELS)
    root, path = _root(tmp_path, buffer.getvalue())
    with pytest.raises(ValueError, match=re.escape(f"{path}: is an .npz archive with keys")):
        _load(root)


@pytest.mark.parametrize(
    ("images", "labels", "fragment"),
    [
        (GREY, np.array([np.nan, 1.0]), "labels must be whole numbers"),
        (GREY, np.array([1.5, 1.0]), "labels must be whole numbers"),
        (GREY, np.array(["a", "b"]), "labels must be integers, got dtype <U1"),
        (GREY, np.array([True, False]), "labels must be integers, got dtype bool"),
        (GREY, np.array([1 + 1j, 2]), "labels must be integers, got dtype complex128"),
        (GREY, np.zeros((2, 2), np.int64), "labels must have shape (2,) or (2, 1)"),
        (GREY, np.int64(3), "labels must have shape (2,) or (2, 1), got ()"),
        (GREY, np.array([2**64 - 1, 1], np.uint64), "found [18446744073709551615]"),
        (GREY, np.array([-1, 1]), "labels must lie in 0..9, found [-1]"),
        (np.full((2, 28, 28), 300), LABELS, "pixels in 0..255, got range 300..300"),
        (np.full((2, 28, 28), -1), LABELS, "pixels in 0..255, got range -1..-1"),
        (GREY.astype(bool), LABELS, "must be uint8 pixels 0..255, got dtype bool"),
        (GREY.astype(np.float16), LABELS, "got dtype float16"),
        (np.zeros((2, 28, 28, 2), np.uint8), LABELS, "got (2, 28, 28, 2)"),
        (np.zeros(2, np.uint8), LABELS, "got (2,)"),
        (np.zeros((2, 1, 28, 28, 3), np.uint8), LABELS, "got (2, 1, 28, 28, 3)"),
        (np.zeros((2, 0, 28), np.uint8), LABELS, "got (2, 0, 28)"),
        (np.zeros((2, 28, 28), "M8[s]"), LABELS, "got dtype datetime64[s]"),
        (np.zeros((2, 28, 28), [("a", "u1")]), LABELS, "got dtype [('a', 'u1')]"),
    ],
)
def test_wrong_dtypes_shapes_and_values_are_named(
    tmp_path: Path, images: Any, labels: Any, fragment: str
) -> None:
    root, path = _root(tmp_path, pickle.dumps((images, labels)))
    with pytest.raises(ValueError) as err:
        _load(root)
    assert str(err.value).startswith(f"{path}: ") and fragment in str(err.value)


@pytest.mark.parametrize(
    "pair",
    [
        (GREY.astype(">u2"), LABELS),  # big-endian, in range
        (GREY.tolist(), LABELS.tolist()),  # plain lists
        (np.zeros((2, 1, 1), np.uint8), LABELS),  # any size is resized
        (np.zeros((2, 28, 28, 1), np.uint8), LABELS[:, None].astype(np.float32)),
    ],
)
def test_unusual_but_valid_pairs_are_read_as_their_values(tmp_path: Path, pair: Any) -> None:
    root, _ = _root(tmp_path, pickle.dumps(pair))
    domain = _load(root)
    assert domain.x_test.shape == (2, 3, 28, 28) and domain.x_test.max() == 0
    assert domain.y_test.tolist() == [3, 7]


@pytest.mark.parametrize("kind", ["a folder", "a dead link", "its domain folder a file"])
def test_a_file_that_is_not_a_file_is_listed_as_missing(tmp_path: Path, kind: str) -> None:
    root, path = _root(tmp_path, b"")
    path.unlink()
    if kind == "a folder":
        path.mkdir()
    elif kind == "a dead link":
        path.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as err:
        if kind == "its domain folder a file":
            (root / "SVHN").write_text("x")
            load_digit_five_domain(root, "SVHN", train_percent=0.1)
        else:
            _load(root)
    message = str(err.value)
    assert "Missing 2 of 2" in message or f"Missing 1 of 2 expected file(s):\n  {path}" in message
    assert "FedBN" in message


# --------------------------------------------------------------------------- torchvision


def test_an_mnist_gz_that_is_not_gzip_is_named(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").unlink()
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot be decompressed/read") as err:
        load_torchvision_domain(tmp_path, "MNIST")
    assert str(raw / "t10k-labels-idx1-ubyte.gz") in str(err.value)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "too short for an idx3 header (0 bytes)"),
        (struct.pack(">4I", 2051, 2**31, 28, 28) + b"\x00" * 10, "header declares shape"),
        (gzip.compress(b"x"), "idx magic number"),  # compressed bytes under the plain name
    ],
)
def test_a_malformed_mnist_idx_file_is_named(tmp_path: Path, data: bytes, fragment: str) -> None:
    _write_mnist(tmp_path)
    bad = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    bad.write_bytes(data)
    with pytest.raises(ValueError, match=re.escape(fragment)) as err:
        load_torchvision_domain(tmp_path, "MNIST")
    assert str(bad) in str(err.value)


def test_mnist_labels_that_do_not_match_the_images_are_named(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    bad = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    bad.write_bytes(_idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(ValueError, match="holds 3 labels but") as err:
        load_torchvision_domain(tmp_path, "MNIST")
    assert str(bad) in str(err.value)


def test_a_hostile_legacy_mnist_cache_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir(parents=True)
    torch.save((torch.zeros(2, 28, 28, dtype=torch.uint8), _Call(open, str(marker), "w")),
               processed / "training.pt")  # fmt: skip
    torch.save((torch.zeros(2, 28, 28, dtype=torch.uint8), torch.zeros(2)), processed / "test.pt")
    with pytest.raises(ValueError, match="unreadable torchvision MNIST cache") as err:
        load_torchvision_domain(tmp_path, "MNIST")
    assert str(processed / "training.pt") in str(err.value) and not marker.exists()


@pytest.mark.parametrize(
    ("variables", "fragment"),
    [
        ({"X": np.zeros((32, 32, 3, 2), np.uint8)}, "missing variable(s) ['y']"),
        ({"X": np.zeros((32, 32, 2), np.uint8), "y": np.ones((2, 1))}, "X must have shape"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))}, "y must have shape"),
        ({"X": np.full((32, 32, 3, 2), 999.0), "y": np.ones((2, 1))}, "dtype float64"),
    ],
)
def test_a_malformed_svhn_mat_file_is_named(
    tmp_path: Path, variables: dict[str, np.ndarray], fragment: str
) -> None:
    _write_svhn(tmp_path)
    bad = tmp_path / "train_32x32.mat"
    scipy.io.savemat(bad, variables)
    with pytest.raises(ValueError, match=re.escape(fragment)) as err:
        load_torchvision_domain(tmp_path, "SVHN")
    assert str(bad) in str(err.value)


def test_a_matlab_73_file_is_named_as_unsupported(tmp_path: Path) -> None:
    _write_svhn(tmp_path)
    bad = tmp_path / "test_32x32.mat"
    # A v7.3 (HDF5) header: text, then version 0x0200 and the 'IM' byte-order mark.
    bad.write_bytes(b"MATLAB 7.3 MAT-file".ljust(124, b" ") + b"\x00\x02IM" + b"\x00" * 512)
    with pytest.raises(ValueError, match=r"MATLAB v7\.3 files are not supported") as err:
        load_torchvision_domain(tmp_path, "SVHN")
    assert str(bad) in str(err.value)


def test_a_usps_label_out_of_range_is_named(tmp_path: Path) -> None:
    import bz2

    _write_usps(tmp_path)
    bad = tmp_path / "usps.bz2"
    line = "12 " + " ".join(f"{j + 1}:0.5" for j in range(256))
    bad.write_bytes(bz2.compress((line + "\n").encode()))
    with pytest.raises(ValueError, match=r"0\.\.9, found \[11\]") as err:
        load_torchvision_domain(tmp_path, "USPS")
    assert str(bad) in str(err.value)
