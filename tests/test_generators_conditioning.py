"""Domain conditioning of the diffusion UNets: condition index, spec key, client labels."""

from __future__ import annotations

import pytest
import torch

from fedmatch.config import RunConfig
from fedmatch.diffusion.sample_accuracy import samples_by_domain
from fedmatch.diffusion.teacher import ddim_sample, train_denoiser
from fedmatch.diffusion.unet import UNetSpec, build_unet, condition_labels, split_condition
from fedmatch.factories.diffusion import (
    client_condition_labels,
    conditioned_domains,
    sampling_labels,
    teacher_key,
    unet_spec,
)
from fedmatch.factories.diffusion_eval import balanced_labels


def test_condition_index_round_trips_and_one_domain_is_the_class():
    classes = torch.arange(10).repeat(3)
    domains = torch.arange(3).repeat_interleave(10)
    cond = condition_labels(classes, domains, 3)
    assert cond.tolist() == list(range(30))
    back_classes, back_domains = split_condition(cond)
    assert torch.equal(back_classes, classes) and torch.equal(back_domains, domains)
    assert torch.equal(condition_labels(classes, 2, 1), classes)


def test_domain_conditioned_unet_has_a_row_per_class_and_domain_and_a_new_key():
    plain, conditioned = UNetSpec(channels=(8, 16)), UNetSpec(channels=(8, 16), domains=5)
    assert "domains" not in plain.to_dict()  # teachers cached before the key keep their key
    assert conditioned.to_dict()["domains"] == 5
    unet = build_unet(conditioned, 0)
    assert unet.class_embedding.num_embeddings == 50
    # Samples for (class 3, domain 4) come from row 43: sampling works on the whole index.
    out = ddim_sample(unet, torch.tensor([43, 3]), steps=2, generator=torch.Generator())
    assert out.shape == (2, 3, 28, 28)


def test_run_config_conditioning_changes_the_teacher_key_and_client_labels():
    base = {"domains": "mnist,optdigits", "diffusion.unet-channels": "8,16"}
    plain = RunConfig.from_flower(base)
    cond = RunConfig.from_flower({**base, "diffusion.domain-conditioning": True})
    assert conditioned_domains(plain) == () and unet_spec(plain).domains == 1
    assert conditioned_domains(cond) == ("mnist", "optdigits")
    assert unet_spec(cond).domains == 2
    assert teacher_key(plain, 2, 2) != teacher_key(cond, 2, 2)
    labels = torch.tensor([0, 9])
    assert client_condition_labels(plain, "optdigits", labels).tolist() == [0, 9]
    assert client_condition_labels(cond, "optdigits", labels).tolist() == [10, 19]
    assert client_condition_labels(cond, "mnist", labels).tolist() == [0, 9]
    with pytest.raises(ValueError, match=r"one domain per client.*'mixed'"):
        client_condition_labels(cond, "mixed", labels)


def test_evaluation_labels_balance_classes_and_domains_and_split_back():
    cond = sampling_labels(balanced_labels(60), 3)
    classes, domains = split_condition(cond)
    assert torch.bincount(domains).tolist() == [20, 20, 20]
    assert torch.bincount(classes).tolist() == [6] * 10
    assert torch.equal(sampling_labels(balanced_labels(20), 1), balanced_labels(20))
    images = torch.arange(60).float().view(60, 1, 1, 1)
    split = samples_by_domain(images, cond, ["a", "c", "x"], ["a", "b", "c"])
    assert set(split) == {"a", "c"}  # "x" has no condition rows: nothing drawn for it
    x, y = split["c"]
    assert len(y) == 20 and bool((y < 10).all()) and bool((x.flatten() % 30 >= 20).all())
    # Unconditioned: every domain's reader sees every sample, with its class label.
    plain = samples_by_domain(images, balanced_labels(60), ["a", "b"], [])
    assert all(len(y) == 60 for _, y in plain.values())


def test_teacher_optimizer_state_carries_over_rounds():
    from tests.test_generators import toy_digits

    x, y = toy_digits(32, seed=0)
    unet = build_unet(UNetSpec(channels=(8, 16)), 0)
    kw = {"steps": 2, "batch_size": 4, "device": torch.device("cpu")}
    first = train_denoiser(unet, x, y, lr=1e-3, seed=0, **kw)
    second = train_denoiser(
        unet, x, y, lr=5e-4, seed=1, optimizer_state=first.optimizer_state, **kw
    )
    assert second.optimizer_state is not None
    steps = {float(s["step"]) for s in second.optimizer_state["state"].values()}
    assert steps == {4.0}  # Adam's step count (bias correction) continued from round 1
    assert second.optimizer_state["param_groups"][0]["lr"] == 5e-4


def test_added_domain_embedding_is_class_row_plus_domain_row_and_keyed():
    spec = UNetSpec(channels=(8, 16), domains=3, domain_embedding="added")
    assert spec.to_dict()["domain_embedding"] == "added"
    assert "domain_embedding" not in UNetSpec(channels=(8, 16), domains=3).to_dict()
    emb = build_unet(spec, 0).class_embedding
    labels = condition_labels(torch.tensor([4, 4, 7]), torch.tensor([0, 2, 2]), 3)
    out = emb(labels)
    assert torch.allclose(out[0], emb.classes.weight[4] + emb.domains.weight[0])
    # Same class, other domain: differs by the domain rows only.
    assert torch.allclose(out[1] - out[0], emb.domains.weight[2] - emb.domains.weight[0])
    with pytest.raises(ValueError, match="'joint' or 'added'"):
        UNetSpec(domains=2, domain_embedding="sum").validate()
