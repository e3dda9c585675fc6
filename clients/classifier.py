"""The classifier workload: local supervised training and evaluation of the global model.

Every strategy of the foundation (FedAvg, FedProx, FedBN) runs through here;
they differ only in what the server sends (FedBN leaves normalisation layers
out, which this handler keeps locally) and in an extra loss term a method's own
workload plugs in (FedProx's proximal term, ``clients/fedprox.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from torch.utils.data import TensorDataset

from clients.distiller import local_virtual_set
from clients.local_state import load_local_state, save_local_state
from clients.node import node_partition
from fedmatch.config import RunConfig
from fedmatch.data.loaders import ClientData, load_client_data, make_loader
from fedmatch.factories.models import model_from_config
from fedmatch.records import arrays_to_state, state_to_arrays
from fedmatch.seeding import derive_seed
from fedmatch.train import (
    ExtraLoss,
    FeatureLoss,
    GradHook,
    TrainResult,
    evaluate,
    resolve_device,
    train_local,
)

log = logging.getLogger("fedmatch.client")

EVAL_BATCH_SIZE = 256


def _client_data(context: Context) -> tuple[RunConfig, ClientData, int]:
    cfg = RunConfig.from_flower(context.run_config)
    partition_id, num_partitions = node_partition(context)
    return cfg, load_client_data(cfg, partition_id, num_partitions), partition_id


def _model_with(
    cfg: RunConfig, msg: Message, context: Context, partition_id: int, state_round: int
):
    """The global model as received, with the arrays the server did not send kept local."""
    received = arrays_to_state(msg.content["arrays"])
    model = model_from_config(cfg)
    state = model.state_dict()
    missing = set(state) - set(received)
    if missing:
        local = load_local_state(
            context, str(msg.content["config"]["run-dir"]), partition_id, state_round
        )
        if local is None:
            # First round this client takes part in: its local layers start from the
            # model's deterministic initialisation, the same on every client.
            local = model_from_config(cfg, init_seed=derive_seed(cfg.seed, 0)).state_dict()
        state.update({k: local[k] for k in missing})
    state.update(received)
    model.load_state_dict(state)
    return model, sorted(received), sorted(missing)


def handle_describe(msg: Message, context: Context) -> Message:
    cfg, data, partition_id = _client_data(context)
    info = ConfigRecord(
        {
            "partition-id": partition_id,
            "domain": data.domain,
            "num-train": len(data.train),
            "num-test": len(data.test),
            "device": str(resolve_device(cfg.device)),
        }
    )
    return Message(RecordDict({"info": info}), reply_to=msg)


# (run config, model as received, device) -> an extra loss term of local training, or None.
MakeExtraLoss = Callable[[RunConfig, torch.nn.Module, torch.device], ExtraLoss | None]


def handle_train(
    msg: Message, context: Context, make_extra_loss: MakeExtraLoss | None = None
) -> Message:
    """Local training of the received model; ``make_extra_loss`` adds a method's term."""
    cfg, data, partition_id = _client_data(context)
    config = msg.content["config"]
    server_round = int(config["server-round"])
    device = resolve_device(cfg.device)
    model, sent_keys, local_keys = _model_with(cfg, msg, context, partition_id, server_round - 1)
    extra_loss = make_extra_loss(cfg, model, device) if make_extra_loss else None

    train_set = training_set(cfg, data, context, partition_id, device)
    result = local_training(
        cfg, train_set, model, server_round, partition_id, device, extra_loss=extra_loss
    )
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    if local_keys:
        save_local_state(
            context,
            str(config["run-dir"]),
            partition_id,
            server_round,
            {k: state[k] for k in local_keys},
        )
    metrics = MetricRecord(train_metrics(len(train_set), result, partition_id))
    content = RecordDict({"arrays": state_to_arrays(state, sent_keys), "metrics": metrics})
    return Message(content, reply_to=msg)


def training_set(
    cfg: RunConfig,
    data: ClientData,
    context: Context,
    partition_id: int,
    device: torch.device,
) -> TensorDataset:
    """What local training runs on: the real partition, or its local virtual data.

    ``train-data='distilled'`` is the FedLGD protocol for any classifier strategy: the
    client distils its partition once per run (``distill-method``, ``ipc`` images per
    class; ``clients.distiller.local_virtual_set``) and trains on that set every round.
    """
    if cfg.train_data == "real":
        return data.train
    return local_virtual_set(cfg, data, context, partition_id, device)


def local_training(
    cfg: RunConfig,
    train_set: TensorDataset,
    model: torch.nn.Module,
    server_round: int,
    partition_id: int,
    device: torch.device,
    *,
    extra_loss: ExtraLoss | None = None,
    feature_loss: FeatureLoss | None = None,
    grad_hook: GradHook | None = None,
) -> TrainResult:
    """The run's local SGD on ``train_set``, shuffled and seeded by (seed, round, client)."""
    seed = derive_seed(cfg.seed, server_round, partition_id)
    loader = make_loader(train_set, cfg.batch_size, shuffle=True, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return train_local(
            model,
            loader,
            epochs=cfg.local_epochs,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            device=device,
            max_steps=cfg.max_local_steps,
            extra_loss=extra_loss,
            feature_loss=feature_loss,
            grad_hook=grad_hook,
        )


def train_metrics(
    num_examples: int, result: TrainResult, partition_id: int
) -> dict[str, int | float]:
    """The metrics every training reply carries (``num-examples`` weights FedAvg)."""
    return {
        "num-examples": num_examples,
        "train-loss": result.loss,
        "train-steps": result.steps,
        "train-seconds": result.seconds,
        "partition-id": partition_id,
    }


def handle_evaluate(msg: Message, context: Context) -> Message:
    cfg, data, partition_id = _client_data(context)
    server_round = int(msg.content["config"]["server-round"])
    model, _, _ = _model_with(cfg, msg, context, partition_id, server_round)
    result = evaluate(
        model, make_loader(data.test, EVAL_BATCH_SIZE, shuffle=False), resolve_device(cfg.device)
    )
    metrics = MetricRecord(
        {
            "num-examples": result.examples,
            "test-loss": result.loss,
            "test-accuracy": result.accuracy,
            "partition-id": partition_id,
        }
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
