"""The Digit-Five reader rebuilds numpy arrays from pickles and refuses anything else."""

from __future__ import annotations

import builtins
import os
import pickle
import re
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedmatch.data.digit_five import _unpickle_pair
from fedmatch.data.safe_pickle import UnsafePickleError

pytestmark = pytest.mark.hostile("digit-five")

IMAGES = np.arange(2 * 28 * 28 * 3, dtype=np.uint8).reshape(2, 28, 28, 3)
LABELS = np.array([3, 7], dtype=np.int64)


class _Hostile:
    """Pickles to ``call(*args)``: what a crafted file would run on load."""

    def __init__(self, call: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.call, self.args


def _hostile_payloads(marker: Path) -> dict[str, _Hostile]:
    return {
        "os.system": _Hostile(os.system, (f"touch {marker}",)),
        "builtins.eval": _Hostile(builtins.eval, (f"open({str(marker)!r}, 'w')",)),
        "subprocess.Popen": _Hostile(subprocess.Popen, (["touch", str(marker)],)),
    }


def _global_name(call: Callable[..., Any]) -> str:
    # What pickle writes for the callable (os.system is posix.system on Linux).
    return f"{call.__module__}.{call.__qualname__}"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_pickled_pair_of_arrays_loads_with_every_protocol(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "train_part0.pkl"
    path.write_bytes(pickle.dumps((IMAGES, LABELS), protocol=protocol))
    images, labels = _unpickle_pair(path)
    np.testing.assert_array_equal(images, IMAGES)
    np.testing.assert_array_equal(labels, LABELS)
    assert images.dtype == np.uint8 and labels.dtype == np.int64


def test_an_np_save_object_array_pair_loads(tmp_path: Path) -> None:
    pair = np.empty(2, dtype=object)
    pair[0], pair[1] = IMAGES, LABELS
    path = tmp_path / "test.pkl"
    with path.open("wb") as fh:
        np.save(fh, pair, allow_pickle=True)
    images, labels = _unpickle_pair(path)
    np.testing.assert_array_equal(images, IMAGES)
    np.testing.assert_array_equal(labels, LABELS)


def _py2_pickle(values: bytes, shape: tuple[int, ...]) -> bytes:
    """A protocol-2 pickle of ``(uint8 array, [0])`` as Python 2 / numpy 1 wrote it.

    Python 2 stored the array bytes as a ``str`` (BINSTRING), which needs latin1 to read back.
    """

    def binstring(data: bytes) -> bytes:
        return b"T" + struct.pack("<I", len(data)) + data

    dtype = (
        b"cnumpy\ndtype\n"
        + binstring(b"u1")
        + b"K\x00K\x01\x87R"
        + b"(K\x03"
        + binstring(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )
    dims = b"".join(b"K" + bytes([d]) for d in shape)
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        + b"cnumpy\nndarray\n"
        + b"K\x00\x85"
        + binstring(b"b")
        + b"\x87R"
        + b"(K\x01("
        + dims
        + b"t"
        + dtype
        + b"\x89"
        + binstring(values)
        + b"tb"
    )
    return b"\x80\x02" + array + b"]K\x00a\x86."


def test_a_python2_era_pickle_loads_with_latin1(tmp_path: Path) -> None:
    # Bytes above 0x7f are what ASCII decoding (np.load's default) chokes on.
    values = bytes([0, 127, 128, 255])
    path = tmp_path / "py2.pkl"
    path.write_bytes(_py2_pickle(values, (2, 2)))
    images, labels = _unpickle_pair(path)
    np.testing.assert_array_equal(images, np.frombuffer(values, np.uint8).reshape(2, 2))
    assert labels == [0]


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "subprocess.Popen"])
@pytest.mark.parametrize("writer", ["pickle", "np.save"])
def test_a_hostile_pickle_is_refused_and_never_runs(tmp_path: Path, name: str, writer: str) -> None:
    marker = tmp_path / "pwned"
    payload = _hostile_payloads(marker)[name]
    path = tmp_path / "train_part0.pkl"
    if writer == "pickle":
        # The array comes first, so the loader has started rebuilding before it meets the global.
        path.write_bytes(pickle.dumps((IMAGES, payload), protocol=2))
    else:
        pair = np.empty(2, dtype=object)
        pair[0], pair[1] = IMAGES, payload
        with path.open("wb") as fh:
            np.save(fh, pair, allow_pickle=True)
    with pytest.raises(UnsafePickleError) as info:
        _unpickle_pair(path)
    message = str(info.value)
    assert str(path) in message
    assert _global_name(payload.call) in message
    assert not marker.exists()


def test_codecs_encode_is_allowed_only_for_latin1(tmp_path: Path) -> None:
    # A protocol-2 pickle may name _codecs.encode (Python 3 bytes); another codec is refused.
    path = tmp_path / "codec.pkl"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00abX\x03\x00\x00\x00hex\x86R.")
    with pytest.raises(UnsafePickleError, match=re.escape(str(path)) + ".*'hex'"):
        _unpickle_pair(path)


def test_an_npy_without_objects_is_read_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "plain.pkl"
    with path.open("wb") as fh:
        np.save(fh, np.stack([LABELS, LABELS]))
    with pytest.raises(ValueError, match=re.escape(f"{path}: expected an (images, labels) pair")):
        _unpickle_pair(path)
