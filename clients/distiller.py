"""The distiller workload (message type ``train.distill``): condense the local training set.

The client distils its partition to ``ipc`` images per class with ``distill-method`` (DM or
NCFM, ``fedmatch.distill``) and keeps the synthetic set in its node state
(``context.state``, an ArrayRecord under :data:`STATE_KEY`).  The set leaves the client only
when the server's config record sets ``return-synthetic`` (``fedmatch.distill.wire``; strategy
``feddm`` does); the reply always carries the metrics: steps, seconds, loss at the start and
the end, peak memory.

Only classes the client holds get synthetic images, so under label skew a client returns
fewer than ``10 · ipc`` images.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord
from torch.utils.data import TensorDataset

from clients.job import ClientJob, Record
from clients.node import node_partition
from fedmatch.atomic import atomic_torch_save
from fedmatch.config import RunConfig
from fedmatch.data.loaders import ClientData
from fedmatch.distill.common import DistillHistory, InitMode
from fedmatch.distill.wire import (
    DISTILL_ACTION,
    RETURN_FLAG,
    SYNTHETIC_KEY,
    synthetic_from_record,
    synthetic_record,
)
from fedmatch.factories.distill import distill_from_config
from fedmatch.params import DistillParams
from fedmatch.seeding import derive_seed

log = logging.getLogger("fedmatch.client")

STATE_KEY = "distilled-set"
META_KEY = "distilled-meta"
# Separates the distillation's seed stream from the classifier's (seed, round, partition).
_SEED_TAG = 31


def stored_synthetic(context: Context) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The set this node distilled last (None if it has not distilled in this run)."""
    record = context.state.array_records.get(STATE_KEY)
    return None if record is None else synthetic_from_record(record)


def _distill_and_keep(
    cfg: RunConfig,
    data: ClientData,
    context: Context,
    partition_id: int,
    server_round: int,
    device: torch.device,
    init: InitMode | None = None,
) -> tuple[torch.Tensor, torch.Tensor, DistillHistory]:
    """Distil the partition, seeded by (seed, round, partition), and keep it in node state."""
    images, labels = data.train.tensors
    seed = derive_seed(cfg.seed, server_round, partition_id, _SEED_TAG)
    syn_images, syn_labels, history = distill_from_config(
        cfg, images, labels, seed=seed, device=device, init=init
    )
    log.info(
        "client %d (%s): %s distilled %d images to %d in %d steps, %.1f s, loss %.4f -> %.4f",
        partition_id,
        data.domain,
        cfg.params(DistillParams).method,
        len(labels),
        len(syn_labels),
        history.steps,
        history.seconds,
        history.initial_loss,
        history.final_loss,
    )
    context.state[STATE_KEY] = synthetic_record(syn_images, syn_labels)
    context.state[META_KEY] = ConfigRecord(
        {
            "round": server_round,
            "method": cfg.params(DistillParams).method,
            "ipc": cfg.params(DistillParams).ipc,
        }
    )
    return syn_images, syn_labels, history


def local_virtual_set(
    cfg: RunConfig,
    data: ClientData,
    context: Context,
    partition_id: int,
    device: torch.device,
) -> TensorDataset:
    """This client's local virtual data: distilled once per run, then kept in node state.

    The first call distils the partition (``distill-method`` for ``distill-steps`` steps,
    ``ipc`` images per class, starting from ``virtual-init``, seeded by (seed, partition)):
    FedLGD's initialisation and warm-up, which the baselines with ``train-data='distilled'``
    share, so that every method starts from the same local virtual data.  Later rounds reuse
    the stored set, and so does a ``train.distill`` message's result.  A resumed run distils
    again from the same seed, which gives the same set.
    """
    stored = stored_synthetic(context)
    if stored is not None:
        return TensorDataset(*stored)
    cache_file = virtual_cache_file(cfg, partition_id, node_partition(context)[1], device)
    if cfg.params(DistillParams).virtual_cache and cache_file.exists():
        try:
            cached = torch.load(cache_file, weights_only=True)
            syn_images, syn_labels = cached["images"], cached["labels"]
        except (OSError, RuntimeError, KeyError, EOFError) as err:
            log.warning(
                "local virtual data cache %s is unreadable (%s): distilling", cache_file, err
            )
        else:
            log.info(
                "client %d (%s): local virtual data (%d images) from the cache %s",
                partition_id,
                data.domain,
                len(syn_labels),
                cache_file,
            )
            context.state[STATE_KEY] = synthetic_record(syn_images, syn_labels)
            return TensorDataset(syn_images, syn_labels)
    syn_images, syn_labels, _ = _distill_and_keep(
        cfg, data, context, partition_id, 0, device, init=cfg.params(DistillParams).virtual_init
    )
    if cfg.params(DistillParams).virtual_cache:
        atomic_torch_save({"images": syn_images, "labels": syn_labels}, cache_file)
    return TensorDataset(syn_images, syn_labels)


# Every key the initial local virtual data depends on (data, partition, distillation, seed).
_VIRTUAL_KEYS = (
    "dataset",
    "data-root",
    "domains",
    "partitioning",
    "alpha",
    "train-subset",
    "target-domain",
    "seed",
    "distill.ipc",
    "distill.virtual-init",
    "distill.method",
    "distill.steps",
    "distill.lr",
    "distill.image-step",
    "distill.batch-real",
    "distill.net-padding",
    "distill.compile",
    "distill.factor",
    "distill.dsa-strategy",
    "distill.ncfm-alpha",
    "distill.ncfm-frequencies",
    "distill.ncfm-psi-lr",
    "distill.ncfm-feature-nets",
    "distill.ncfm-feature-epochs",
    "distill.ncfm-calibration",
    "distill.ncfm-step-per-class",
    "model-width",
    "model-depth",
    "model-norm",
)
# Bump when the distillation code changes what it computes: old cache files stop matching.
# 2: distill.image-step (issue 29); files of version 1 were made by the class-mean step.
_VIRTUAL_CACHE_VERSION = 2


def virtual_cache_file(
    cfg: RunConfig, partition_id: int, num_partitions: int, device: torch.device
) -> Path:
    """``<cache-dir>/virtual/<digest>.pt``: the digest of everything the set depends on.

    Runs that differ only in strategy or training keys (FedLGD and the baselines of its
    comparison) share the file, so the warm-up distillation runs once per client, not per run.
    The device type is part of the key: CPU and GPU kernels give slightly different numbers.
    """
    flower = cfg.to_flower()
    fields = {key: flower[key] for key in _VIRTUAL_KEYS}
    fields.update(
        {
            "partition-id": partition_id,
            "num-partitions": num_partitions,
            "device": device.type,
            "version": _VIRTUAL_CACHE_VERSION,
        }
    )
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
    return cfg.cache_path / "virtual" / f"{digest}.pt"


def handle_distill(msg: Message, context: Context) -> Message:
    job = ClientJob.receive(msg, context)
    cfg, data, partition_id, device = job.cfg, job.data, job.partition_id, job.device
    config, server_round = job.config, job.server_round
    syn_images, syn_labels, history = _distill_and_keep(
        cfg, data, context, partition_id, server_round, device
    )
    labels = data.train.tensors[1]

    metrics: dict[str, int | float] = {
        "num-examples": len(labels),
        "num-synthetic": len(syn_labels),
        "distill-steps": history.steps,
        "distill-seconds": history.seconds,
        "distill-cpu-seconds": history.cpu_seconds,
        "distill-seconds-per-step": history.seconds_per_step,
        "distill-initial-loss": history.initial_loss,
        "distill-final-loss": history.final_loss,
        "distill-peak-memory-mb": history.peak_memory_bytes / 2**20,
        # 1: CUDA bytes allocated; 0: the process's peak resident memory
        # (docs/methods/distillation.md).
        "distill-peak-memory-gpu": int(history.peak_memory_kind == "cuda-allocated"),
        "partition-id": partition_id,
    }
    metrics.update({f"distill-{k}": v for k, v in history.extra.items()})
    content: dict[str, Record] = {"metrics": MetricRecord(metrics)}
    if bool(config.get(RETURN_FLAG, False)):
        content[SYNTHETIC_KEY] = synthetic_record(syn_images, syn_labels)
    return job.reply(content)


__all__ = ["DISTILL_ACTION", "META_KEY", "STATE_KEY", "handle_distill", "stored_synthetic"]
