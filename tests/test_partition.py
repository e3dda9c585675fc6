from __future__ import annotations

import numpy as np
import pytest

from fedmatch.data.partition import partition_domains


def labels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 10, size=n).astype(np.int64)


NAMES = ["a", "b", "c"]
TRAIN = [labels(600, 1), labels(500, 2), labels(400, 3)]
TEST = [labels(200, 4), labels(150, 5), labels(100, 6)]


def split(**kwargs):
    return partition_domains(NAMES, TRAIN, TEST, **kwargs)


def assert_exact_cover(parts, partitioning):
    """Every sample of every domain is held by exactly one client."""
    for d, name in enumerate(NAMES):
        for split_name, y in (("train", TRAIN[d]), ("test", TEST[d])):
            held = np.concatenate(
                [
                    getattr(s, f"{split_name}_idx")
                    for p in parts
                    for s in p.shards
                    if s.domain == name
                ]
            )
            assert np.array_equal(np.sort(held), np.arange(len(y))), (
                partitioning,
                name,
                split_name,
            )


@pytest.mark.parametrize("partitioning", ["domain", "dirichlet", "iid"])
def test_pure_function_and_exact_cover(partitioning):
    a = split(partitioning=partitioning, num_partitions=6, seed=3, alpha=0.3)
    b = split(partitioning=partitioning, num_partitions=6, seed=3, alpha=0.3)
    assert len(a) == 6
    for pa, pb in zip(a, b, strict=True):
        for sa, sb in zip(pa.shards, pb.shards, strict=True):
            assert np.array_equal(sa.train_idx, sb.train_idx)
            assert np.array_equal(sa.test_idx, sb.test_idx)
    assert_exact_cover(a, partitioning)


def test_domain_gives_each_client_one_domain_and_splits_further_evenly():
    parts = split(partitioning="domain", num_partitions=6, seed=0)
    assert [p.domain for p in parts] == ["a", "b", "c", "a", "b", "c"]
    assert abs(parts[0].num_train - parts[3].num_train) <= 10  # per-class rounding only
    assert parts[0].num_train + parts[3].num_train == 600


def test_iid_mixes_every_domain_into_every_client():
    parts = split(partitioning="iid", num_partitions=4, seed=0)
    assert all(p.domain == "mixed" for p in parts)
    assert all({s.domain for s in p.shards} == set(NAMES) for p in parts)


def test_smaller_alpha_gives_stronger_label_skew():
    def skew(alpha: float) -> float:
        parts = split(partitioning="dirichlet", num_partitions=9, seed=0, alpha=alpha)
        # Mean total-variation distance between a client's label histogram and uniform.
        distances = []
        for p in parts:
            hist = np.bincount(TRAIN[NAMES.index(p.domain)][p.shards[0].train_idx], minlength=10)
            distances.append(0.5 * np.abs(hist / hist.sum() - 0.1).sum())
        return float(np.mean(distances))

    assert skew(0.1) > skew(100.0) + 0.2


def test_seed_changes_the_split():
    a = split(partitioning="dirichlet", num_partitions=6, seed=0, alpha=0.5)
    b = split(partitioning="dirichlet", num_partitions=6, seed=1, alpha=0.5)
    assert not np.array_equal(a[0].shards[0].train_idx, b[0].shards[0].train_idx)


def test_train_and_test_follow_the_same_label_proportions():
    parts = split(partitioning="dirichlet", num_partitions=6, seed=0, alpha=0.2)
    p = parts[0]
    # The share of each class a client holds is the same in train and test (up to rounding).
    train_share = np.bincount(TRAIN[0][p.shards[0].train_idx], minlength=10) / np.bincount(
        TRAIN[0], minlength=10
    )
    test_share = np.bincount(TEST[0][p.shards[0].test_idx], minlength=10) / np.bincount(
        TEST[0], minlength=10
    )
    assert np.abs(train_share - test_share).max() < 0.06
    assert train_share.max() - train_share.min() > 0.3  # and it is skewed


def test_too_few_clients_for_the_domains_is_a_clear_error():
    with pytest.raises(ValueError, match=r"num-partitions=2 < 3 domains \(a, b, c\)"):
        split(partitioning="domain", num_partitions=2, seed=0)


def test_impossible_dirichlet_split_says_what_to_change():
    with pytest.raises(ValueError, match="raise alpha or use fewer clients"):
        partition_domains(
            ["a"],
            [labels(60, 0)],
            [labels(10, 1)],
            partitioning="dirichlet",
            num_partitions=6,
            seed=0,
            alpha=0.01,
        )


def test_unknown_partitioning():
    with pytest.raises(ValueError, match="'shards'"):
        split(partitioning="shards", num_partitions=3, seed=0)
