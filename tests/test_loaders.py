"""From a run config to client tensors, for embedded and real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmatch.config import ConfigError, RunConfig
from fedmatch.data.loaders import load_client_data, load_domains
from tests.test_real_data import _write_digit_five


def test_real_digit_five_files_reach_the_clients(tmp_path):
    for name in ("MNIST", "SVHN"):
        _write_digit_five(tmp_path, name)
    cfg = RunConfig(dataset="digit-five", data_root=str(tmp_path), domains="MNIST,SVHN")
    assert [d.name for d in load_domains(cfg)] == ["MNIST", "SVHN"]
    client = load_client_data(cfg, 1, 2)
    assert client.domain == "SVHN"
    images, labels = client.train.tensors
    assert images.shape[1:] == (3, 28, 28) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert labels.dtype == torch.int64


@pytest.mark.hostile("digit-five")
def test_missing_real_data_names_the_paths(tmp_path):
    cfg = RunConfig(dataset="digit-five", data_root=str(tmp_path / "nowhere"), domains="USPS")
    with pytest.raises(FileNotFoundError) as err:
        load_domains(cfg)
    assert "USPS/test.pkl" in str(err.value)


@pytest.mark.hostile("run-config")
def test_unknown_domain_for_the_dataset():
    with pytest.raises(ConfigError, match="'SVHN'"):
        load_domains(RunConfig(domains="mnist,SVHN"))


def test_train_subset_is_a_fixed_seeded_subset(data_cache):
    cfg = RunConfig(domains="optdigits", train_subset=50, cache_dir=str(data_cache), seed=1)
    a = load_client_data(cfg, 0, 1).train.tensors[1]
    # Bypass the per-process cache: a fresh computation must give the same subset.
    b = load_client_data.__wrapped__(cfg, 0, 1).train.tensors[1]
    c = load_client_data(cfg.model_copy(update={"seed": 2}), 0, 1).train.tensors[1]
    assert len(a) == 50 and torch.equal(a, b) and not torch.equal(a, c)
    assert len(np.unique(a.numpy())) > 5  # stratification is not required, but not one class


def test_partition_id_out_of_range(data_cache):
    with pytest.raises(ValueError, match=r"partition-id=3 is outside 0\.\.2"):
        load_client_data(RunConfig(cache_dir=str(data_cache)), 3, 3)
