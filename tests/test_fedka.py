"""FedKA's strategy and client workload without the Flower engine, and its config keys."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import clients.aligner as aligner
from fedmatch.config import ConfigError, RunConfig
from fedmatch.data.loaders import (
    available_domains,
    client_partitions,
    load_client_data,
    load_domains,
    load_target_domain,
)
from fedmatch.factories.models import model_from_config
from strategies.base import NodeInfo
from strategies.fedka import FedKAStrategy
from tests.flower_harness import make_config, with_values

TARGET = "optdigits"  # the smallest embedded domain keeps these tests quick


def tiny_cfg(data_cache, **overrides) -> RunConfig:
    values = {
        "strategy": "fedka",
        "domains": "mnist,optdigits,font-digits",
        "target_domain": TARGET,
        "model_width": 8,
        "batch_size": 16,
        "target_samples": 48,
        "target_batch_size": 16,
        "finetune_steps": 4,
        "num_server_rounds": 4,
        "train_subset": 64,
        "cache_dir": str(data_cache),
        "seed": 3,
    }
    values.update(overrides)
    return make_config(**values)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"strategy": "fedka"}, "needs target-domain"),
        ({"target-domain": "mnist", "domains": "optdigits,font-digits"}, "not among domains"),
        ({"target-domain": "mnist", "domains": "mnist"}, "no source domain"),
        (
            {"strategy": "fedka", "target-domain": "mnist", "fedka.domain-head": True},
            "model='fedka-cnn'",
        ),
        ({"fedka.target-samples": 8, "fedka.target-batch-size": 16}, "fedka.target-samples=8"),
        ({"fedka.mmd-bandwidth-multipliers": "1,zero"}, "'fedka.mmd-bandwidth-multipliers'"),
        ({"fedka.vote-threshold": 1.5}, "'fedka.vote-threshold'"),
        ({"fedka.target-access": "pixels"}, "'features'"),
    ],
)
def test_bad_fedka_config_is_refused_with_the_key(values, fragment):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flower(values)
    assert fragment in str(err.value)


def test_source_domains_leave_the_target_out():
    available = available_domains("embedded")
    cfg = RunConfig(target_domain="photo-mnist")
    assert cfg.source_domains(available) == tuple(d for d in available if d != "photo-mnist")
    assert RunConfig().source_domains(available) == available
    with pytest.raises(ConfigError, match="'target-domain' = 'usps'"):
        RunConfig(target_domain="usps").source_domains(available)


def test_clients_never_hold_the_target_domain(data_cache):
    cfg = RunConfig(target_domain="photo-mnist", cache_dir=str(data_cache))
    partitions = client_partitions(cfg, load_domains(cfg), 4)
    assert [p.domain for p in partitions] == ["mnist", "optdigits", "font-digits", "street-digits"]
    # Four source domains cannot serve three clients under 'domain' partitioning.
    with pytest.raises(ValueError, match="num-partitions=3 < 4 domains"):
        client_partitions(cfg, load_domains(cfg), 3)
    iid = with_values(cfg, partitioning="iid", train_subset=0)
    for pid in range(2):
        shards = load_client_data(iid, pid, 2).partition.shards
        assert {s.domain for s in shards} == {"mnist", "optdigits", "font-digits", "street-digits"}


# ----------------------------------------------------------------------------- server


def _client_states(cfg: RunConfig, count: int) -> list[dict[str, torch.Tensor]]:
    return [model_from_config(cfg, init_seed=100 + k).state_dict() for k in range(count)]


def _strategy(cfg: RunConfig) -> FedKAStrategy:
    nodes = [NodeInfo(10 + i, i, f"d{i}", 1, 1, "cpu") for i in range(2)]
    return FedKAStrategy(cfg, nodes)


def test_target_labels_never_reach_training(data_cache):
    """Poison every target label the server holds: what trains and what is sent is unchanged."""
    # Plurality voting: the untrained client models rarely agree, and fine-tuning must run.
    cfg = tiny_cfg(data_cache, vote_threshold=0.0)
    averaged = model_from_config(cfg, init_seed=1).state_dict()
    states = _client_states(cfg, 2)

    def run(poison: bool):
        strategy = _strategy(cfg)
        if poison:
            g = torch.Generator().manual_seed(99)
            strategy._eval_train_labels = torch.randint(
                0, 10, strategy._eval_train_labels.shape, generator=g
            )
            strategy._eval_test_labels = torch.randint(
                0, 10, strategy._eval_test_labels.shape, generator=g
            )
        rows = strategy.adapt(2, averaged, states, [0, 1])
        features = strategy.target_features(3, strategy.finetuned)
        return (
            strategy.finetuned,
            features,
            {r.metric: r.value for r in rows if r.client == "server"},
        )

    clean, clean_features, clean_rows = run(poison=False)
    poisoned, poisoned_features, poisoned_rows = run(poison=True)
    assert clean.keys() == poisoned.keys()
    assert all(torch.equal(clean[k], poisoned[k]) for k in clean)
    assert torch.equal(clean_features, poisoned_features)
    # Fine-tuning really ran, and the labels really feed the metrics (the test can fail).
    assert any(not torch.equal(clean[k], averaged[k]) for k in clean)
    assert clean_rows["finetune-steps"] == 4
    assert clean_rows["pseudo-label-accuracy"] != poisoned_rows["pseudo-label-accuracy"]


def test_adapt_records_the_target_metrics_and_keeps_both_weight_sets(data_cache):
    cfg = tiny_cfg(data_cache, vote_threshold=0.75)
    strategy = _strategy(cfg)
    averaged = model_from_config(cfg, init_seed=1).state_dict()
    rows = strategy.adapt(1, averaged, _client_states(cfg, 2), [0, 1])
    server = {r.metric: r.value for r in rows if r.client == "server"}
    assert {r.domain for r in rows} == {TARGET}
    for metric in (
        "target-accuracy-averaged",
        "target-accuracy-finetuned",
        "pseudo-label-coverage",
        "group-effect",
        "group-effect-finetuned",
        "finetune-weight",
    ):
        assert metric in server, metric
    clients = {r.client: r.value for r in rows if r.metric == "target-accuracy"}
    assert set(clients) == {0, 1}
    mean_client = (clients[0] + clients[1]) / 2
    assert server["group-effect"] == pytest.approx(server["target-accuracy-averaged"] - mean_client)
    # Two clients and threshold 0.75: only examples both agree on are kept.
    assert 0 <= server["pseudo-label-coverage"] < 1
    # The fine-tuned weights are kept apart from the averaged ones and survive a checkpoint.
    restored = _strategy(cfg)
    restored.load_state_dict(strategy.state_dict())
    assert all(torch.equal(restored.finetuned[k], v) for k, v in strategy.finetuned.items())
    # Without fine-tuning steps the fine-tuned model is the averaged one.
    plain = _strategy(tiny_cfg(data_cache, finetune_steps=0))
    rows = plain.adapt(1, averaged, _client_states(cfg, 2), [0, 1])
    server = {r.metric: r.value for r in rows if r.client == "server"}
    assert server["target-accuracy-finetuned"] == server["target-accuracy-averaged"]
    assert all(torch.equal(plain.finetuned[k], averaged[k]) for k in averaged)


def test_alignment_payload_is_skipped_without_alignment(data_cache):
    assert _strategy(tiny_cfg(data_cache)).sends_target()
    assert not _strategy(tiny_cfg(data_cache, mmd_weight=0.0)).sends_target()
    cfg = tiny_cfg(data_cache, mmd_weight=0.0, model="fedka-cnn", domain_head=True)
    assert _strategy(cfg).sends_target()


# ----------------------------------------------------------------------------- client


def _train(cfg: RunConfig, target, partition_id: int = 0):
    data = load_client_data(cfg, partition_id, 2)
    model = model_from_config(cfg, init_seed=5)
    result, hook = aligner.train_aligned(
        cfg,
        model,
        data.train,
        target,
        server_round=2,
        partition_id=partition_id,
        device=torch.device("cpu"),
    )
    return model.state_dict(), result, hook


def _raw_view(cfg: RunConfig) -> aligner.TargetView:
    reference = model_from_config(cfg, init_seed=7)
    images = aligner.raw_target_images(cfg, 2, 0)
    return aligner.TargetView(aligner.embed_images(reference, images), images)


@pytest.mark.parametrize("domain_head", [False, True])
def test_client_training_ignores_target_labels_in_raw_mode(data_cache, monkeypatch, domain_head):
    cfg = tiny_cfg(
        data_cache,
        target_access="raw",
        model="fedka-cnn",
        domain_head=domain_head,
        model_norm="batchnorm",
    )
    clean_state, result, hook = _train(cfg, _raw_view(cfg))
    assert result.steps == 4 and len(hook.mmd_values) == 4
    assert len(hook.domain_values) == (4 if domain_head else 0)

    real = load_target_domain(cfg)
    poisoned = dataclasses.replace(
        real, y_train=np.zeros_like(real.y_train), y_test=np.zeros_like(real.y_test)
    )
    monkeypatch.setattr(aligner, "load_target_domain", lambda _cfg: poisoned)
    poisoned_state, _, _ = _train(cfg, _raw_view(cfg))
    assert all(torch.equal(clean_state[k], poisoned_state[k]) for k in clean_state)


def test_mmd_term_changes_client_training_and_is_seeded(data_cache):
    cfg = tiny_cfg(data_cache)
    g = torch.Generator().manual_seed(0)
    target = aligner.TargetView(torch.randn(48, 8 * 3 * 3, generator=g))
    aligned, result, hook = _train(cfg, target)
    again, _, _ = _train(cfg, target)
    plain, plain_result, none = _train(cfg, None)
    assert none is None and result.steps == plain_result.steps == 4
    assert all(torch.equal(aligned[k], again[k]) for k in aligned)
    assert any(not torch.equal(aligned[k], plain[k]) for k in aligned)
    assert all(v > 0 for v in hook.mmd_values)
    # Progress runs over all rounds: round 2 of 4 starts at p = 0.25.
    assert hook.progress() == pytest.approx((1 + 4 / 4) / 4)
    zero = tiny_cfg(data_cache, mmd_weight=0.0)
    unweighted, _, zero_hook = _train(zero, target)
    assert zero_hook.mmd_values == []
    assert all(torch.equal(unweighted[k], plain[k]) for k in plain)


# ------------------------------------------------------- both sides, in process


@pytest.mark.parametrize(
    ("access", "broadcast"),
    [("features", "averaged"), ("raw", "averaged"), ("features", "finetuned")],
)
def test_one_round_through_the_strategy_and_client_app(
    data_cache, tmp_path, flower_task, access, broadcast
):
    """configure_train -> the ClientApp's train route -> aggregate_train, without the engine."""
    from flwr.app import ConfigRecord, Context, RecordDict

    from clients.client_app import train
    from fedmatch.records import arrays_nbytes, arrays_to_state, state_to_arrays

    extra = {"model": "fedka-cnn", "model_norm": "batchnorm", "domain_head": True}
    cfg = tiny_cfg(
        data_cache,
        target_access=access,
        fedka_broadcast=broadcast,
        **(extra if access == "raw" else {}),
    )
    strategy = _strategy(cfg)
    strategy.run_dir = str(tmp_path)
    strategy.take_rows()
    arrays = state_to_arrays(model_from_config(cfg, init_seed=0).state_dict())
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid=None))
    key = "target" if access == "features" else "reference"
    assert all(key in m.content.array_records for m in messages)
    down = [r.value for r in strategy.round_rows if r.metric == "bytes-down"]
    assert down == [arrays_nbytes(arrays) + arrays_nbytes(messages[0].content[key])] * 2
    if access == "features":
        assert messages[0].content["target"]["features"].shape == (48, 8 * 3 * 3)

    replies = []
    for partition_id, message in enumerate(messages):
        context = Context(
            run_id=1,
            node_id=message.metadata.dst_node_id,
            node_config={"partition-id": partition_id, "num-partitions": 2},
            state=RecordDict(),
            run_config=cfg.to_flower(),
        )
        replies.append(train(message, context))
    metrics = [r.content["metrics"] for r in replies]
    assert all(m["train-mmd"] > 0 for m in metrics)
    assert all(("train-domain-loss" in m) == (access == "raw") for m in metrics)

    broadcast_arrays, _ = strategy.aggregate_train(1, replies)
    assert broadcast_arrays is not None and strategy.finetuned is not None
    # What goes out next round: the FedAvg weights, or (fedka-broadcast) the fine-tuned ones.
    sent = arrays_to_state(broadcast_arrays)
    steps = [r.value for r in strategy.round_rows if r.metric == "finetune-steps"]
    assert steps == [4]
    is_finetuned = all(torch.equal(sent[k], strategy.finetuned[k]) for k in strategy.finetuned)
    assert is_finetuned == (broadcast == "finetuned")
    metric_names = {r.metric for r in strategy.round_rows if r.client == "server"}
    assert {"target-accuracy-averaged", "target-accuracy-finetuned", "group-effect"} <= metric_names


def test_show_summarises_the_final_target_metrics():
    from fedmatch.results import MetricRow
    from fedmatch.target_summary import target_summary

    rows = [
        MetricRow(r, "server", "mnist", metric, value)
        for r in (1, 2)
        for metric, value in (
            ("target-accuracy-finetuned", 0.5 + r / 10),
            ("target-accuracy-averaged", 0.4 + r / 10),
            ("pseudo-label-accuracy", 0.8),
            ("pseudo-label-coverage", 0.5),
            ("group-effect", -0.02),
        )
    ]
    line = target_summary(rows)
    assert line is not None and "target mnist (held out), round 2" in line
    assert "fine-tuned model 70.0%" in line and "averaged model 60.0%" in line
    assert "80.0% correct on 50.0%" in line and "-2.0 points" in line
    assert target_summary([MetricRow(1, "server", "mnist", "test-accuracy", 0.9)]) is None
