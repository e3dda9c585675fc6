"""Which samples each client holds: a pure function of (seed, partitioning, num-partitions).

Three schemes, all stratified by class so that train and test splits of a
client follow the same label distribution:

- ``domain``: client ``k`` holds domain ``k mod D``; with more clients than
  domains a domain's data is split evenly (per class) among its clients.
- ``dirichlet``: clients are assigned to domains as in ``domain``; inside each
  domain, class ``c`` is split among that domain's clients in proportions drawn
  from ``Dir(alpha)`` (label skew within a domain, as in FedLGD's and many FL
  papers' protocols).  Smaller ``alpha`` means stronger skew.
- ``iid``: every domain is split evenly among all clients, so each client holds
  a uniform mix of all domains.

We draw the Dirichlet proportions ourselves instead of using flwr-datasets'
``DirichletPartitioner``: that one needs the Hugging Face ``datasets`` stack and
partitions one table, while we split train and test of several domains with the
same proportions; the draw itself is a few lines of numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedmatch.data.types import NUM_CLASSES

# A client with fewer training samples than this makes Dirichlet redraw, as
# flwr-datasets' DirichletPartitioner does with its min_partition_size.
MIN_TRAIN_SAMPLES = 10
_MAX_DRAWS = 100


@dataclass(frozen=True)
class Shard:
    """The indices a client holds in one domain's train and test splits."""

    domain: str
    train_idx: np.ndarray
    test_idx: np.ndarray


@dataclass(frozen=True)
class ClientPartition:
    """Everything one client holds: one shard per domain it has data from."""

    partition_id: int
    shards: tuple[Shard, ...]

    @property
    def domain(self) -> str:
        """The client's domain name, or ``"mixed"`` when it holds several."""
        names = {shard.domain for shard in self.shards if len(shard.train_idx)}
        return names.pop() if len(names) == 1 else "mixed"

    @property
    def num_train(self) -> int:
        return sum(len(shard.train_idx) for shard in self.shards)


def partition_domains(
    domain_names: Sequence[str],
    train_labels: Sequence[np.ndarray],
    test_labels: Sequence[np.ndarray],
    *,
    partitioning: str,
    num_partitions: int,
    seed: int,
    alpha: float = 0.5,
) -> list[ClientPartition]:
    """Split the domains among ``num_partitions`` clients; returns one entry per client."""
    num_domains = len(domain_names)
    if partitioning not in ("domain", "dirichlet", "iid"):
        raise ValueError(
            f"partitioning={partitioning!r} is not allowed: use 'domain', 'dirichlet' or 'iid'"
        )
    if num_partitions < 1:
        raise ValueError(f"num-partitions={num_partitions} must be >= 1")
    if partitioning in ("domain", "dirichlet") and num_partitions < num_domains:
        raise ValueError(
            f"partitioning={partitioning!r} needs at least one client per domain: "
            f"num-partitions={num_partitions} < {num_domains} domains "
            f"({', '.join(domain_names)}). Use more SuperNodes, fewer domains "
            "(run-config key 'domains') or partitioning='iid'"
        )

    shards: list[list[Shard]] = [[] for _ in range(num_partitions)]
    for d, name in enumerate(domain_names):
        rng = np.random.default_rng([seed, d])
        if partitioning == "iid":
            clients = list(range(num_partitions))
        else:
            clients = list(range(d, num_partitions, num_domains))
        if partitioning == "dirichlet":
            proportions = _dirichlet_proportions(train_labels[d], len(clients), alpha, rng, name)
        else:
            proportions = np.full((NUM_CLASSES, len(clients)), 1.0 / len(clients))
        train_split = _split_by_class(train_labels[d], proportions, rng)
        test_split = _split_by_class(test_labels[d], proportions, rng)
        for j, client in enumerate(clients):
            shards[client].append(Shard(name, train_split[j], test_split[j]))
    return [ClientPartition(k, tuple(s)) for k, s in enumerate(shards)]


def _dirichlet_proportions(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator, name: str
) -> np.ndarray:
    """Per-class client proportions ``p[c] ~ Dir(alpha)``, redrawn until no client is tiny."""
    if num_clients == 1:
        return np.ones((NUM_CLASSES, 1))
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    for _ in range(_MAX_DRAWS):
        proportions = rng.dirichlet(np.full(num_clients, alpha), size=NUM_CLASSES)
        sizes = _split_sizes(counts, proportions).sum(axis=0)
        if sizes.min() >= MIN_TRAIN_SAMPLES:
            return proportions
    raise ValueError(
        f"Dirichlet partitioning of domain {name!r} ({len(labels)} training samples) among "
        f"{num_clients} clients with alpha={alpha} left a client with fewer than "
        f"{MIN_TRAIN_SAMPLES} samples in {_MAX_DRAWS} draws: raise alpha or use fewer clients"
    )


def _split_sizes(counts: np.ndarray, proportions: np.ndarray) -> np.ndarray:
    """Integer sizes (class x client) whose rows sum to ``counts``, by cumulative rounding."""
    cumulative = np.round(np.cumsum(proportions, axis=1) * counts[:, None]).astype(np.int64)
    cumulative[:, -1] = counts
    return np.diff(cumulative, axis=1, prepend=0)


def _split_by_class(
    labels: np.ndarray, proportions: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    sizes = _split_sizes(counts, proportions)
    parts: list[list[np.ndarray]] = [[] for _ in range(proportions.shape[1])]
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(labels == c))
        bounds = np.cumsum(sizes[c])[:-1]
        for j, chunk in enumerate(np.split(idx, bounds)):
            parts[j].append(chunk)
    return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
