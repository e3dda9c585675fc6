"""FedKA's math without Flower: MK-MMD, federated voting, gradient reversal, schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedmatch.align.dann import grad_reverse
from fedmatch.align.fedka import finetune_on_pseudo_labels, group_effect, ramp, schedule_weight
from fedmatch.align.mmd import mk_mmd, parse_multipliers
from fedmatch.align.voting import federated_vote
from fedmatch.models.fedka_cnn import FedKACNN
from fedmatch.models.registry import build_model
from fedmatch.train import train_local

# ----------------------------------------------------------------------------- MK-MMD


def test_mk_mmd_is_zero_for_identical_samples():
    x = torch.randn(16, 7, generator=torch.Generator().manual_seed(0))
    assert mk_mmd(x, x.clone()).item() == 0.0
    assert mk_mmd(x, x, bandwidth_base="median").item() == 0.0
    # Same points in another order: the same empirical distribution.
    assert abs(mk_mmd(x, x.flip(0)).item()) < 1e-6


def test_mk_mmd_is_positive_and_differentiable_for_different_samples():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 5, generator=g).requires_grad_()
    y = (torch.randn(16, 5, generator=g) + 1.5).requires_grad_()
    value = mk_mmd(x, y)
    assert value.item() > 0.1
    value.backward()
    for grad in (x.grad, y.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # The gradient is a descent direction: a small step along it lowers the discrepancy.
    with torch.no_grad():
        lower = mk_mmd(x - 0.05 * x.grad, y - 0.05 * y.grad)
    assert lower < value.detach()


def _hand_mmd(xs, ys, gammas, unbiased):
    def k(a, b):
        return sum(math.exp(-((a - b) ** 2) / g) for g in gammas)

    m, n = len(xs), len(ys)
    if unbiased:
        xx = sum(k(xs[i], xs[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        yy = sum(k(ys[i], ys[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    else:
        xx = sum(k(a, b) for a in xs for b in xs) / m**2
        yy = sum(k(a, b) for a in ys for b in ys) / n**2
    xy = sum(k(a, b) for a in xs for b in ys) / (m * n)
    return xx + yy - 2 * xy


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("base", ["mean", "median"])
def test_mk_mmd_matches_a_hand_computed_tiny_case(estimator, base):
    xs, ys = [0.0, 1.0], [2.0, 4.0]
    pooled = xs + ys
    off_diagonal = sorted(
        (a - b) ** 2 for i, a in enumerate(pooled) for j, b in enumerate(pooled) if i != j
    )
    # Pairs: (0,1)=1 (0,2)=4 (0,4)=16 (1,2)=1 (1,4)=9 (2,4)=4, each twice: mean 35/6,
    # lower median of the 12 values 4.
    h = sum(off_diagonal) / len(off_diagonal) if base == "mean" else off_diagonal[5]
    assert h == (35 / 6 if base == "mean" else 4.0)
    multipliers = (0.5, 1.0, 2.0)
    expected = _hand_mmd(xs, ys, [c * h for c in multipliers], estimator == "unbiased")
    got = mk_mmd(
        torch.tensor(xs, dtype=torch.float64).view(-1, 1),
        torch.tensor(ys, dtype=torch.float64).view(-1, 1),
        multipliers=multipliers,
        bandwidth_base=base,
        estimator=estimator,
    )
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_multi_kernel_mmd_is_the_sum_of_its_kernels():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 3, generator=g), torch.randn(6, 3, generator=g) * 2
    parts = sum(mk_mmd(x, y, multipliers=(c,)) for c in (0.25, 1.0, 4.0))
    assert torch.isclose(mk_mmd(x, y, multipliers=(0.25, 1.0, 4.0)), parts)


def test_mk_mmd_rejects_bad_input():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="same feature size"):
        mk_mmd(x, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="at least one kernel"):
        mk_mmd(x, x, multipliers=())
    with pytest.raises(ValueError, match="at least 2"):
        mk_mmd(x, torch.zeros(1, 3), estimator="unbiased")
    assert parse_multipliers("0.25, 1,4") == (0.25, 1.0, 4.0)
    with pytest.raises(ValueError, match="'x'"):
        parse_multipliers("1,x")
    with pytest.raises(ValueError, match="'-1'"):
        parse_multipliers("1,-1")


# ----------------------------------------------------------------------------- voting


def _logits(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_vote_takes_the_plurality():
    a = _logits([0, 0, 5, 0], [9, 0, 0, 0])
    b = _logits([0, 0, 5, 0], [0, 1, 0, 0])
    c = _logits([0, 0, 0, 5], [0, 2, 0, 0])
    labels, mask = federated_vote([a, b, c])
    assert labels.tolist() == [2, 1] and mask.tolist() == [True, True]


def test_vote_ties_go_to_the_summed_softmax_then_to_the_lowest_class():
    confident = _logits([0, 6, 0, 0])  # votes 1, very sure
    unsure = _logits([0, 0, 0, 0.5])  # votes 3, barely
    for order in ([confident, unsure], [unsure, confident]):
        labels, _ = federated_vote(order)
        assert labels.tolist() == [1]
    # A perfect tie: equal votes and equal summed softmax (saturated: exactly 1 and 0).
    a, b = _logits([0, 200, 0, 0]), _logits([0, 0, 0, 200])
    assert federated_vote([a, b])[0].tolist() == [1]
    assert federated_vote([b, a])[0].tolist() == [1]


def test_vote_is_deterministic_and_order_invariant_on_random_ties():
    g = torch.Generator().manual_seed(3)
    # Few classes, many examples and an even number of clients: plenty of vote ties.
    logits = [torch.randn(500, 3, generator=g) for _ in range(4)]
    first, _ = federated_vote(logits)
    again, _ = federated_vote([t.clone() for t in logits])
    reversed_order, _ = federated_vote(logits[::-1])
    assert torch.equal(first, again) and torch.equal(first, reversed_order)


def test_vote_threshold_masks_low_agreement():
    votes = [
        _logits([0, 5, 0, 0]),
        _logits([0, 5, 0, 0]),
        _logits([0, 0, 5, 0]),
        _logits([5, 0, 0, 0]),
    ]
    assert federated_vote(votes, 0.5)[1].tolist() == [True]  # 2 of 4 agree
    assert federated_vote(votes, 0.6)[1].tolist() == [False]
    assert federated_vote(votes, 0.0)[0].tolist() == [1]


def test_vote_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one client"):
        federated_vote([])
    with pytest.raises(ValueError, match="same shape"):
        federated_vote([torch.zeros(3, 4), torch.zeros(2, 4)])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        federated_vote([torch.zeros(3, 4)], threshold=1.5)


# ------------------------------------------------------------ schedules, GRL, Group Effect


def test_dann_ramp_and_schedules():
    assert ramp(0.0) == 0.0
    assert ramp(1.0, 10.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert ramp(0.5, 5.0) == pytest.approx(2 / (1 + math.exp(-2.5)) - 1)
    values = [ramp(p / 10) for p in range(11)]
    assert values == sorted(values) and ramp(2.0) == ramp(1.0)
    assert schedule_weight("constant", 0.3, 0.0, 10.0) == 0.3
    assert schedule_weight("dann", 2.0, 1.0, 10.0) == pytest.approx(2 * ramp(1.0))
    with pytest.raises(ValueError, match="'linear'"):
        schedule_weight("linear", 1.0, 0.5, 10.0)  # type: ignore[arg-type]


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    y = grad_reverse(x, 0.7)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -0.7))


def test_group_effect_is_global_minus_mean_client_accuracy():
    assert group_effect(0.5, [0.4, 0.2]) == pytest.approx(0.2)
    assert group_effect(0.1, [0.4, 0.2]) == pytest.approx(-0.2)
    with pytest.raises(ValueError):
        group_effect(0.5, [])


def test_finetune_on_pseudo_labels_is_seeded_and_label_driven():
    g = torch.Generator().manual_seed(4)
    images = torch.randn(40, 6, generator=g)
    labels = (images[:, 0] > 0).long()

    def run(pseudo, seed=0, steps=20, weight=1.0):
        torch.manual_seed(0)
        model = nn.Linear(6, 2)
        result = finetune_on_pseudo_labels(
            model,
            images,
            pseudo,
            steps=steps,
            batch_size=8,
            lr=0.5,
            momentum=0.0,
            weight_decay=0.0,
            weight=weight,
            seed=seed,
        )
        return model.weight.detach().clone(), result

    w1, r1 = run(labels)
    w2, _ = run(labels)
    assert torch.equal(w1, w2) and r1.steps == 20 and r1.examples == 160
    assert not torch.equal(w1, run(1 - labels)[0])
    w0, r0 = run(labels, weight=0.0)
    torch.manual_seed(0)
    assert torch.equal(w0, nn.Linear(6, 2).weight) and r0.steps == 0


def test_class_balanced_finetuning_draws_every_pseudo_class_equally():
    # 90 examples of pseudo-class 0, 10 of class 1; each image carries its pseudo-label in
    # feature 0, and the model records what it is fed.
    pseudo = torch.cat([torch.zeros(90), torch.ones(10)]).long()
    images = torch.stack([pseudo.float(), torch.zeros(100)], dim=1)

    class Recorder(nn.Linear):
        def __init__(self) -> None:
            super().__init__(2, 2)
            self.seen: list[torch.Tensor] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen.append(x[:, 0].clone())
            return super().forward(x)

    def share_of_class_one(balanced: bool) -> float:
        model = Recorder()
        finetune_on_pseudo_labels(
            model,
            images,
            pseudo,
            steps=50,
            batch_size=20,
            lr=0.1,
            momentum=0.0,
            weight_decay=0.0,
            weight=1.0,
            seed=3,
            class_balanced=balanced,
        )
        return float(torch.cat(model.seen).mean())

    assert share_of_class_one(False) == pytest.approx(0.1)  # plain passes over the data
    assert share_of_class_one(True) == pytest.approx(0.5, abs=0.05)  # 1,000 draws


# ----------------------------------------------------------------------------- model


def test_fedka_cnn_shapes_and_domain_head():
    model = build_model("fedka-cnn", norm="batchnorm", domain_head=True).eval()
    x = torch.randn(5, 3, 28, 28)
    features = model.embed(x)
    assert features.shape == (5, 800) and model.feature_dim == 800
    assert torch.equal(model(x), model.classifier(features))
    assert model.domain_logits(features, 1.0).shape == (5, 2)
    plain = FedKACNN(norm="instancenorm")
    assert plain.domain_classifier is None
    assert not any(k.startswith("domain_classifier") for k in plain.state_dict())
    with pytest.raises(ValueError, match="without a domain head"):
        plain.domain_logits(features, 1.0)


# ----------------------------------------------------------------------------- train_local


def test_feature_loss_sees_the_embedding_and_changes_training():
    g = torch.Generator().manual_seed(5)
    data = torch.utils.data.TensorDataset(
        torch.randn(32, 3, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)
    )
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    seen = []

    def hook(model, images, labels, logits, features):
        assert torch.allclose(features, model.embed(images))
        assert torch.allclose(logits, model.classifier(features))
        seen.append(features.shape)
        return features.pow(2).mean()

    def run(feature_loss):
        torch.manual_seed(0)
        model = build_model("convnet", width=8)
        train_local(model, loader, epochs=1, lr=0.1, feature_loss=feature_loss)
        return model.classifier.weight.detach().clone()

    assert not torch.equal(run(hook), run(None))
    assert seen == [(8, 8 * 3 * 3)] * 4
    with pytest.raises(ValueError, match="embed"):
        train_local(nn.Linear(3, 2), loader, epochs=1, lr=0.1, feature_loss=hook)
