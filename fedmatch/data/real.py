"""Loaders that turn digit data already on disk into :class:`DomainArrays`.

Two on-disk layouts are understood:

* ``"digit-five"`` - the pre-partitioned Digit-Five pickles distributed with FedBN
  (Li et al., ICLR 2021, https://github.com/med-air/FedBN, ``utils/data_utils.py``
  ``DigitsDataset``) and reused unchanged by FedLGD::

      <root>/<domain>/partitions/train_part{0..9}.pkl
      <root>/<domain>/test.pkl

  each holding a pickled ``(images, labels)`` pair.

* ``"torchvision"`` - the raw files that ``torchvision.datasets.MNIST`` / ``SVHN`` / ``USPS``
  read from their ``root`` argument.

Every image is resized to 28x28 (bilinear with anti-aliasing, the PIL-compatible mode FedBN's
``transforms.Resize`` uses), greyscale is repeated into three channels and pixels stay uint8.
Nothing is ever downloaded: missing data raises :class:`FileNotFoundError` listing every
missing path and where the files can be obtained.

``.pkl`` files are unpickled by :class:`fedmatch.data.safe_pickle.ArrayUnpickler`, which
rebuilds numpy arrays only and refuses any other object, so a crafted file cannot run code.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedmatch.data.safe_pickle import UnsafePickleError, load_array_pickle
from fedmatch.data.types import IMAGE_SHAPE, NUM_CLASSES, DomainArrays

__all__ = [
    "DIGIT_FIVE_DOMAINS",
    "REAL_DATA_KINDS",
    "TORCHVISION_DOMAINS",
    "load_digit_five_domain",
    "load_real_domain",
    "load_torchvision_domain",
]

logger = logging.getLogger(__name__)

DIGIT_FIVE_DOMAINS: tuple[str, ...] = ("MNIST", "SVHN", "USPS", "SynthDigits", "MNIST_M")
TORCHVISION_DOMAINS: tuple[str, ...] = ("MNIST", "SVHN", "USPS")
REAL_DATA_KINDS: tuple[str, ...] = ("digit-five", "torchvision")

DIGIT_FIVE_NUM_PARTS = 10
_TARGET_HW = IMAGE_SHAPE[1:]
# Bounds peak float32 memory while resizing (SVHN train is 73k images).
_RESIZE_CHUNK = 2048

_DIGIT_FIVE_HELP = (
    "Get the Digit-Five partitions from the download link in the FedBN README "
    "(https://github.com/med-air/FedBN, section 'Dataset') - FedLGD uses the same files - and "
    "unzip them so that <data-root>/<domain>/partitions/train_part0.pkl and "
    "<data-root>/<domain>/test.pkl exist."
)
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


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def load_real_domain(
    kind: str, root: str | Path, name: str, *, train_percent: float = 1.0
) -> DomainArrays:
    """Load domain ``name`` from ``root`` using the on-disk layout ``kind``.

    ``kind`` is one of :data:`REAL_DATA_KINDS`. ``train_percent`` is only meaningful for
    ``"digit-five"`` (see :func:`load_digit_five_domain`); torchvision roots always load the
    full official splits.
    """
    if kind == "digit-five":
        return load_digit_five_domain(root, name, train_percent=train_percent)
    if kind == "torchvision":
        if train_percent != 1.0:
            raise ValueError(
                f"train_percent={train_percent!r} is only supported for dataset='digit-five'; "
                "dataset='torchvision' always loads the full official splits"
            )
        return load_torchvision_domain(root, name)
    raise ValueError(f"unknown real dataset kind {kind!r}; allowed: {', '.join(REAL_DATA_KINDS)}")


def load_digit_five_domain(root: str | Path, name: str, train_percent: float = 1.0) -> DomainArrays:
    """Load one Digit-Five domain in the FedBN ``DigitsDataset`` layout.

    ``train_percent`` follows FedBN's ``percent`` argument exactly: for ``percent >= 0.1`` the
    first ``int(percent * 10)`` part files are concatenated (0.1 -> ``train_part0`` only,
    1.0 -> all ten); for ``percent < 0.1`` only the first ``int(len(part0) * percent * 10)``
    images of ``train_part0`` are used. The test split is always the whole ``test.pkl``.
    """
    _check_name(name, DIGIT_FIVE_DOMAINS, "Digit-Five")
    if not isinstance(train_percent, int | float) or not 0.0 < train_percent <= 1.0:
        raise ValueError(f"train_percent must lie in (0, 1], got {train_percent!r}")
    root = Path(root).expanduser()
    domain_dir = root / name
    # The epsilon keeps 0.3 * 10 == 2.9999... style float noise from dropping a part.
    num_parts = max(1, math.floor(train_percent * DIGIT_FIVE_NUM_PARTS + 1e-9))
    train_paths = [domain_dir / "partitions" / f"train_part{i}.pkl" for i in range(num_parts)]
    test_path = domain_dir / "test.pkl"
    _require_files(
        [*train_paths, test_path],
        root=root,
        kind="digit-five",
        what=f"Digit-Five domain {name!r}",
        help_text=_DIGIT_FIVE_HELP,
    )

    train_x, train_y = [], []
    for path in train_paths:
        x, y = _read_digit_five_file(path)
        train_x.append(x)
        train_y.append(y)
    x_train = np.concatenate(train_x)
    y_train = np.concatenate(train_y)
    if train_percent < 1.0 / DIGIT_FIVE_NUM_PARTS:
        keep = int(x_train.shape[0] * train_percent * DIGIT_FIVE_NUM_PARTS)
        if keep == 0:
            raise ValueError(
                f"train_percent={train_percent!r} keeps 0 of the {x_train.shape[0]} images in "
                f"{train_paths[0]}"
            )
        x_train, y_train = x_train[:keep], y_train[:keep]
    x_test, y_test = _read_digit_five_file(test_path)

    logger.info(
        "loaded Digit-Five domain %s from %s: %d train (%d part file(s)), %d test",
        name,
        domain_dir,
        x_train.shape[0],
        num_parts,
        x_test.shape[0],
    )
    return DomainArrays(name, x_train, y_train, x_test, y_test)


def load_torchvision_domain(root: str | Path, name: str) -> DomainArrays:
    """Load MNIST, SVHN or USPS from a torchvision dataset root (never downloads).

    Expected files (exactly what ``torchvision.datasets`` reads):

    * MNIST: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (each may instead
      be the ``.gz`` torchvision downloads; torchvision's legacy ``MNIST/processed/{training,
      test}.pt`` pair is also accepted because torchvision itself prefers it).
    * SVHN: ``<root>/train_32x32.mat`` and ``<root>/test_32x32.mat``; label 10 means digit 0.
    * USPS: ``<root>/usps.bz2`` and ``<root>/usps.t.bz2`` (libsvm text, labels 1..10).
    """
    _check_name(name, TORCHVISION_DOMAINS, "torchvision")
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


# --------------------------------------------------------------------------------------------
# Shared validation and conversion
# --------------------------------------------------------------------------------------------


def _check_name(name: str, allowed: Sequence[str], layout: str) -> None:
    if name not in allowed:
        raise ValueError(f"unknown {layout} domain {name!r}; allowed: {', '.join(allowed)}")


def _require_files(
    expected: Sequence[Path],
    *,
    root: Path,
    kind: str,
    what: str,
    help_text: str,
    alternatives: dict[Path, Path] | None = None,
) -> None:
    """Raise one FileNotFoundError naming every missing file, so users fix them all at once.

    ``alternatives`` maps an expected path to another path that satisfies it too.
    """
    alternatives = alternatives or {}
    missing = []
    for path in expected:
        alt = alternatives.get(path)
        if path.is_file() or (alt is not None and alt.is_file()):
            continue
        missing.append(f"  {path}" + (f"  (or {alt.name})" if alt is not None else ""))
    if not missing:
        return
    root_note = "" if root.is_dir() else f" The data-root directory {root} does not exist."
    raise FileNotFoundError(
        f"{what} not found (dataset={kind!r}, data-root={str(root)!r}).{root_note} "
        f"Missing {len(missing)} of {len(expected)} expected file(s):\n"
        + "\n".join(missing)
        + f"\n{help_text}"
    )


def _as_uint8_images(images: Any, source: Path, what: str = "images") -> np.ndarray:
    """Validate channels-last images and return them as uint8 (N, H, W) or (N, H, W, 1|3)."""
    arr = np.asarray(images)
    shape_ok = arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] in (1, 3))
    if not shape_ok or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(
            f"{source}: {what} must have shape (N, H, W) or (N, H, W, 3), got {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{source}: contains no images")
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{source}: {what} must be uint8 pixels 0..255, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() > 255:
        raise ValueError(
            f"{source}: {what} must be pixels in 0..255, got range {arr.min()}..{arr.max()}"
        )
    return arr.astype(np.uint8)


def _as_labels(labels: Any, n: int, source: Path) -> np.ndarray:
    """Validate int-like labels of shape (N,) or (N, 1) in 0..9 and return int64 (N,)."""
    arr = np.asarray(labels)
    if arr.shape not in ((n,), (n, 1)):
        raise ValueError(f"{source}: labels must have shape ({n},) or ({n}, 1), got {arr.shape}")
    arr = arr.reshape(n)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{source}: labels must be whole numbers, got dtype {arr.dtype}")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{source}: labels must be integers, got dtype {arr.dtype}")
    out = arr.astype(np.int64)
    _check_label_range(out, source)
    return out


def _check_label_range(labels: np.ndarray, source: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        bad = np.unique(labels[(labels < 0) | (labels >= NUM_CLASSES)])
        raise ValueError(
            f"{source}: labels must lie in 0..{NUM_CLASSES - 1}, found {bad[:10].tolist()}"
        )


def _to_domain_images(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W[, C]) channels-last -> uint8 (N, 3, 28, 28).

    Resizing happens before the grey->RGB repeat so greyscale domains cost a third as much.
    """
    x = images if images.ndim == 4 else images[..., None]
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if tuple(x.shape[2:]) != _TARGET_HW:
        x = np.concatenate(
            [_resize_chunk(x[i : i + _RESIZE_CHUNK]) for i in range(0, len(x), _RESIZE_CHUNK)]
        )
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    return np.ascontiguousarray(x)


def _resize_chunk(chunk: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(chunk).to(torch.float32)
    # antialias=True matches PIL's bilinear resize, which FedBN's transforms.Resize used.
    t = F.interpolate(t, size=_TARGET_HW, mode="bilinear", align_corners=False, antialias=True)
    return t.round_().clamp_(0, 255).to(torch.uint8).numpy()


# --------------------------------------------------------------------------------------------
# Digit-Five (FedBN pickles)
# --------------------------------------------------------------------------------------------


def _read_digit_five_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    pair = _unpickle_pair(path)
    images = _as_uint8_images(pair[0], path)
    labels = _as_labels(pair[1], images.shape[0], path)
    return _to_domain_images(images), labels


def _unpickle_pair(path: Path) -> tuple[Any, Any]:
    """Read an ``(images, labels)`` pair written by ``pickle.dump`` or ``np.save``.

    Nothing in the file can run code: pickles go through :class:`ArrayUnpickler`, which
    rebuilds numpy arrays and refuses every other global.
    """
    with path.open("rb") as fh:
        head = fh.read(len(_NPY_MAGIC))
    if head.startswith(_ZIP_MAGIC):
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
        raise ValueError(
            f"{path}: is an .npz archive with keys {keys}, expected an (images, labels) pair"
        )
    try:
        obj: Any = _read_npy(path) if head == _NPY_MAGIC else _read_pickle(path)
    except UnsafePickleError:
        raise
    except Exception as error:
        raise ValueError(f"{path}: not a pickled (images, labels) pair ({error!r})") from error
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        # np.save wraps a pickled Python object in an object array.
        obj = obj.item() if obj.ndim == 0 else tuple(obj) if obj.shape == (2,) else obj
    if not isinstance(obj, tuple | list) or len(obj) != 2:
        desc = type(obj).__name__
        if isinstance(obj, tuple | list):
            desc += f" of length {len(obj)}"
        elif isinstance(obj, np.ndarray):
            desc += f" of shape {obj.shape}"
        raise ValueError(f"{path}: expected an (images, labels) pair, got {desc}")
    return obj[0], obj[1]


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def _read_pickle(path: Path) -> Any:
    with path.open("rb") as fh:
        return load_array_pickle(fh, path)


def _read_npy(path: Path) -> np.ndarray:
    """An ``.npy`` array; an object array's pickled payload goes through ArrayUnpickler."""
    with path.open("rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f".npy format version {version}, expected (1, 0) or (2, 0)")
        if not dtype.hasobject:
            return np.load(path, allow_pickle=False)
        array = load_array_pickle(fh, path)
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise ValueError(f"the pickled object array does not match its header shape {shape}")
    return array


# --------------------------------------------------------------------------------------------
# torchvision roots
# --------------------------------------------------------------------------------------------

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
            x = _as_uint8_images(ds.data.numpy(), path)
            splits += [_to_domain_images(x), _as_labels(ds.targets.numpy(), len(x), path)]
        return splits[0], splits[1], splits[2], splits[3]

    raw = root / "MNIST" / "raw"
    plain = {stem: raw / stem for stem in _MNIST_IDX}
    gz = {raw / stem: raw / f"{stem}.gz" for stem in _MNIST_IDX}
    _require_files(
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
            x = _as_uint8_images(ds.data.numpy(), img_src)
            y = ds.targets.numpy()
            if y.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{lbl_src}: holds {y.shape[0]} labels but {img_src} holds {x.shape[0]} images"
                )
            splits += [_to_domain_images(x), _as_labels(y, len(x), lbl_src)]
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
    _require_files(
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
        images = _as_uint8_images(x.transpose(3, 0, 1, 2), path, what="X")
        y = np.asarray(mat["y"])
        n = images.shape[0]
        if y.size != n or y.ndim > 2:
            raise ValueError(f"{path}: y must have shape ({n}, 1) to match X, got {y.shape}")
        y = y.reshape(n).astype(np.int64)
        y[y == 10] = 0
        splits += [_to_domain_images(images), _as_labels(y, n, path)]
    return splits[0], splits[1], splits[2], splits[3]


def _load_torchvision_usps(root: Path) -> _Splits:
    from torchvision.datasets import USPS

    paths = [root / "usps.bz2", root / "usps.t.bz2"]
    _require_files(
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
        images = _as_uint8_images(ds.data, path)
        # torchvision already shifted the 1..10 labels to 0..9.
        labels = _as_labels(np.asarray(ds.targets, dtype=np.int64), images.shape[0], path)
        splits += [_to_domain_images(images), labels]
    return splits[0], splits[1], splits[2], splits[3]
