"""Class accuracy of samples: does a generated "3 of domain d" look like a 3 to domain d?

FID-digits (``fedmatch.diffusion.fid``) says how far the sample distribution is from the real
one, but not whether a sample drawn for class c *is* a c.  The measure here is the one of the
conditional-generation literature's "classification accuracy score" family (CAS, Ravuri &
Vinyals, NeurIPS 2019, train on real / test on generated, §3): one **independent** classifier
per domain, trained only on that domain's real training split, labels the samples generated
for (class c, domain d); the share labelled c is the *class accuracy of samples*

    acc_d = (1 / |S_d|) Σ_{(x, c) ∈ S_d} 1[argmax f_d(x) = c],

reported beside the same classifier's accuracy on the domain's real test images (its ceiling:
samples cannot be read better than real digits).  Uniform noise scores ≈ 1/10 (chance) and
real test digits score the real accuracy, which is what the unit tests check.

The classifier is fedmatch's ``ConvNet`` (the DC/DM ConvNet, instance norm) trained by the one
local training loop (``fedmatch.train.train_local``, SGD); it is cached on disk under a digest
of the training data, the architecture and the schedule, so a changed domain or schedule never
reuses a stale file, and loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmatch.data.loaders import make_loader
from fedmatch.data.types import NUM_CLASSES
from fedmatch.diffusion.unet import split_condition
from fedmatch.models.convnet import ConvNet
from fedmatch.train import evaluate, train_local

log = logging.getLogger("fedmatch.diffusion")

_VERSION = 1


@dataclass(frozen=True)
class ClassifierSchedule:
    """Architecture and training schedule of a per-domain classifier (all in the cache key).

    Width 32, not the DC default 128: 16× cheaper per step on a CPU; its real test accuracy
    is reported beside every sample accuracy, so a too-weak classifier shows.
    """

    width: int = 32
    depth: int = 3
    epochs: int = 4
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 64
    seed: int = 0


def build_classifier(schedule: ClassifierSchedule, in_channels: int = 3) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(schedule.seed)
        return ConvNet(
            in_channels=in_channels,
            num_classes=NUM_CLASSES,
            width=schedule.width,
            depth=schedule.depth,
        )


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, schedule: ClassifierSchedule
) -> nn.Module:
    """A classifier of one domain's real training split (images 28x28 in [-1, 1])."""
    net = build_classifier(schedule, images.shape[1])
    loader = make_loader(
        TensorDataset(images.float(), labels.long()),
        schedule.batch_size,
        shuffle=True,
        seed=schedule.seed,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(schedule.seed)
        result = train_local(
            net, loader, epochs=schedule.epochs, lr=schedule.lr, momentum=schedule.momentum
        )
    log.info("sample-accuracy classifier: %d steps, loss %.3f", result.steps, result.loss)
    return net.eval().requires_grad_(False)


def data_digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 of the exact training tensors (so a different split never hits the cache)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images.float().numpy()).tobytes())
    h.update(np.ascontiguousarray(labels.long().numpy()).tobytes())
    return h.hexdigest()


def classifier_key(name: str, digest: str, schedule: ClassifierSchedule) -> str:
    blob = json.dumps(
        {"domain": name, "data": digest, "schedule": asdict(schedule), "v": _VERSION},
        sort_keys=True,
    )
    return "sample-classifier-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_classifier(
    cache_dir: Path,
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    schedule: ClassifierSchedule,
) -> nn.Module:
    """Domain ``name``'s classifier, trained once and cached in ``cache_dir/diffusion``.

    A file lock makes concurrent callers train it once; the file is written atomically.
    """
    from fedmatch.atomic import atomic_torch_save

    key = classifier_key(name, data_digest(images, labels), schedule)
    path = Path(cache_dir) / "diffusion" / f"{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            net = build_classifier(schedule, images.shape[1])
            net.load_state_dict(torch.load(path, weights_only=True))
            return net.eval().requires_grad_(False)
        net = train_classifier(images, labels, schedule)
        atomic_torch_save(net.state_dict(), path)
        log.info("sample-accuracy classifier of %s cached at %s", name, path)
        return net


@dataclass(frozen=True)
class DomainAccuracy:
    """``samples``: class accuracy of generated images; ``real``: of real test images."""

    samples: float
    real: float


@torch.no_grad()
def class_accuracy(
    classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512
) -> float:
    """Share of ``images`` (28x28 in [-1, 1]) that ``classifier`` labels as ``labels``."""
    return evaluate(
        classifier, _loader(images, labels, batch_size), device=_device(classifier)
    ).accuracy


def _loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> DataLoader:
    return make_loader(
        TensorDataset(images.float().cpu(), labels.long().cpu()), batch_size, shuffle=False
    )


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


class SampleAccuracyScorer:
    """Per-domain class accuracy of samples next to the classifier's real test accuracy.

    ``classifiers``: one per domain (:func:`cached_classifier`); ``real_test``: each domain's
    real test (images, labels), scored once here.
    """

    def __init__(
        self,
        classifiers: Mapping[str, nn.Module],
        real_test: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        missing = set(classifiers) ^ set(real_test)
        if missing:
            raise ValueError(f"classifiers and real test sets differ in domains {sorted(missing)}")
        self.classifiers = dict(classifiers)
        self.real = {
            name: class_accuracy(self.classifiers[name], x, y) for name, (x, y) in real_test.items()
        }

    def score(
        self, samples: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, DomainAccuracy]:
        """``samples``: per domain, generated images and the class each was drawn for."""
        return {
            name: DomainAccuracy(class_accuracy(self.classifiers[name], x, y), self.real[name])
            for name, (x, y) in samples.items()
        }


def samples_by_domain(
    images: torch.Tensor,
    labels: torch.Tensor,
    scored: Sequence[str],
    conditioned: Sequence[str],
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Generated (images, classes) per scored domain.

    ``labels`` are the conditions the images were drawn for; ``conditioned`` names the
    domains of a domain-conditioned model's condition indices (``domain · 10 + class``), in
    order.  Without domain conditioning (``conditioned`` empty) a sample belongs to no domain,
    so every domain's classifier reads all of them (how well each domain's reader recognises
    the class of an unconditioned sample).
    """
    if not conditioned:
        return {name: (images, labels) for name in scored}
    classes, domains = split_condition(labels)
    out = {}
    for name in scored:
        if name in conditioned:
            keep = domains == conditioned.index(name)
            if bool(keep.any()):
                out[name] = (images[keep], classes[keep])
    return out
