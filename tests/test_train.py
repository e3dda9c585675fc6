from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedmatch.data.loaders import make_loader
from fedmatch.train import evaluate, proximal_loss, train_local


def test_proximal_term_matches_hand_computation():
    model = nn.Linear(2, 1, bias=True)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.copy_(torch.tensor([0.5]))
    anchor = {"weight": torch.tensor([[0.0, 0.0]]), "bias": torch.tensor([1.5])}
    # (mu/2) * (1^2 + 2^2 + (0.5-1.5)^2) = 0.05 * 6 = 0.3
    value = proximal_loss(anchor, mu=0.1)(model)
    assert torch.isclose(value, torch.tensor(0.3))


def _blobs(seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (240,), generator=g)
    x = torch.randn(240, 4, generator=g) * 0.5 + nn.functional.one_hot(y, 4).float() * 2
    return TensorDataset(x, y)


def test_training_lowers_loss_and_is_deterministic():
    data = _blobs(0)

    def run() -> tuple[float, float, torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        before = evaluate(model, make_loader(data, 64, shuffle=False))
        result = train_local(
            model, make_loader(data, 16, shuffle=True, seed=1), epochs=3, lr=0.1, momentum=0.9
        )
        after = evaluate(model, make_loader(data, 64, shuffle=False))
        assert result.steps == 45 and result.examples == 720
        return before.loss, after.loss, model[0].weight.detach().clone()

    loss_before, loss_after, weights = run()
    assert loss_after < 0.5 * loss_before
    _, _, weights_again = run()
    assert torch.equal(weights, weights_again)


def test_max_steps_caps_training():
    model = nn.Linear(4, 3)
    result = train_local(
        model, make_loader(_blobs(1), 8, shuffle=False), epochs=5, lr=0.1, max_steps=7
    )
    assert result.steps == 7
