"""The pre-partitioned Digit-Five pickles distributed with FedBN.

FedBN (Li et al., ICLR 2021, https://github.com/med-air/FedBN, ``utils/data_utils.py``
``DigitsDataset``) ships them, and FedLGD reuses them unchanged::

    <root>/<domain>/partitions/train_part{0..9}.pkl
    <root>/<domain>/test.pkl

each holding a pickled ``(images, labels)`` pair, written by ``pickle.dump`` or ``np.save``.
Nothing in a file can run code: pickles go through
:class:`fedmatch.data.safe_pickle.ArrayUnpickler`, which rebuilds numpy arrays and refuses
every other global.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from fedmatch.data.real_files import (
    as_labels,
    as_uint8_images,
    check_name,
    require_files,
    to_domain_images,
)
from fedmatch.data.safe_pickle import UnsafePickleError, load_array_pickle
from fedmatch.data.types import DomainArrays

__all__ = ["DIGIT_FIVE_DOMAINS", "DIGIT_FIVE_NUM_PARTS", "load_digit_five_domain"]

logger = logging.getLogger(__name__)

DIGIT_FIVE_DOMAINS: tuple[str, ...] = ("MNIST", "SVHN", "USPS", "SynthDigits", "MNIST_M")
DIGIT_FIVE_NUM_PARTS = 10

_DIGIT_FIVE_HELP = (
    "Get the Digit-Five partitions from the download link in the FedBN README "
    "(https://github.com/med-air/FedBN, section 'Dataset') - FedLGD uses the same files - and "
    "unzip them so that <data-root>/<domain>/partitions/train_part0.pkl and "
    "<data-root>/<domain>/test.pkl exist."
)
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def load_digit_five_domain(root: str | Path, name: str, train_percent: float = 1.0) -> DomainArrays:
    """Load one Digit-Five domain in the FedBN ``DigitsDataset`` layout.

    ``train_percent`` follows FedBN's ``percent`` argument exactly: for ``percent >= 0.1`` the
    first ``int(percent * 10)`` part files are concatenated (0.1 -> ``train_part0`` only,
    1.0 -> all ten); for ``percent < 0.1`` only the first ``int(len(part0) * percent * 10)``
    images of ``train_part0`` are used. The test split is always the whole ``test.pkl``.
    """
    check_name(name, DIGIT_FIVE_DOMAINS, "Digit-Five")
    if not isinstance(train_percent, int | float) or not 0.0 < train_percent <= 1.0:
        raise ValueError(f"train_percent must lie in (0, 1], got {train_percent!r}")
    root = Path(root).expanduser()
    domain_dir = root / name
    # The epsilon keeps 0.3 * 10 == 2.9999... style float noise from dropping a part.
    num_parts = max(1, math.floor(train_percent * DIGIT_FIVE_NUM_PARTS + 1e-9))
    train_paths = [domain_dir / "partitions" / f"train_part{i}.pkl" for i in range(num_parts)]
    test_path = domain_dir / "test.pkl"
    require_files(
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


def _read_digit_five_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    pair = _unpickle_pair(path)
    images = as_uint8_images(pair[0], path)
    labels = as_labels(pair[1], images.shape[0], path)
    return to_domain_images(images), labels


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
