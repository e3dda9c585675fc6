"""MNIST, SVHN and USPS from a torchvision dataset root: the raw files
``torchvision.datasets.MNIST`` / ``SVHN`` / ``USPS`` read from their ``root`` argument.

Nothing is downloaded; every file is checked here before torchvision reads it, because
torchvision fails on a malformed file with bare asserts or index errors.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

from fedmatch.data.real_files import (
    as_labels,
    as_uint8_images,
    check_name,
    require_files,
    to_domain_images,
)
from fedmatch.data.types import DomainArrays

__all__ = ["TORCHVISION_DOMAINS", "load_torchvision_domain"]

logger = logging.getLogger(__name__)

TORCHVISION_DOMAINS: tuple[str, ...] = ("MNIST", "SVHN", "USPS")

_MNIST_IDX = {
    # file stem -> (idx magic number, number of dimensions)
    "train-images-idx3-ubyte": (2051, 3),
    "train-labels-idx1-ubyte": (2049, 1),
    "t10k-images-idx3-ubyte": (2051, 3),
    "t10k-labels-idx1-ubyte": (2049, 1),
}
_TORCHVISION_HELP = {
    "MNIST": (
        "Run torchvision.datasets.MNIST(<data-root>, download=True) once on a machine with "
        "internet access, or put the four idx files (optionally .gz) from "
        "https://ossci-datasets.s3.amazonaws.com/mnist/ into <data-root>/MNIST/raw/."
    ),
    "SVHN": (
        "Run torchvision.datasets.SVHN(<data-root>, split='train'/'test', download=True) once "
        "on a machine with internet access, or download "
        "http://ufldl.stanford.edu/housenumbers/train_32x32.mat and test_32x32.mat into "
        "<data-root>/."
    ),
    "USPS": (
        "Run torchvision.datasets.USPS(<data-root>, train=True/False, download=True) once on a "
        "machine with internet access, or download "
        "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/usps.bz2 and "
        "usps.t.bz2 into <data-root>/."
    ),
}


def load_torchvision_domain(root: str | Path, name: str) -> DomainArrays:
    """Load MNIST, SVHN or USPS from a torchvision dataset root (never downloads).

    Expected files (exactly what ``torchvision.datasets`` reads):

    * MNIST: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (each may instead
      be the ``.gz`` torchvision downloads; torchvision's legacy ``MNIST/processed/{training,
      test}.pt`` pair is also accepted because torchvision itself prefers it).
    * SVHN: ``<root>/train_32x32.mat`` and ``<root>/test_32x32.mat``; label 10 means digit 0.
    * USPS: ``<root>/usps.bz2`` and ``<root>/usps.t.bz2`` (libsvm text, labels 1..10).
    """
    check_name(name, TORCHVISION_DOMAINS, "torchvision")
    root = Path(root).expanduser()
    if name == "MNIST":
        x_train, y_train, x_test, y_test = _load_torchvision_mnist(root)
    elif name == "SVHN":
        x_train, y_train, x_test, y_test = _load_svhn(root)
    else:
        x_train, y_train, x_test, y_test = _load_torchvision_usps(root)
    logger.info(
        "loaded torchvision domain %s from %s: %d train, %d test",
        name,
        root,
        x_train.shape[0],
        x_test.shape[0],
    )
    return DomainArrays(name, x_train, y_train, x_test, y_test)


_Splits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _load_torchvision_mnist(root: Path) -> _Splits:
    from torchvision.datasets import MNIST

    processed = root / "MNIST" / "processed"
    legacy = [processed / "training.pt", processed / "test.pt"]
    if all(p.is_file() for p in legacy):
        # torchvision reads its old cached tensors before the raw files, so we do too.
        splits = []
        for train, path in zip((True, False), legacy, strict=True):
            try:
                ds = MNIST(str(root), train=train, download=False)
            except Exception as error:
                raise ValueError(f"{path}: unreadable torchvision MNIST cache: {error}") from error
            x = as_uint8_images(ds.data.numpy(), path)
            splits += [to_domain_images(x), as_labels(ds.targets.numpy(), len(x), path)]
        return splits[0], splits[1], splits[2], splits[3]

    raw = root / "MNIST" / "raw"
    plain = {stem: raw / stem for stem in _MNIST_IDX}
    gz = {raw / stem: raw / f"{stem}.gz" for stem in _MNIST_IDX}
    require_files(
        list(plain.values()),
        root=root,
        kind="torchvision",
        what="torchvision MNIST",
        help_text=_TORCHVISION_HELP["MNIST"],
        alternatives=gz,
    )

    # torchvision only reads the uncompressed files; when any is present only as .gz we
    # decompress into a private copy rather than writing into the user's data-root.
    with tempfile.TemporaryDirectory(prefix="fedmatch-mnist-") as tmp:
        read_root = root
        if not all(p.is_file() for p in plain.values()):
            read_root = Path(tmp)
            (read_root / "MNIST" / "raw").mkdir(parents=True)
        sources: dict[str, Path] = {}
        for stem, path in plain.items():
            source = path if path.is_file() else gz[path]
            sources[stem] = source
            staged = read_root / "MNIST" / "raw" / stem
            if source != staged:
                _stage_copy(source, staged)
            magic, ndim = _MNIST_IDX[stem]
            _check_idx_file(staged, magic, ndim, shown_as=source)

        splits = []
        for train, prefix in ((True, "train"), (False, "t10k")):
            img_src = sources[f"{prefix}-images-idx3-ubyte"]
            lbl_src = sources[f"{prefix}-labels-idx1-ubyte"]
            try:
                ds = MNIST(str(read_root), train=train, download=False)
            except Exception as error:
                raise ValueError(
                    f"{img_src} / {lbl_src}: torchvision could not read them: {error}"
                ) from error
            x = as_uint8_images(ds.data.numpy(), img_src)
            y = ds.targets.numpy()
            if y.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{lbl_src}: holds {y.shape[0]} labels but {img_src} holds {x.shape[0]} images"
                )
            splits += [to_domain_images(x), as_labels(y, len(x), lbl_src)]
    return splits[0], splits[1], splits[2], splits[3]


def _stage_copy(source: Path, dest: Path) -> None:
    try:
        if source.suffix == ".gz":
            with gzip.open(source, "rb") as src, dest.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copyfile(source, dest)
    except (OSError, EOFError) as error:
        raise ValueError(f"{source}: cannot be decompressed/read: {error}") from error


def _check_idx_file(path: Path, magic: int, ndim: int, *, shown_as: Path) -> None:
    """Check an idx header and size here, because torchvision fails with bare asserts."""
    header_len = 4 + 4 * ndim
    with path.open("rb") as fh:
        header = fh.read(header_len)
    if len(header) < header_len:
        raise ValueError(f"{shown_as}: too short for an idx{ndim} header ({len(header)} bytes)")
    (found,) = struct.unpack(">I", header[:4])
    if found != magic:
        raise ValueError(
            f"{shown_as}: idx magic number is {found}, expected {magic} (unsigned-byte idx{ndim})"
        )
    dims = struct.unpack(f">{ndim}I", header[4:])
    expected = header_len + math.prod(dims)
    size = os.path.getsize(path)
    if size != expected:
        raise ValueError(
            f"{shown_as}: header declares shape {dims} ({expected} bytes in all) but the file "
            f"has {size} bytes"
        )


def _load_svhn(root: Path) -> _Splits:
    """Read the SVHN .mat files the way ``torchvision.datasets.SVHN`` does.

    torchvision's SVHN refuses any file whose MD5 differs from the official one (and re-hashes
    the 180 MB training file on every load), so we read the same files with scipy directly,
    applying the same X (H, W, 3, N) transpose and 10 -> 0 label mapping.
    """
    from scipy.io import loadmat

    paths = [root / "train_32x32.mat", root / "test_32x32.mat"]
    require_files(
        paths,
        root=root,
        kind="torchvision",
        what="torchvision SVHN",
        help_text=_TORCHVISION_HELP["SVHN"],
    )
    splits = []
    for path in paths:
        try:
            mat = loadmat(str(path))
        except NotImplementedError as error:
            raise ValueError(f"{path}: MATLAB v7.3 files are not supported: {error}") from error
        except Exception as error:
            raise ValueError(f"{path}: not a readable MATLAB .mat file: {error}") from error
        missing = [key for key in ("X", "y") if key not in mat]
        if missing:
            raise ValueError(f"{path}: missing variable(s) {missing} (expected 'X' and 'y')")
        x = np.asarray(mat["X"])
        if x.ndim != 4 or x.shape[2] != 3:
            raise ValueError(f"{path}: X must have shape (H, W, 3, N), got {x.shape}")
        images = as_uint8_images(x.transpose(3, 0, 1, 2), path, what="X")
        y = np.asarray(mat["y"])
        n = images.shape[0]
        if y.size != n or y.ndim > 2:
            raise ValueError(f"{path}: y must have shape ({n}, 1) to match X, got {y.shape}")
        y = y.reshape(n).astype(np.int64)
        y[y == 10] = 0
        splits += [to_domain_images(images), as_labels(y, n, path)]
    return splits[0], splits[1], splits[2], splits[3]


def _load_torchvision_usps(root: Path) -> _Splits:
    from torchvision.datasets import USPS

    paths = [root / "usps.bz2", root / "usps.t.bz2"]
    require_files(
        paths,
        root=root,
        kind="torchvision",
        what="torchvision USPS",
        help_text=_TORCHVISION_HELP["USPS"],
    )
    splits = []
    for train, path in zip((True, False), paths, strict=True):
        try:
            ds = USPS(str(root), train=train, download=False)
        except (OSError, EOFError, ValueError, IndexError) as error:
            raise ValueError(
                f"{path}: not a bz2 libsvm file of 256 features per line: {error}"
            ) from error
        images = as_uint8_images(ds.data, path)
        # torchvision already shifted the 1..10 labels to 0..9.
        labels = as_labels(np.asarray(ds.targets, dtype=np.int64), images.shape[0], path)
        splits += [to_domain_images(images), labels]
    return splits[0], splits[1], splits[2], splits[3]
