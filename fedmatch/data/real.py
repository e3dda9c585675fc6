"""Loaders that turn digit data already on disk into :class:`DomainArrays`.

Two on-disk layouts are understood, each in its own module with its file checks:

* ``"digit-five"`` (:mod:`fedmatch.data.digit_five`) - the pre-partitioned Digit-Five
  pickles distributed with FedBN and reused by FedLGD, read without running any code;
* ``"torchvision"`` (:mod:`fedmatch.data.torchvision_roots`) - the raw files that
  ``torchvision.datasets.MNIST`` / ``SVHN`` / ``USPS`` read from their ``root`` argument.

Every image is resized to 28x28, greyscale is repeated into three channels and pixels stay
uint8 (:mod:`fedmatch.data.real_files`).  Nothing is ever downloaded: missing data raises
:class:`FileNotFoundError` listing every missing path and where the files can be obtained.
"""

from __future__ import annotations

from pathlib import Path

from fedmatch.data.digit_five import DIGIT_FIVE_DOMAINS, load_digit_five_domain
from fedmatch.data.torchvision_roots import TORCHVISION_DOMAINS, load_torchvision_domain
from fedmatch.data.types import DomainArrays

__all__ = [
    "DIGIT_FIVE_DOMAINS",
    "REAL_DATA_KINDS",
    "TORCHVISION_DOMAINS",
    "load_digit_five_domain",
    "load_real_domain",
    "load_torchvision_domain",
]

REAL_DATA_KINDS: tuple[str, ...] = ("digit-five", "torchvision")


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
