"""FedLGD's client (strategy ``fedlgd``): local virtual data, refreshed by DM; training on it.

Two messages (the math is in ``fedmatch.distill``):

- ``query.class_stats`` (once, before round 1): the per-class, per-channel mean and variance
  of the client's training images, from which the server initialises the global virtual
  images (``fedmatch.distill.stats``).  No image leaves the client.
- ``train`` (every round): the global model and the global virtual images come down.  The
  client's local virtual data is initialised from its own statistics and warmed up with DM
  the first time (``clients.distiller.local_virtual_set``, the same set the baselines with
  ``train-data='distilled'`` train on); in refresh rounds it is first refined by DM with the
  current global model as the feature extractor (``fedlgd-local-steps`` steps).  Then one
  local training pass over local ∪ global virtual images with cross-entropy, plus
  λ · L_reg against the global virtual images' features in non-refresh rounds.

The local virtual data survives rounds in the node state and, for ``resume``, as a file per
refresh under the run directory (``clients.local_state``, slot ``fedlgd-virtual``).
"""

from __future__ import annotations

import logging
import time

import torch
from flwr.app import Context, Message, MetricRecord
from torch.utils.data import TensorDataset

from clients.classifier import local_training, train_metrics
from clients.distiller import local_virtual_set
from clients.job import ClientJob, Record
from clients.local_state import load_local_state, save_local_state
from fedmatch.config import RunConfig
from fedmatch.data.loaders import ClientData
from fedmatch.data.types import NUM_CLASSES
from fedmatch.distill.dm import distill_dm
from fedmatch.distill.fedlgd import VirtualRegulariser, class_gradients
from fedmatch.distill.fedlgd_wire import (
    CLASS_GRADS_FLAG,
    CLASS_GRADS_KEY,
    GLOBAL_VIRTUAL_KEY,
    REFRESH_FLAG,
    REGULARISE_FLAG,
    STATS_KEY,
    class_grads_record,
    stats_record,
    virtual_images_dir,
)
from fedmatch.distill.stats import class_channel_stats
from fedmatch.distill.wire import synthetic_from_record
from fedmatch.factories.distill import DEFAULT_LR, distill_net
from fedmatch.factories.models import model_from_config
from fedmatch.images import save_class_grid
from fedmatch.params import DistillParams
from fedmatch.records import arrays_to_state, state_to_arrays
from fedmatch.seeding import derive_seed
from strategies.fedlgd import FedLGDParams

log = logging.getLogger("fedmatch.client")

SLOT = "fedlgd-virtual"
# Separates the refresh's seed stream from the warm-up's and the classifier's.
_REFRESH_TAG = 53


def handle_stats(msg: Message, context: Context) -> Message:
    job = ClientJob.receive(msg, context)
    images, labels = job.data.train.tensors
    stats = class_channel_stats(images, labels, NUM_CLASSES)
    metrics = MetricRecord({"num-examples": len(labels), "partition-id": job.partition_id})
    return job.reply({STATS_KEY: stats_record(stats), "metrics": metrics})


def _local_virtual(
    cfg: RunConfig,
    data: ClientData,
    context: Context,
    partition_id: int,
    run_dir: str,
    server_round: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The local virtual data as the previous round left it (warmed up the first time)."""
    saved = load_local_state(context, run_dir, partition_id, server_round - 1, slot=SLOT)
    if saved is not None:
        return saved["images"], saved["labels"]
    warmed = local_virtual_set(cfg, data, context, partition_id, device)
    images, labels = warmed.tensors
    if cfg.params(FedLGDParams).save_images and run_dir:
        save_class_grid(
            images, labels, virtual_images_dir(run_dir) / f"partition-{partition_id}-round-0.png"
        )
    return images, labels


def _refresh(
    cfg: RunConfig,
    data: ClientData,
    model: torch.nn.Module,
    virtual: tuple[torch.Tensor, torch.Tensor],
    partition_id: int,
    server_round: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """DM on the local virtual data in the global model's feature space (iterative DM)."""
    images, labels = data.train.tensors
    generator = torch.Generator().manual_seed(
        derive_seed(cfg.seed, server_round, partition_id, _REFRESH_TAG)
    )
    new_images, new_labels, history = distill_dm(
        images,
        labels,
        cfg.params(DistillParams).ipc,
        cfg.params(FedLGDParams).local_steps,
        num_classes=NUM_CLASSES,
        lr=cfg.params(DistillParams).lr or DEFAULT_LR["dm"],
        batch_real=cfg.params(DistillParams).batch_real,
        net=distill_net(cfg),
        dsa_strategy=cfg.params(DistillParams).dsa_strategy,
        generator=generator,
        device=device,
        start=virtual,
        feature_net=model,
        image_step=cfg.params(DistillParams).image_step,
        compile=cfg.params(DistillParams).compile,
    )
    log.info(
        "client %d (%s): round %d refreshed %d local virtual images by DM in the global "
        "model's features: %d steps, %.1f s, loss %.4f -> %.4f",
        partition_id,
        data.domain,
        server_round,
        len(new_labels),
        history.steps,
        history.seconds,
        history.initial_loss,
        history.final_loss,
    )
    metrics = {
        "fedlgd-refresh-seconds": history.seconds,
        "fedlgd-refresh-initial-loss": history.initial_loss,
        "fedlgd-refresh-final-loss": history.final_loss,
    }
    return new_images, new_labels, metrics


def handle_train(msg: Message, context: Context) -> Message:
    job = ClientJob.receive(msg, context)
    cfg, data, partition_id, device = job.cfg, job.data, job.partition_id, job.device
    config, server_round, run_dir = job.config, job.server_round, job.run_dir
    params = cfg.params(FedLGDParams)
    model = model_from_config(cfg)
    received = arrays_to_state(msg.content["arrays"])
    model.load_state_dict(received)
    record = msg.content.array_records.get(GLOBAL_VIRTUAL_KEY)
    if record is None:
        raise RuntimeError(
            f"round {server_round}: the FedLGD train message carries no global virtual images "
            f"(record {GLOBAL_VIRTUAL_KEY!r}); is the server running strategy='fedlgd'?"
        )
    global_images, global_labels = synthetic_from_record(record)
    virtual = _local_virtual(cfg, data, context, partition_id, run_dir, server_round, device)

    content: dict[str, Record] = {}
    extra: dict[str, float] = {}
    if bool(config.get(CLASS_GRADS_FLAG, False)):
        # The pre-release code's target: per-class gradients of the local virtual data at θ_t.
        grads = class_gradients(model.to(device), virtual[0].to(device), virtual[1].to(device))
        content[CLASS_GRADS_KEY] = class_grads_record(grads)
    if bool(config.get(REFRESH_FLAG, False)) and params.local_steps > 0:
        images, labels, refresh_metrics = _refresh(
            cfg, data, model, virtual, partition_id, server_round, device
        )
        virtual = (images, labels)
        extra.update(refresh_metrics)
        save_local_state(
            context,
            run_dir,
            partition_id,
            server_round,
            {"images": virtual[0], "labels": virtual[1]},
            slot=SLOT,
        )
        if params.save_images and run_dir:
            save_class_grid(
                virtual[0],
                virtual[1],
                virtual_images_dir(run_dir) / f"partition-{partition_id}-round-{server_round}.png",
            )

    regulariser = None
    use_reg = bool(config.get(REGULARISE_FLAG, False))
    if use_reg and params.regulariser != "none" and params.lambda_ > 0:
        regulariser = VirtualRegulariser(
            global_images,
            global_labels,
            kind=params.regulariser,
            weight=params.lambda_,
            temperature=params.temperature,
        )
    train_set = TensorDataset(
        torch.cat([virtual[0], global_images.float()]), torch.cat([virtual[1], global_labels])
    )
    start = time.perf_counter()
    result = local_training(
        cfg, train_set, model, server_round, partition_id, device, feature_loss=regulariser
    )
    log.debug("client %d: local training %.1f s", partition_id, time.perf_counter() - start)
    metrics = train_metrics(len(train_set), result, partition_id)
    metrics.update(extra)
    if regulariser is not None and regulariser.values:
        metrics["fedlgd-reg-loss"] = sum(regulariser.values) / len(regulariser.values)
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    content["arrays"] = state_to_arrays(state)
    content["metrics"] = MetricRecord(metrics)
    return job.reply(content)
