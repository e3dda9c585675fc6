"""FedLGD: pooled statistics, the regulariser, gradient matching, and the strategy's schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from fedmatch.config import ConfigError, RunConfig
from fedmatch.distill.dm import distill_dm
from fedmatch.distill.fedlgd import (
    VirtualRegulariser,
    class_gradients,
    match_global_virtual,
    pseudo_gradient,
    regulariser_value,
)
from fedmatch.distill.gradient_matching import gradient_distance, model_gradients
from fedmatch.distill.stats import class_channel_stats, pool_class_stats, sample_from_stats
from fedmatch.models.registry import build_model
from tests.flower_harness import make_config, with_values


def _convnet(seed: int = 0, width: int = 8):
    torch.manual_seed(seed)
    return build_model(
        "convnet", in_channels=3, num_classes=10, image_size=28, width=width, depth=2
    )


# ----------------------------------------------------------------------------- statistics


def test_class_statistics_are_per_class_and_channel_pixel_moments():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(12, 3, 4, 4, generator=g)
    labels = torch.tensor([0, 1, 2] * 4)
    stats = class_channel_stats(images, labels, num_classes=4)
    for c in range(3):
        pixels = images[labels == c].permute(1, 0, 2, 3).reshape(3, -1).double()
        assert torch.allclose(stats.mean[c], pixels.mean(1))
        assert torch.allclose(stats.var[c], pixels.var(1, unbiased=False))
    assert stats.counts.tolist() == [4, 4, 4, 0]
    assert torch.equal(stats.mean[3], torch.zeros(3, dtype=torch.float64))


def test_pooled_statistics_equal_those_of_the_union_not_the_average_of_stds():
    g = torch.Generator().manual_seed(1)
    # Two clients of very different sizes and means: averaging their stds would be wrong.
    a = torch.randn(30, 3, 5, 5, generator=g) * 0.5 + 1.0
    b = torch.randn(6, 3, 5, 5, generator=g) * 2.0 - 3.0
    ya = torch.randint(0, 3, (30,), generator=g)
    yb = torch.randint(0, 3, (6,), generator=g)
    pooled = pool_class_stats([class_channel_stats(a, ya, 3), class_channel_stats(b, yb, 3)])
    union = class_channel_stats(torch.cat([a, b]), torch.cat([ya, yb]), 3)
    assert torch.equal(pooled.counts, union.counts)
    assert torch.allclose(pooled.mean, union.mean)
    assert torch.allclose(pooled.var, union.var)
    naive_std = (class_channel_stats(a, ya, 3).std + class_channel_stats(b, yb, 3).std) / 2
    assert not torch.allclose(naive_std, union.std, atol=0.1)


def test_sampling_from_statistics_reproduces_them_and_refuses_absent_classes():
    images = torch.randn(400, 3, 8, 8) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    images += torch.tensor([0.0, 1.0, -1.0]).view(1, 3, 1, 1)
    labels = torch.zeros(400, dtype=torch.long)
    stats = class_channel_stats(images, labels, 2)
    sampled, y = sample_from_stats(stats, [0], 200, (8, 8), torch.Generator().manual_seed(0))
    assert sampled.shape == (200, 3, 8, 8) and torch.equal(y, torch.zeros(200, dtype=torch.long))
    again = class_channel_stats(sampled, y, 2)
    assert torch.allclose(again.mean[0], stats.mean[0], atol=0.05)
    assert torch.allclose(again.std[0], stats.std[0], rtol=0.05)
    with pytest.raises(ValueError, match=r"no statistics for class\(es\) \[1\]"):
        sample_from_stats(stats, [0, 1], 2, (8, 8), torch.Generator())


# ----------------------------------------------------------------------------- regulariser


def test_supcon_regulariser_equals_a_hand_computed_value():
    # Batch: two samples (classes 0, 1); global virtual: two images (classes 0, 1).
    # Features are unit vectors, so the cosines are read off directly.
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    y, yg = torch.tensor([0, 1]), torch.tensor([0, 1])
    tau = 0.5
    value = regulariser_value("supcon", f, y, g, yg, temperature=tau)
    # All four samples are anchors; anchor i's positive is the other sample of its class.
    feats = [f[0], f[1], g[0], g[1]]
    labels = [0, 1, 0, 1]
    terms = []
    for i in range(4):
        others = [j for j in range(4) if j != i]
        denominator = sum(math.exp(float(feats[i] @ feats[j]) / tau) for j in others)
        (p,) = [j for j in others if labels[j] == labels[i]]
        terms.append(-math.log(math.exp(float(feats[i] @ feats[p]) / tau) / denominator))
    assert float(value) == pytest.approx(sum(terms) / 4, rel=1e-6)


def test_regulariser_hook_adds_lambda_times_the_term():
    model = _convnet()
    images = torch.randn(6, 3, 28, 28)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    g_images = torch.randn(3, 3, 28, 28, requires_grad=False)
    g_labels = torch.tensor([0, 1, 2])
    hook = VirtualRegulariser(g_images, g_labels, kind="supcon", weight=10.0)
    features = model.embed(images)
    loss = hook(model, images, labels, model.classifier(features), features)
    expected = regulariser_value("supcon", features, labels, model.embed(g_images), g_labels)
    assert float(loss.detach()) == pytest.approx(10 * float(expected.detach()), rel=1e-5)
    assert hook.values == [pytest.approx(float(expected.detach()), rel=1e-5)]
    mmd_hook = VirtualRegulariser(g_images, g_labels, kind="mmd", weight=2.0)
    assert float(mmd_hook(model, images, labels, None, model.embed(images)).detach()) > 0


# ----------------------------------------------------------------------------- matching


def _trained_pair(lr: float = 0.05):
    model = _convnet(1)
    old = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(64, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    y = torch.arange(10).repeat(7)[:64]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(3):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    new = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(old)
    return model, old, new, x, y


def test_pseudo_gradient_of_one_sgd_step_is_the_gradient():
    model = _convnet(3)
    old = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 3, 28, 28), torch.randint(0, 10, (8,))
    grads = model_gradients(model, x, y)
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads, strict=True):
            p -= 0.1 * g
    new = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(old)
    target = pseudo_gradient(model, old, new, lr=0.1)
    for a, b in zip(target, grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_server_gradient_matching_lowers_the_distance_to_the_pseudo_gradient():
    model, old, new, _, _ = _trained_pair()
    target = pseudo_gradient(model, old, new, lr=0.05)
    syn = torch.randn(20, 3, 28, 28, generator=torch.Generator().manual_seed(4))
    syn_y = torch.arange(10).repeat_interleave(2)
    before = float(gradient_distance(model_gradients(model, syn, syn_y), target))
    updated, history = match_global_virtual(model, syn, syn_y, target, steps=30)
    after = float(gradient_distance(model_gradients(model, updated, syn_y), target))
    assert history.initial_loss == pytest.approx(before, rel=1e-4)
    assert history.final_loss == pytest.approx(after, rel=1e-4)
    assert after < 0.7 * before
    # The model is only read: θ_old is unchanged.
    assert all(torch.equal(v, old[k]) for k, v in model.state_dict().items())


def test_per_class_gradient_matching_lowers_the_summed_class_distance():
    model, _, _, x, y = _trained_pair()
    target = class_gradients(model, x, y)
    syn = torch.randn(20, 3, 28, 28, generator=torch.Generator().manual_seed(5))
    syn_y = torch.arange(10).repeat_interleave(2)
    updated, history = match_global_virtual(model, syn, syn_y, target, steps=20)
    assert history.final_loss < 0.8 * history.initial_loss
    assert updated.shape == syn.shape


def test_dm_refresh_in_a_fixed_feature_net_starts_from_the_given_set():
    images = torch.randn(40, 3, 28, 28, generator=torch.Generator().manual_seed(6))
    labels = torch.arange(4).repeat(10)
    start = (images[:8].clone() + 0.5, labels[:8].clone())
    model = _convnet(7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out, out_labels, history = distill_dm(
        images,
        labels,
        ipc=99,  # ignored: the set continues from `start`
        steps=15,
        generator=torch.Generator().manual_seed(0),
        start=start,
        feature_net=model,
        dsa_strategy="",
    )
    assert torch.equal(out_labels, start[1]) and out.shape == start[0].shape
    # One fixed network and no augmentation: the loss is deterministic and falls.
    assert history.losses[-1] < history.losses[0]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- config


def test_fedlgd_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"'fedlgd\.regulariser' = 'l2'"):
        RunConfig.from_flower({"strategy": "fedlgd", "fedlgd.regulariser": "l2"})
    with pytest.raises(ConfigError, match=r"'fedlgd\.refresh-every' = 0"):
        RunConfig.from_flower({"strategy": "fedlgd", "fedlgd.refresh-every": 0})
    # FedLGD always trains on virtual data, so a suite can set train-data for every cell.
    assert (
        RunConfig.from_flower({"strategy": "fedlgd", "train-data": "distilled"})
        .table("distill")
        .ipc
        == 10
    )


@pytest.mark.parametrize("name", ["fedlgd-cpu", "fedlgd-paper"])
def test_presets_are_valid_fedlgd_run_configs(name: str):
    import tomllib
    from pathlib import Path

    preset = Path(__file__).resolve().parents[1] / "presets" / f"{name}.toml"
    cfg = RunConfig.from_flower(tomllib.loads(preset.read_text()))
    assert cfg.strategy == "fedlgd" and cfg.table("distill").virtual_init == "stats"
    # The refresh horizon lies inside the run, so every refresh happens.
    assert cfg.table("fedlgd").refresh_until < cfg.num_server_rounds


def test_initial_local_virtual_data_is_cached_across_runs_that_share_its_keys(
    tmp_path, monkeypatch
):
    """FedLGD and its baselines (same data, distillation keys, seed) distil once per client."""
    from flwr.app import Context, RecordDict

    import clients.distiller as distiller
    from fedmatch.data.loaders import load_client_data

    calls = []
    real = distiller.distill_from_config

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(distiller, "distill_from_config", counting)

    def first_set(strategy: str, **update):
        cfg = make_config(
            strategy=strategy,
            domains="mnist,optdigits",
            train_subset=64,
            model_width=8,
            ipc=2,
            distill_steps=3,
            distill_batch_real=8,
            cache_dir=str(tmp_path / "cache"),
        )
        cfg = with_values(cfg, **update)
        context = Context(
            run_id=1,
            node_id=1,
            node_config={"partition-id": 1, "num-partitions": 2},
            state=RecordDict(),
            run_config=cfg.to_flower(),
        )
        data = load_client_data(cfg, 1, 2)
        return distiller.local_virtual_set(cfg, data, context, 1, torch.device("cpu")).tensors

    fedlgd_images, fedlgd_labels = first_set("fedlgd")
    fedavg_images, fedavg_labels = first_set("fedavg", lr=0.5, train_data="distilled")
    assert len(calls) == 1  # the second run read the first one's set
    assert torch.equal(fedlgd_images, fedavg_images) and torch.equal(fedlgd_labels, fedavg_labels)
    first_set("fedavg", seed=1)  # another seed: another set
    first_set("fedavg", virtual_cache=False)  # cache off: always distils
    assert len(calls) == 3


# ----------------------------------------------------------------------------- strategy


class _InProcess:
    """FedLGD's server and two ClientApp nodes exchanging in process (no Flower engine)."""

    def __init__(self, tmp_path, data_cache, **update) -> None:
        from flwr.app import Context, RecordDict

        from strategies.base import NodeInfo
        from strategies.fedlgd import FedLGDStrategy

        self.cfg = make_config(
            strategy="fedlgd",
            domains="mnist,optdigits",
            train_subset=60,
            model_width=8,
            model_depth=2,
            ipc=2,
            distill_steps=2,
            distill_batch_real=4,
            fedlgd_server_ipc=1,
            fedlgd_local_steps=2,
            fedlgd_server_steps=3,
            fedlgd_refresh_every=2,
            fedlgd_refresh_until=2,
            cache_dir=str(data_cache),
            virtual_cache=False,
            seed=4,
        )
        self.cfg = with_values(self.cfg, **update)
        nodes = [NodeInfo(10 + i, i, "?", 60, 60, "cpu") for i in range(2)]
        self.strategy = FedLGDStrategy(self.cfg, nodes)
        self.strategy.run_dir = str(tmp_path / "run")
        self.contexts = {
            10 + i: Context(
                run_id=1,
                node_id=10 + i,
                node_config={"partition-id": i, "num-partitions": 2},
                state=RecordDict(),
                run_config=self.cfg.to_flower(),
            )
            for i in range(2)
        }
        self.sent: list = []
        self.strategy.exchange = self._exchange

    def _exchange(self, grid, messages, server_round, timeout):
        from clients.client_app import class_stats, train

        replies = []
        for message in messages:
            self.sent.append(message)
            context = self.contexts[message.metadata.dst_node_id]
            handler = class_stats if message.metadata.message_type.startswith("query") else train
            replies.append(handler(message, context))
        self.uploaded = [sorted(r.content.array_records) for r in replies]
        return replies

    def round(self, server_round: int, arrays):
        from flwr.app import ConfigRecord

        self.strategy.take_rows()
        messages = list(self.strategy.configure_train(server_round, arrays, ConfigRecord(), None))
        replies = self._exchange(None, messages, server_round, 0)
        aggregated, _ = self.strategy.aggregate_train(server_round, replies)
        assert aggregated is not None
        return aggregated, messages, replies, self.strategy.take_rows()


def _initial_arrays(cfg):
    from fedmatch.factories.models import model_from_config
    from fedmatch.records import state_to_arrays

    return state_to_arrays(model_from_config(cfg, init_seed=0).state_dict())


@pytest.mark.parametrize("target", ["pseudo-gradient", "client-gradients"])
def test_strategy_follows_the_refresh_schedule_and_matches_in_refresh_rounds(
    tmp_path, data_cache, flower_task, target
):
    from fedmatch.distill.fedlgd_wire import CLASS_GRADS_KEY, REFRESH_FLAG, REGULARISE_FLAG

    fed = _InProcess(tmp_path, data_cache, fedlgd_gm_target=target)
    arrays = _initial_arrays(fed.cfg)
    flags, matched, uploads = {}, {}, {}
    for server_round in (1, 2, 3, 4):
        before = None if fed.strategy.global_images is None else fed.strategy.global_images.clone()
        arrays, messages, _, rows = fed.round(server_round, arrays)
        config = messages[0].content["config"]
        flags[server_round] = (bool(config[REFRESH_FLAG]), bool(config[REGULARISE_FLAG]))
        matched[server_round] = any(r.metric == "fedlgd-gm-final-distance" for r in rows)
        uploads[server_round] = all(CLASS_GRADS_KEY in names for names in fed.uploaded)
        if before is not None and not matched[server_round]:
            assert torch.equal(before, fed.strategy.global_images)  # untouched between refreshes
    # Refresh rounds (t % 2 == 0, t <= 2): rounds 1 and 3; round 1 follows the warm-up.
    assert flags == {1: (False, False), 2: (False, True), 3: (True, False), 4: (False, True)}
    assert matched == {1: True, 2: False, 3: True, 4: False}
    expected_uploads = target == "client-gradients"
    assert uploads == {1: expected_uploads, 2: False, 3: expected_uploads, 4: False}
    # The stats query went out once, before round 1, to both clients.
    assert sum(m.metadata.message_type == "query.class_stats" for m in fed.sent) == 2
    assert fed.strategy.global_labels.tolist() == list(range(10))


def test_strategy_state_restores_the_global_virtual_images_without_asking_again(
    tmp_path, data_cache, flower_task
):
    fed = _InProcess(tmp_path, data_cache)
    fed.round(1, _initial_arrays(fed.cfg))
    state = fed.strategy.state_dict()
    resumed = _InProcess(tmp_path, data_cache)
    resumed.strategy.load_state_dict(state)
    resumed.round(2, _initial_arrays(resumed.cfg))
    assert not any(m.metadata.message_type.startswith("query") for m in resumed.sent)
    assert torch.equal(resumed.strategy.global_images, state["global-images"])
