"""SCAFFOLD, FedNova, FedDyn, MOON and VHL: their math against hand computations, and one round
through each strategy and the ClientApp's train route without the Flower engine."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmatch.baselines import feddyn, fednova, moon, scaffold, vhl
from fedmatch.baselines.common import weighted_mean
from fedmatch.config import ConfigError, RunConfig
from fedmatch.train import train_local
from tests.flower_harness import make_config, with_values


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> bool:
    return set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=atol) for k in a)


def linear(weight: list[list[float]], bias: list[float]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


def one_example_loader(x: list[float], label: int) -> DataLoader:
    return DataLoader(TensorDataset(torch.tensor([x]), torch.tensor([label])), batch_size=1)


# ----------------------------------------------------------------------------- SCAFFOLD


def test_scaffold_corrected_step_and_option_two_update_equal_the_hand_computation():
    # A 2->2 linear classifier at zero, one example x = (1, 2) of class 0: the logits are 0,
    # softmax (0.5, 0.5), so dCE/dW = (p − y)xᵀ = [[-0.5, -1], [0.5, 1]], dCE/db = (-0.5, 0.5).
    model = linear([[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0])
    c = {"weight": torch.tensor([[0.1, 0.0], [0.0, 0.0]]), "bias": t(0.0, 0.2)}
    c_i = {"weight": torch.zeros(2, 2), "bias": t(0.1, 0.0)}
    x = {n: p.detach().clone() for n, p in model.named_parameters()}
    lr = 0.1
    result = train_local(
        model,
        one_example_loader([1.0, 2.0], 0),
        epochs=1,
        lr=lr,
        grad_hook=scaffold.correction_hook(c, c_i),
    )
    # y = x − η(g − c_i + c): g − c_i + c = [[-0.4, -1], [0.5, 1]] and (-0.6, 0.7).
    y = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert close(y, {"weight": torch.tensor([[0.04, 0.1], [-0.05, -0.1]]), "bias": t(0.06, -0.07)})
    c_new, delta = scaffold.client_control_update(c_i, c, x, y, steps=result.steps, lr=lr)
    # With K = 1, option II gives back the gradient at x: c_i − c + (g − c_i + c) = g.
    g = {"weight": torch.tensor([[-0.5, -1.0], [0.5, 1.0]]), "bias": t(-0.5, 0.5)}
    assert close(c_new, g)
    assert close(delta, {k: g[k] - c_i[k] for k in g})


def test_scaffold_control_update_over_several_steps_is_the_mean_corrected_gradient():
    # K = 3 steps of plain SGD: (x − y)/(Kη) is the mean of the corrected gradients taken.
    torch.manual_seed(0)
    model = linear([[0.3, -0.2], [0.1, 0.4]], [0.0, 0.1])
    x = {n: p.detach().clone() for n, p in model.named_parameters()}
    c = {n: torch.full_like(p, 0.05) for n, p in x.items()}
    c_i = {n: torch.full_like(p, -0.02) for n, p in x.items()}
    grads: list[dict[str, torch.Tensor]] = []
    correct = scaffold.correction_hook(c, c_i)

    def record(m: nn.Module) -> None:
        correct(m)
        grads.append({n: p.grad.detach().clone() for n, p in m.named_parameters()})

    data = TensorDataset(torch.randn(3, 2), torch.tensor([0, 1, 0]))
    train_local(model, DataLoader(data, batch_size=1), epochs=1, lr=0.5, grad_hook=record)
    y = {n: p.detach().clone() for n, p in model.named_parameters()}
    c_new, _ = scaffold.client_control_update(c_i, c, x, y, steps=3, lr=0.5)
    mean_corrected = {n: sum(g[n] for g in grads) / 3 for n in x}
    assert close(c_new, {n: c_i[n] - c[n] + mean_corrected[n] for n in x}, atol=1e-5)


def test_scaffold_control_update_with_momentum_divides_by_the_effective_steps():
    # Constant gradient g and SGD with momentum 0.9: option II must still give back g; the
    # plain K·η divisor would over-estimate it by ‖a‖₁/K.
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    x = {"weight": model.weight.detach().clone()}
    g, c, c_i = (
        torch.full((1, 1), 0.5),
        {"weight": t(0.2).view(1, 1)},
        {"weight": t(-0.1).view(1, 1)},
    )
    hook = scaffold.correction_hook(c, c_i)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(5):
        model.weight.grad = g.clone()
        hook(model)
        optimizer.step()
    y = {"weight": model.weight.detach().clone()}
    c_new, _ = scaffold.client_control_update(c_i, c, x, y, steps=5, lr=0.1, momentum=0.9)
    assert close(c_new, {"weight": g}, atol=1e-5)
    plain, _ = scaffold.client_control_update(c_i, c, x, y, steps=5, lr=0.1)
    ratio = fednova.momentum_norm(5, 0.9) / 5
    assert close(plain, {"weight": c_i["weight"] - c["weight"] + ratio * (g + 0.3)}, atol=1e-5)


def test_scaffold_server_update_equals_the_hand_computation():
    x, c = {"w": t(1.0)}, {"w": t(0.5)}
    ys = [{"w": t(2.0)}, {"w": t(4.0)}]
    delta_cs = [{"w": t(1.0)}, {"w": t(3.0)}]
    # Δx = mean(1, 3) = 2, x = 1 + 0.5·2; Δc = 2, c = 0.5 + (2/4)·2.
    new_x, new_c = scaffold.server_update(x, ys, c, delta_cs, global_lr=0.5, num_clients=4)
    assert close(new_x, {"w": t(2.0)}) and close(new_c, {"w": t(1.5)})
    # η_g = 1 and full participation: the plain mean and the mean of the c_i.
    new_x, new_c = scaffold.server_update(x, ys, c, delta_cs, global_lr=1.0, num_clients=2)
    assert close(new_x, {"w": t(3.0)}) and close(new_c, {"w": t(2.5)})
    with pytest.raises(ValueError, match="num_clients"):
        scaffold.server_update(x, ys, c, delta_cs, global_lr=1.0, num_clients=1)


def test_scaffold_without_correction_trains_exactly_like_plain_sgd():
    torch.manual_seed(1)
    data = TensorDataset(torch.randn(8, 2), torch.randint(0, 2, (8,)))
    a, b = linear([[0.1, 0.2], [0.3, 0.4]], [0, 0]), linear([[0.1, 0.2], [0.3, 0.4]], [0, 0])
    same = {n: torch.full_like(p, 0.3) for n, p in a.named_parameters()}
    kwargs = {"epochs": 1, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}
    train_local(a, DataLoader(data, batch_size=4), **kwargs)
    train_local(
        b, DataLoader(data, batch_size=4), grad_hook=scaffold.correction_hook(same, same), **kwargs
    )
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


# ----------------------------------------------------------------------------- FedNova


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_fednova_momentum_norm_is_the_displacement_of_pytorch_sgd(steps: int, momentum: float):
    # With a constant gradient g, τ steps of SGD with momentum ρ move x by η·‖a‖₁·g.
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1, momentum=momentum)
    for _ in range(steps):
        param.grad = torch.ones(1)
        optimizer.step()
    assert -float(param.detach()) / 0.1 == pytest.approx(fednova.momentum_norm(steps, momentum))
    # The paper's closed form, written out once more.
    if momentum:
        rho = momentum
        expected = (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)
        assert fednova.momentum_norm(steps, momentum) == pytest.approx(expected)
    else:
        assert fednova.momentum_norm(steps, momentum) == steps


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fednova_equals_fedavg_when_every_client_takes_the_same_steps(momentum: float):
    torch.manual_seed(2)
    x = {"w": torch.randn(3, 2), "b": torch.randn(2)}
    ys = [{k: v + torch.randn_like(v) for k, v in x.items()} for _ in range(3)]
    weights = [10.0, 30.0, 60.0]
    new, tau_eff = fednova.aggregate(x, ys, [5, 5, 5], weights, momentum=momentum)
    assert close(new, weighted_mean(ys, weights), atol=1e-5)
    assert tau_eff == pytest.approx(fednova.momentum_norm(5, momentum))


def test_fednova_normalises_unequal_steps_as_computed_by_hand():
    # x = 0; client 1 took 1 step to −1, client 2 took 2 steps to −4; equal weights, ρ = 0:
    # d = (1/1, 4/2) = (1, 2), τ_eff = 1.5, x = 0 − 1.5·(0.5·1 + 0.5·2) = −2.25 (FedAvg: −2.5).
    new, tau_eff = fednova.aggregate(
        {"w": t(0.0)}, [{"w": t(-1.0)}, {"w": t(-4.0)}], [1, 2], [1.0, 1.0], momentum=0.0
    )
    assert tau_eff == pytest.approx(1.5)
    assert float(new["w"]) == pytest.approx(-2.25)
    with pytest.raises(ValueError, match="at least one step"):
        fednova.aggregate({"w": t(0.0)}, [{"w": t(1.0)}], [0], [1.0], momentum=0.0)


# ----------------------------------------------------------------------------- FedDyn


def test_feddyn_regulariser_value_and_gradient_equal_the_hand_computation():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(3.0)
    gradient_state, anchor, alpha = (
        {"weight": t(0.2).view(1, 1)},
        {"weight": t(1.0).view(1, 1)},
        0.5,
    )
    term = feddyn.dynamic_regulariser(gradient_state, anchor, alpha)(model)
    # −0.2·3 + 0.25·(3 − 1)² = 0.4; d/dθ = −0.2 + 0.5·2 = 0.8.
    assert float(term.detach()) == pytest.approx(0.4)
    term.backward()
    assert float(model.weight.grad) == pytest.approx(0.8)


def test_feddyn_gradient_state_is_the_local_gradient_at_the_exact_local_optimum():
    # L_k(θ) = ½‖θ − b‖²: the local problem's minimiser is θ_k = (b + g + αθ)/(1 + α), and the
    # state update must then equal ∇L_k(θ_k) = θ_k − b (the first-order condition of Alg. 1).
    b, g, theta, alpha = t(2.0, -1.0), t(0.3, 0.1), t(0.5, 0.5), 0.1
    theta_k = (b + g + alpha * theta) / (1 + alpha)
    new = feddyn.client_gradient_update({"w": g}, {"w": theta_k}, {"w": theta}, alpha)
    assert close(new, {"w": theta_k - b})
    assert close(new, {"w": g - alpha * (theta_k - theta)})


def test_feddyn_server_update_equals_the_hand_computation():
    # θ = 1, clients 2 and 4, m = 4, α = 0.5: h = 0 − 0.5·(1 + 3)/4 = −0.5, θ = 3 + 0.5/0.5 = 4.
    h, theta = feddyn.server_update(
        {"w": t(0.0)}, {"w": t(1.0)}, [{"w": t(2.0)}, {"w": t(4.0)}], alpha=0.5, num_clients=4
    )
    assert close(h, {"w": t(-0.5)}) and close(theta, {"w": t(4.0)})
    # Next round from θ = 4 with one client at 4: no drift, h stays, θ = 4 − (−0.5)/0.5 = 5.
    h, theta = feddyn.server_update(h, theta, [{"w": t(4.0)}], alpha=0.5, num_clients=4)
    assert close(h, {"w": t(-0.5)}) and close(theta, {"w": t(5.0)})


# ----------------------------------------------------------------------------- MOON


def test_moon_loss_equals_the_hand_computation():
    z, z_glob, z_prev = t(1.0, 0.0).view(1, 2), t(2.0, 0.0).view(1, 2), t(0.0, 3.0).view(1, 2)
    # cos(z, z_glob) = 1, cos(z, z_prev) = 0, τ = 0.5: −log(e²/(e² + e⁰)) = log(1 + e⁻²).
    loss = moon.model_contrastive_loss(z, z_glob, z_prev, temperature=0.5)
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-2)))
    # A batch averages the per-example losses; z = (1, 1): cos 1/√2 to both, so log 2.
    batch = moon.model_contrastive_loss(
        torch.cat([z, t(1.0, 1.0).view(1, 2)]),
        torch.cat([z_glob, t(1.0, 0.0).view(1, 2)]),
        torch.cat([z_prev, t(0.0, 1.0).view(1, 2)]),
        temperature=0.5,
    )
    assert float(batch) == pytest.approx((math.log(1 + math.exp(-2)) + math.log(2)) / 2)


def test_moon_loss_is_lower_when_the_local_representation_is_closer_to_the_global_one():
    torch.manual_seed(3)
    z_glob, z_prev = torch.randn(16, 8), torch.randn(16, 8)
    near_global = z_glob + 0.1 * torch.randn(16, 8)
    near_previous = z_prev + 0.1 * torch.randn(16, 8)
    loss = moon.model_contrastive_loss
    assert (
        loss(near_global, z_glob, z_prev, 0.5)
        < math.log(2)
        < loss(near_previous, z_glob, z_prev, 0.5)
    )
    # Global and previous models alike: log 2 whatever z is (so round 1 leaves it out).
    assert float(loss(torch.randn(16, 8), z_glob, z_glob, 0.5)) == pytest.approx(math.log(2))


def test_moon_hook_weights_by_mu_and_keeps_the_reference_models_frozen():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(4, 3))
    reference = nn.Sequential(nn.Linear(4, 3))
    previous = nn.Sequential(nn.Linear(4, 3))
    for m in (net, reference, previous):
        m.embed = m.forward  # the hook reads embed(), as fedmatch's models have it
    hook = moon.MoonLoss(reference, previous, mu=2.0, temperature=0.5)
    images = torch.randn(5, 4)
    value = hook(net, images, torch.zeros(5), torch.zeros(5, 3), net(images))
    expected = moon.model_contrastive_loss(net(images), reference(images), previous(images), 0.5)
    assert float(value.detach()) == pytest.approx(2.0 * float(expected.detach()))
    value.backward()
    assert all(p.grad is None for p in (*reference.parameters(), *previous.parameters()))
    assert all(p.grad is not None for p in net.parameters())
    assert hook.values == [pytest.approx(float(expected.detach()))]


# ----------------------------------------------------------------------------- VHL


def test_vhl_virtual_data_is_a_pure_function_of_the_seed_and_its_classes_are_separable():
    images, labels = vhl.virtual_dataset(20, 7)
    again, _ = vhl.virtual_dataset.__wrapped__(20, 7)  # not the cached copy
    other, _ = vhl.virtual_dataset.__wrapped__(20, 8)
    assert images.shape == (200, 3, 28, 28) and labels.tolist() == [
        c for c in range(10) for _ in range(20)
    ]
    assert torch.equal(images, again) and not torch.equal(images, other)
    assert images.min() >= -1 and images.max() <= 1
    # Separable from pure noise: the nearest class mean (half the images) labels the rest.
    flat, train, test = images.flatten(1), slice(0, None, 2), slice(1, None, 2)
    means = torch.stack([flat[train][labels[train] == c].mean(0) for c in range(10)])
    predicted = torch.cdist(flat[test], means).argmin(1)
    assert (predicted == labels[test]).float().mean() > 0.9


def test_supcon_equals_the_hand_computation():
    # a and b share a class, c does not; features already unit length; τ = τ_b = 1.
    a, b, c = t(1.0, 0.0), t(0.6, 0.8), t(0.0, 1.0)
    loss = vhl.supcon_loss(torch.stack([a, b, c]), torch.tensor([0, 0, 1]), 1.0, 1.0)
    ab, ac, bc = 0.6, 0.0, 0.8
    anchor_a = -math.log(math.exp(ab) / (math.exp(ab) + math.exp(ac)))
    anchor_b = -math.log(math.exp(ab) / (math.exp(ab) + math.exp(bc)))
    # c has no positive: it contributes 0, as in the reference code.
    assert float(loss) == pytest.approx((anchor_a + anchor_b + 0.0) / 3)
    # Features are normalised first: scaling one changes nothing.
    scaled = vhl.supcon_loss(torch.stack([3 * a, b, c]), torch.tensor([0, 0, 1]), 1.0, 1.0)
    assert float(scaled) == pytest.approx(float(loss))


def test_vhl_alignment_is_lower_when_natural_features_sit_by_their_virtual_class():
    torch.manual_seed(5)
    centres = 3 * torch.randn(10, 16)
    labels = torch.arange(10).repeat(4)
    virtual = centres[labels] + 0.1 * torch.randn(40, 16)
    aligned = centres[labels] + 0.1 * torch.randn(40, 16)
    shuffled = centres[(labels + 1) % 10] + 0.1 * torch.randn(40, 16)
    both = torch.cat([labels, labels])
    low = vhl.supcon_loss(torch.cat([aligned, virtual]), both)
    high = vhl.supcon_loss(torch.cat([shuffled, virtual]), both)
    assert low < high


def test_vhl_hook_adds_virtual_ce_and_alignment_and_detaches_the_virtual_side():
    from fedmatch.models.convnet import ConvNet

    torch.manual_seed(6)
    model = ConvNet(width=4, depth=2)
    v_images, v_labels = vhl.virtual_dataset(4, 1)
    images, labels = torch.randn(8, 3, 28, 28), torch.randint(0, 10, (8,))
    idx = torch.randperm(40, generator=torch.Generator().manual_seed(3))[:8]

    def gradients(loss: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    def replay(detach: bool) -> torch.Tensor:
        # The same draw by hand: CE on the virtual batch + 0.5·SupCon([natural; virtual]).
        features, v_features = model.embed(images), model.embed(v_images[idx])
        ce = torch.nn.functional.cross_entropy(model.classifier(v_features), v_labels[idx])
        other = v_features.detach() if detach else v_features
        align = vhl.supcon_loss(torch.cat([features, other]), torch.cat([labels, v_labels[idx]]))
        return ce + 0.5 * align

    hook = vhl.VHLLoss(v_images, v_labels, weight=0.5, seed=3)
    features = model.embed(images)
    value = hook(model, images, labels, model.classifier(features), features)
    expected = replay(detach=True)
    assert float(value.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert len(hook.virtual_ce) == len(hook.align) == 1
    by_hook, detached, attached = gradients(value), gradients(expected), gradients(replay(False))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(by_hook, detached, strict=True))
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(by_hook, attached, strict=True))


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"scaffold.server-lr": 0}, "'scaffold.server-lr'"),
        ({"feddyn.alpha": 0}, "'feddyn.alpha'"),
        ({"moon.mu": -1}, "'moon.mu'"),
        ({"moon.temperature": 0}, "'moon.temperature'"),
        ({"vhl.weight": -1}, "'vhl.weight'"),
        ({"vhl.virtual-per-class": 0}, "'vhl.virtual-per-class'"),
    ],
)
def test_baseline_keys_are_bounded(values: dict, key: str):
    with pytest.raises(ConfigError, match=key):
        RunConfig.from_flower(values)


# ------------------------------------------------------- both sides, in process


def _tiny_cfg(data_cache, strategy: str) -> RunConfig:
    return make_config(
        strategy=strategy,
        domains="mnist,optdigits",
        model_width=8,
        train_subset=64,
        batch_size=16,
        seed=3,
        cache_dir=str(data_cache),
    )


class _Federation:
    """A strategy and two clients (the ClientApp's train route), exchanging in process."""

    def __init__(self, cfg: RunConfig, run_dir, state: dict | None = None) -> None:
        from fedmatch.methods import get_method
        from strategies.base import NodeInfo

        nodes = [NodeInfo(100 + i, i, "?", 64, 64, "cpu") for i in range(2)]
        self.cfg = cfg
        self.strategy = get_method(cfg.strategy).strategy_class()(cfg, nodes)
        if state is not None:
            self.strategy.load_state_dict(state)
        self.strategy.run_dir = str(run_dir)
        self.contexts = {n.node_id: self._context(n.partition_id) for n in nodes}

    def _context(self, partition_id: int):
        from flwr.app import Context, RecordDict

        return Context(
            run_id=1,
            node_id=100 + partition_id,
            node_config={"partition-id": partition_id, "num-partitions": 2},
            state=RecordDict(),  # a fresh process: what it kept must come from disk
            run_config=self.cfg.to_flower(),
        )

    def round(self, server_round: int, arrays):
        from flwr.app import ConfigRecord

        from clients.client_app import train

        self.strategy.take_rows()
        messages = list(self.strategy.configure_train(server_round, arrays, ConfigRecord(), None))
        replies = [train(m, self.contexts[m.metadata.dst_node_id]) for m in messages]
        aggregated, _ = self.strategy.aggregate_train(server_round, replies)
        assert aggregated is not None
        return aggregated, self.strategy.take_rows(), messages, replies


def _rows(rows, metric: str) -> list[float]:
    return [r.value for r in rows if r.metric == metric]


@pytest.mark.parametrize("name", ["scaffold", "fednova", "feddyn", "moon", "vhl"])
def test_two_rounds_through_strategy_and_clients_and_an_exact_resume(
    data_cache, tmp_path, flower_task, name: str
):
    from fedmatch.factories.models import model_from_config
    from fedmatch.records import arrays_nbytes, arrays_to_state, state_to_arrays

    cfg = _tiny_cfg(data_cache, name)
    model = model_from_config(cfg, init_seed=0)
    start = state_to_arrays(model.state_dict())
    model_bytes = arrays_nbytes(start)

    # Uninterrupted: rounds 1 and 2 in one federation.
    run = _Federation(cfg, tmp_path / "a")
    after_1, rows_1, messages_1, replies_1 = run.round(1, start)
    after_2, _, _, replies_2 = run.round(2, after_1)

    # Killed after round 1: a new server from the checkpointed strategy state, new client
    # processes that find their state in the run directory only.
    first = _Federation(cfg, tmp_path / "b")
    resumed_1, _, _, _ = first.round(1, start)
    checkpoint = first.strategy.state_dict()
    second = _Federation(cfg, tmp_path / "b", state=checkpoint)
    resumed_2, _, _, _ = second.round(2, resumed_1)
    a, b = arrays_to_state(after_2), arrays_to_state(resumed_2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], arrays_to_state(after_1)[k]) for k in a)

    down, up = _rows(rows_1, "bytes-down"), _rows(rows_1, "bytes-up")
    if name == "scaffold":
        # The control variate goes down with the model, Δc_i up with it: with no buffers in
        # the model, c and Δc_i have its exact shapes, so twice FedAvg's bytes each way.
        assert down == [2 * model_bytes] * 2 and up == down
        assert all(scaffold.CONTROL_RECORD in m.content.array_records for m in messages_1)
        assert all(scaffold.DELTA_CONTROL_RECORD in r.content.array_records for r in replies_1)
        assert _rows(rows_1, "scaffold-control-norm")[0] > 0
        # c is the mean of the clients' c_i (full participation, both started at 0).
        c_is = [
            first.contexts[100 + i].state.array_records[
                f"local-arrays-{scaffold.CLIENT_STATE_SLOT}"
            ]
            for i in range(2)
        ]
        mean_c_i = weighted_mean([arrays_to_state(c) for c in c_is], [1.0, 1.0])
        assert close(first.strategy.control, mean_c_i, atol=1e-6)
    else:
        assert down == [model_bytes] * 2 and up == down
    if name == "fednova":
        # Both clients hold 64 examples and take 4 steps: FedNova is FedAvg.
        steps = [int(r.content["metrics"]["train-steps"]) for r in replies_1]
        assert steps == [4, 4]
        assert _rows(rows_1, "fednova-tau-eff")[0] == pytest.approx(
            fednova.momentum_norm(4, cfg.momentum)
        )
        fedavg = weighted_mean([arrays_to_state(r.content["arrays"]) for r in replies_1], [1, 1])
        assert close(arrays_to_state(after_1), fedavg, atol=1e-6)
    if name == "feddyn":
        assert _rows(rows_1, "feddyn-h-norm")[0] > 0
        # FedDyn's alpha reaches the clients through their run config only (one route).
        assert all("feddyn-alpha" not in m.content["config"] for m in messages_1)
    if name == "moon":
        # Round 1 has no previous local model; round 2 contrasts against it.
        assert all("moon-loss" not in r.content["metrics"] for r in replies_1)
        assert all(0 < r.content["metrics"]["moon-loss"] < 5 for r in replies_2)
    if name == "vhl":
        metrics = [r.content["metrics"] for r in replies_1]
        assert all(m["vhl-virtual-loss"] > 0 and m["vhl-align-loss"] > 0 for m in metrics)


def test_scaffold_and_feddyn_state_survives_a_checkpoint_file(tmp_path, data_cache):
    from fedmatch.atomic import atomic_torch_save
    from fedmatch.methods import get_method

    for name, attr in (("scaffold", "control"), ("feddyn", "h")):
        strategy = get_method(name).strategy_class()(_tiny_cfg(data_cache, name), [])
        setattr(
            strategy, attr, {k: torch.randn_like(v) for k, v in getattr(strategy, attr).items()}
        )
        atomic_torch_save({"strategy_state": strategy.state_dict()}, tmp_path / f"{name}.pt")
        loaded = torch.load(tmp_path / f"{name}.pt", weights_only=True)["strategy_state"]
        other = get_method(name).strategy_class()(_tiny_cfg(data_cache, name), [])
        other.load_state_dict(loaded)
        assert close(getattr(other, attr), getattr(strategy, attr), atol=0)


def test_the_baselines_suite_is_valid():
    from fedmatch.bench.suite import Suite
    from tests.flower_harness import REPO

    suite = Suite.load(REPO / "benchmarks" / "suites" / "baselines-dirichlet.toml")
    cells = suite.cells()
    assert {c.cfg.strategy for c in cells} == {
        "fedavg",
        "fedprox",
        "fedbn",
        "scaffold",
        "fednova",
        "feddyn",
        "moon",
        "vhl",
    }
    assert {c.cfg.seed for c in cells} == {0, 1, 2} and len(cells) == 24
    assert suite.federation.num_supernodes == 10
    assert all(
        (c.cfg.partitioning, c.cfg.alpha, c.cfg.domains, c.cfg.dataset)
        == ("dirichlet", 0.1, "all", "embedded")
        for c in cells
    )


@pytest.mark.parametrize("name", ["fedavg", "scaffold"])
def test_training_on_local_virtual_data_distils_once_and_reuses_the_set(
    data_cache, tmp_path, flower_task, monkeypatch, name: str
):
    """``train-data='distilled'`` (the FedLGD protocol): each client trains on its own DM set."""
    import clients.distiller as distiller
    from fedmatch.factories.models import model_from_config
    from fedmatch.records import state_to_arrays

    calls = []
    real_distill = distiller.distill_from_config

    def counting(*args, **kwargs):
        calls.append(1)
        return real_distill(*args, **kwargs)

    monkeypatch.setattr(distiller, "distill_from_config", counting)
    cfg = with_values(
        _tiny_cfg(data_cache, name),
        train_data="distilled",
        ipc=2,
        distill_steps=3,
        distill_batch_real=8,
        virtual_cache=False,  # count distillations, not cache hits (tests/test_fedlgd.py)
    )
    run = _Federation(cfg, tmp_path / "run")
    start = state_to_arrays(model_from_config(cfg, init_seed=0).state_dict())
    after_1, _, _, replies_1 = run.round(1, start)
    stored = {node: distiller.stored_synthetic(context) for node, context in run.contexts.items()}
    _, _, _, replies_2 = run.round(2, after_1)

    assert len(calls) == 2  # one distillation per client, in its first round only
    for reply in [*replies_1, *replies_2]:
        images, labels = stored[reply.metadata.src_node_id]
        # FedAvg weights by the virtual set's size: ipc images per class the client holds.
        assert reply.content["metrics"]["num-examples"] == len(labels) == 2 * len(labels.unique())
        assert images.shape[1:] == (3, 28, 28)
    for node, context in run.contexts.items():
        again = distiller.stored_synthetic(context)
        assert torch.equal(again[0], stored[node][0])  # round 2 reused round 1's set


def test_train_data_distilled_is_refused_where_it_cannot_apply():
    with pytest.raises(ConfigError, match="train-data='distilled' is not allowed"):
        RunConfig.from_flower({"strategy": "feddm", "train-data": "distilled"})
