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
from flwr.app import ConfigRecord, Context, Message, MetricRecord
from torch.utils.data import TensorDataset

from clients.distiller import local_virtual_set
from clients.job import ClientJob
from clients.local_state import load_local_state, save_local_state
from fedmatch.config import RunConfig
from fedmatch.data.loaders import ClientData, make_loader
from fedmatch.factories.models import model_from_config
from fedmatch.records import arrays_to_state, state_to_arrays
from fedmatch.seeding import derive_seed
from fedmatch.train import (
    ExtraLoss,
    FeatureLoss,
    GradHook,
    TrainResult,
    evaluate,
    train_local,
)

log = logging.getLogger("fedmatch.client")

EVAL_BATCH_SIZE = 256


def received_model(job: ClientJob, state_round: int):
    """The global model as received, with the arrays the server did not send kept local.

    Returns the model, the names it received and the names it keeps locally (FedBN's norm
    layers), restored from the client's local state of ``state_round``.
    """
    cfg = job.cfg
    received = arrays_to_state(job.msg.content["arrays"])
    model = model_from_config(cfg)
    state = model.state_dict()
    missing = set(state) - set(received)
    if missing:
        local = load_local_state(job.context, job.run_dir, job.partition_id, state_round)
        if local is None:
            # First round this client takes part in: its local layers start from the
            # model's deterministic initialisation, the same on every client.
            local = model_from_config(cfg, init_seed=derive_seed(cfg.seed, 0)).state_dict()
        state.update({k: local[k] for k in missing})
    state.update(received)
    model.load_state_dict(state)
    return model, sorted(received), sorted(missing)


def handle_describe(msg: Message, context: Context) -> Message:
    job = ClientJob.receive(msg, context)
    info = ConfigRecord(
        {
            "partition-id": job.partition_id,
            "domain": job.data.domain,
            "num-train": len(job.data.train),
            "num-test": len(job.data.test),
            "device": str(job.device),
        }
    )
    return job.reply({"info": info})


# (run config, model as received, device) -> an extra loss term of local training, or None.
MakeExtraLoss = Callable[[RunConfig, torch.nn.Module, torch.device], ExtraLoss | None]


def handle_train(
    msg: Message, context: Context, make_extra_loss: MakeExtraLoss | None = None
) -> Message:
    """Local training of the received model; ``make_extra_loss`` adds a method's term."""
    job = ClientJob.receive(msg, context)
    cfg, device, server_round = job.cfg, job.device, job.server_round
    model, sent_keys, local_keys = received_model(job, server_round - 1)
    extra_loss = make_extra_loss(cfg, model, device) if make_extra_loss else None

    train_set = training_set(cfg, job.data, context, job.partition_id, device)
    result = local_training(
        cfg, train_set, model, server_round, job.partition_id, device, extra_loss=extra_loss
    )
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    if local_keys:
        save_local_state(
            context, job.run_dir, job.partition_id, server_round, {k: state[k] for k in local_keys}
        )
    metrics = MetricRecord(train_metrics(len(train_set), result, job.partition_id))
    return job.reply({"arrays": state_to_arrays(state, sent_keys), "metrics": metrics})


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
    job = ClientJob.receive(msg, context)
    model, _, _ = received_model(job, job.server_round)
    result = evaluate(model, make_loader(job.data.test, EVAL_BATCH_SIZE, shuffle=False), job.device)
    metrics = MetricRecord(
        {
            "num-examples": result.examples,
            "test-loss": result.loss,
            "test-accuracy": result.accuracy,
            "partition-id": job.partition_id,
        }
    )
    return job.reply({"metrics": metrics})
