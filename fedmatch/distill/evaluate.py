"""The synthetic-set evaluation protocol: train a fresh network on a set, report test accuracy.

One protocol for every set that is compared (a distilled set, a random real subset of the same
size, the full data), taken from ``evaluate_synset`` of the DC/DSA/DM code
(https://github.com/VICO-UoE/DatasetCondensation ``utils.py``):

- a freshly initialised network (default: the DM ConvNet, width 128, depth 3, instance norm);
- SGD, lr 0.01, momentum 0.9, weight decay 5e-4, batch 256, cross-entropy;
- ``epochs`` epochs; the first half at lr, the second half at lr × 0.1 with a new optimiser
  (the reference code also re-creates its optimiser when it decays the learning rate);
- DSA augmentation (mode "S", one parameter per sample, no flip for digits) on every batch;
- the final model's test accuracy (no checkpoint selection on the test set); mean ± std
  (population std, as ``np.std``) over seeds, each seed giving a new initialisation, batch
  order and augmentation stream.

The reference code trains 1,000 epochs (300 without augmentation); the default here is 300 so
that a CPU run finishes in minutes.  Epochs is a parameter: report the value with the numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmatch.distill.common import DM_NET
from fedmatch.distill.dsa import DIGIT_STRATEGY, parse_strategy, sample_dsa
from fedmatch.models.registry import build_model
from fedmatch.seeding import derive_seed
from fedmatch.train import TrainResult, evaluate, train_local

__all__ = [
    "EvalProtocol",
    "SetScore",
    "convnet_factory",
    "evaluate_set",
    "measure_accuracy",
    "random_real_subset",
    "train_on_set",
]

log = logging.getLogger(__name__)

# A fresh model from an init seed.
ModelFactory = Callable[[int], nn.Module]


@dataclass(frozen=True)
class EvalProtocol:
    """How a set is scored; the defaults are the DC/DM ``evaluate_synset`` values."""

    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    dsa_strategy: str = DIGIT_STRATEGY

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                f"EvalProtocol needs epochs >= 1, batch_size >= 1 and lr > 0, got "
                f"epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr}"
            )
        parse_strategy(self.dsa_strategy)


@dataclass(frozen=True)
class SetScore:
    """Test accuracy of one set under the protocol, one value per seed."""

    accuracies: tuple[float, ...]
    num_images: int
    train_seconds: float

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracies))

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f}"


def convnet_factory(
    net: Mapping[str, Any] = DM_NET,
    *,
    in_channels: int = 3,
    num_classes: int = 10,
    image_size: int = 28,
) -> ModelFactory:
    """A factory of ConvNets whose initial weights depend only on the seed."""

    def make(seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(
                "convnet",
                in_channels=in_channels,
                num_classes=num_classes,
                image_size=image_size,
                **dict(net),
            )

    return make


def _dsa_collate(strategy: str, generator: torch.Generator, image_size: tuple[int, int]):
    def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]):
        images = torch.stack([item[0] for item in batch])
        labels = torch.stack([item[1] for item in batch])
        augment = sample_dsa(strategy, generator, batch_size=len(labels), image_size=image_size)
        return augment(images), labels

    return collate


def train_on_set(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    protocol: EvalProtocol,
    *,
    seed: int,
    device: torch.device | str = "cpu",
) -> list[TrainResult]:
    """Train ``model`` on the set with the protocol (both halves of the lr schedule).

    Batches are drawn and augmented in the loader (on the CPU, from generators seeded by
    ``seed``); the SGD loop is fedmatch's one local loop, ``train_local``.
    """
    if len(labels) == 0:
        raise ValueError("cannot train on an empty set")
    dataset = TensorDataset(images.detach().cpu().float(), labels.detach().cpu().long())
    shuffle = torch.Generator().manual_seed(derive_seed(seed, 1))
    augment = torch.Generator().manual_seed(derive_seed(seed, 2))
    loader = DataLoader(
        dataset,
        batch_size=protocol.batch_size,
        shuffle=True,
        generator=shuffle,
        collate_fn=_dsa_collate(protocol.dsa_strategy, augment, tuple(images.shape[2:])),
    )
    first = protocol.epochs // 2
    phases = [(first, protocol.lr), (protocol.epochs - first, protocol.lr * 0.1)]
    results = []
    for epochs, lr in phases:
        if epochs == 0:
            continue
        results.append(
            train_local(
                model,
                loader,
                epochs=epochs,
                lr=lr,
                momentum=protocol.momentum,
                weight_decay=protocol.weight_decay,
                device=device,
            )
        )
        # A 1,000-epoch evaluation of 500 images is ~40 min on a CPU core: say it is alive.
        log.info(
            "protocol on %d images: %d epochs at lr %g done in %.0f s, mean train loss %.4f",
            len(dataset),
            epochs,
            lr,
            results[-1].seconds,
            results[-1].loss,
        )
    return results


def measure_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device | str = "cpu",
    batch_size: int = 500,
) -> float:
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=False)
    return evaluate(model, loader, device).accuracy


def evaluate_set(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    protocol: EvalProtocol,
    seeds: Sequence[int],
    model_factory: ModelFactory | None = None,
    device: torch.device | str = "cpu",
) -> SetScore:
    """Train a fresh model per seed on ``(images, labels)``; test accuracy of each."""
    if not seeds:
        raise ValueError("evaluate_set needs at least one seed")
    factory = model_factory or convnet_factory(
        in_channels=images.shape[1], image_size=images.shape[2]
    )
    accuracies, seconds = [], 0.0
    for seed in seeds:
        model = factory(derive_seed(seed, 0))
        results = train_on_set(model, images, labels, protocol, seed=seed, device=device)
        seconds += sum(r.seconds for r in results)
        accuracies.append(measure_accuracy(model, test_images, test_labels, device))
    return SetScore(tuple(accuracies), len(labels), seconds)


def random_real_subset(
    images: torch.Tensor, labels: torch.Tensor, ipc: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` random real images of every class present (all of a class if it has fewer).

    The baseline a distilled set of the same size must beat; class-major like the distilled
    sets.
    """
    if ipc < 1:
        raise ValueError(f"ipc must be at least 1, got {ipc}")
    picks = []
    for c in sorted(int(c) for c in torch.unique(labels)):
        idx = torch.nonzero(labels == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=generator)[:ipc]])
    chosen = torch.cat(picks)
    return images[chosen], labels[chosen]
