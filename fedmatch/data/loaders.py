"""From a run config to tensors: which domains, which client holds what, and data loaders."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedmatch.config import RunConfig
from fedmatch.data.partition import ClientPartition, partition_domains
from fedmatch.data.types import DomainArrays

TORCHVISION_DOMAINS = ("MNIST", "SVHN", "USPS")


def available_domains(dataset: str) -> tuple[str, ...]:
    """The domain names a ``dataset`` value offers."""
    if dataset == "embedded":
        from fedmatch.data.embedded import EMBEDDED_DOMAINS

        return EMBEDDED_DOMAINS
    if dataset == "digit-five":
        from fedmatch.data.real import DIGIT_FIVE_DOMAINS

        return DIGIT_FIVE_DOMAINS
    if dataset == "torchvision":
        return TORCHVISION_DOMAINS
    raise ValueError(f"dataset={dataset!r}: use 'embedded', 'digit-five' or 'torchvision'")


def load_domains(cfg: RunConfig) -> list[DomainArrays]:
    """The domains selected by ``dataset``, ``data-root`` and ``domains``, in that order."""
    names = cfg.domain_names(available_domains(cfg.dataset))
    return [_load_domain(cfg.dataset, cfg.data_root, cfg.cache_dir, name) for name in names]


# Ray reuses actors across virtual clients, so a per-process cache means each
# actor reads or builds a domain once per run instead of once per round.
@functools.lru_cache(maxsize=16)
def _load_domain(dataset: str, data_root: str, cache_dir: str, name: str) -> DomainArrays:
    if dataset == "embedded":
        from fedmatch.data.embedded import load_embedded_domain

        return load_embedded_domain(name, cache_dir)
    from fedmatch.data.real import load_real_domain

    return load_real_domain(dataset, data_root, name)


def load_target_domain(cfg: RunConfig) -> DomainArrays:
    """The held-out ``target-domain`` (leave-one-domain-out).

    The server keeps it; no client trains on it.  Its labels serve evaluation only (with
    ``target-access='raw'`` FedKA clients read its images, never its labels).
    """
    if not cfg.target_domain:
        raise ValueError("run-config key 'target-domain' is empty: no domain is held out")
    cfg.source_domains(available_domains(cfg.dataset))  # validates the name
    return _load_domain(cfg.dataset, cfg.data_root, cfg.cache_dir, cfg.target_domain)


def client_partitions(cfg: RunConfig, domains: list[DomainArrays], num_partitions: int):
    """Every client's partition; the same (config, num_partitions) always gives the same split.

    The ``target-domain`` (if set) is left out: clients hold the source domains only.
    """
    sources = [d for d in domains if d.name != cfg.target_domain]
    return partition_domains(
        [d.name for d in sources],
        [d.y_train for d in sources],
        [d.y_test for d in sources],
        partitioning=cfg.partitioning,
        num_partitions=num_partitions,
        seed=cfg.seed,
        alpha=cfg.alpha,
    )


@dataclass(frozen=True)
class ClientData:
    """A client's training and test tensors (images normalised to [-1, 1])."""

    partition: ClientPartition
    train: TensorDataset
    test: TensorDataset

    @property
    def domain(self) -> str:
        return self.partition.domain


def to_images(x: np.ndarray) -> torch.Tensor:
    """uint8 images to float in [-1, 1], the (0.5, 0.5) normalisation of FedBN/FedLGD/DM."""
    return torch.from_numpy(x).float().div_(127.5).sub_(1.0)


def to_tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    """Images as in ``to_images`` with their int64 labels."""
    return TensorDataset(to_images(x), torch.from_numpy(y))


# Cached per process: Ray actors serve several rounds (and virtual clients), and
# the tensors of a partition never change during a run.
@functools.lru_cache(maxsize=4)
def load_client_data(cfg: RunConfig, partition_id: int, num_partitions: int) -> ClientData:
    """The data of client ``partition_id`` out of ``num_partitions``."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition-id={partition_id} is outside 0..{num_partitions - 1} "
            f"(num-partitions={num_partitions})"
        )
    domains = {d.name: d for d in load_domains(cfg)}
    partition = client_partitions(cfg, list(domains.values()), num_partitions)[partition_id]
    xs_train, ys_train, xs_test, ys_test = [], [], [], []
    for shard in partition.shards:
        d = domains[shard.domain]
        xs_train.append(d.x_train[shard.train_idx])
        ys_train.append(d.y_train[shard.train_idx])
        xs_test.append(d.x_test[shard.test_idx])
        ys_test.append(d.y_test[shard.test_idx])
    x_train, y_train = np.concatenate(xs_train), np.concatenate(ys_train)
    if cfg.train_subset and cfg.train_subset < len(y_train):
        # A fixed, seed-dependent subset: quick runs stay comparable across strategies.
        keep = np.sort(
            np.random.default_rng([cfg.seed, partition_id, 1]).permutation(len(y_train))[
                : cfg.train_subset
            ]
        )
        x_train, y_train = x_train[keep], y_train[keep]
    return ClientData(
        partition=partition,
        train=to_tensors(x_train, y_train),
        test=to_tensors(np.concatenate(xs_test), np.concatenate(ys_test)),
    )


def make_loader(
    dataset: TensorDataset, batch_size: int, *, shuffle: bool, seed: int = 0
) -> DataLoader:
    """A single-process loader; shuffling uses its own generator, never global RNG state."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
