"""The generator workloads: federated teacher training and DMD2/DisBack distillation.

``train.teacher``: the client receives the teacher UNet, runs ``teacher-steps`` DDPM steps on
its local images (``fedmatch.diffusion.teacher``) and returns the UNet; the server averages.

``train.generator``: the client receives the generator bundle (generator, fake score, GAN
head) and the frozen target score (record ``real-score``: the teacher for DMD2, the current
path node for DisBack), runs ``generator-steps`` DMD2 generator updates with ``critic-steps``
critic updates each (``fedmatch.diffusion.dmd2.train_dmd2``; the GAN head sees the client's
local real images) and returns the bundle.  Nothing but the UNets and the head leaves the
client: no images, no labels.
"""

from __future__ import annotations

import logging
from typing import Any

from flwr.app import Context, Message, MetricRecord

from clients.job import ClientJob
from fedmatch.config import RunConfig
from fedmatch.data.loaders import ClientData
from fedmatch.diffusion.dmd2 import DMD2History, train_dmd2
from fedmatch.diffusion.teacher import train_denoiser
from fedmatch.diffusion.unet import build_unet
from fedmatch.factories.diffusion import (
    TARGET_KEY,
    TEACHER_LR_KEY,
    GeneratorBundle,
    client_condition_labels,
    dmd2_settings,
    unet_spec,
)
from fedmatch.params import DiffusionParams, GeneratorParams
from fedmatch.records import arrays_to_state, state_to_arrays
from fedmatch.seeding import derive_seed

log = logging.getLogger("fedmatch.client")

# Separate the workloads' seed streams from the classifier's (seed, round, partition).
_TEACHER_TAG = 51
_GENERATOR_TAG = 53


def _setup(msg: Message, context: Context) -> tuple[ClientJob, RunConfig, ClientData, int, int]:
    job = ClientJob.receive(msg, context)
    return job, job.cfg, job.data, job.partition_id, job.server_round


def _round_lr(job: ClientJob, cfg: RunConfig) -> float:
    """This round's teacher learning rate as the server sent it (a cosine schedule over the
    rounds, ``teacher-lr-final``), or the run config's ``teacher-lr`` without one."""
    value = job.config.get(TEACHER_LR_KEY, cfg.params(DiffusionParams).teacher_lr)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 10:
        raise ValueError(
            f"train config {TEACHER_LR_KEY!r} = {value!r} from the server: expected a learning "
            "rate in (0, 10)"
        )
    return float(value)


def teacher_settings(cfg: RunConfig) -> dict[str, Any]:
    """The run config's part of one client's teacher round (:func:`train_denoiser` keywords)."""
    params = cfg.params(DiffusionParams)
    return {
        "steps": params.teacher_steps,
        "batch_size": cfg.batch_size,
        "cond_dropout": params.teacher_cond_dropout,
        "null_label": unet_spec(cfg).null_label,
        "bf16": params.teacher_bf16,
    }


def handle_teacher(msg: Message, context: Context) -> Message:
    job, cfg, data, partition_id, server_round = _setup(msg, context)
    device = job.device
    spec = unet_spec(cfg)
    unet = build_unet(spec, 0)
    unet.load_state_dict(arrays_to_state(msg.content["arrays"]), strict=True)
    images, labels = data.train.tensors
    labels = client_condition_labels(cfg, data.domain, labels)  # its own domain's rows
    lr = _round_lr(job, cfg)
    history = train_denoiser(
        unet,
        images,
        labels,
        lr=lr,
        seed=derive_seed(cfg.seed, server_round, partition_id, _TEACHER_TAG),
        device=device,
        **teacher_settings(cfg),
    )
    log.info(
        "client %d (%s): teacher %d steps, loss %.4f, %.1f s",
        partition_id,
        data.domain,
        history.steps,
        history.mean_loss(),
        history.seconds,
    )
    state = {k: v.cpu() for k, v in unet.state_dict().items()}
    metrics = MetricRecord(
        {
            "num-examples": len(labels),
            "teacher-loss": history.mean_loss(),
            "teacher-loss-last": history.mean_loss(last=max(1, history.steps // 4)),
            "teacher-steps": history.steps,
            "teacher-lr": lr,
            "teacher-seconds": history.seconds,
            "partition-id": partition_id,
        }
    )
    return job.reply({"arrays": state_to_arrays(state), "metrics": metrics})


def handle_generator(msg: Message, context: Context) -> Message:
    job, cfg, data, partition_id, server_round = _setup(msg, context)
    device = job.device
    spec = unet_spec(cfg)
    bundle = GeneratorBundle(spec, 0)
    bundle.load_state_dict(arrays_to_state(msg.content["arrays"]), strict=True)
    target_record = msg.content.array_records.get(TARGET_KEY)
    if target_record is None:
        raise ValueError(
            f"{msg.metadata.message_type} message without the target score (record "
            f"{TARGET_KEY!r}); the dmd2/disback strategies send it every round"
        )
    target = build_unet(spec, 0)
    target.load_state_dict(arrays_to_state(target_record), strict=True)
    images, labels = data.train.tensors
    labels = client_condition_labels(cfg, data.domain, labels)
    history = train_dmd2(
        bundle.generator,
        bundle.fake,
        bundle.head,
        target,
        images,
        labels,
        dmd2_settings(cfg),
        seed=derive_seed(cfg.seed, server_round, partition_id, _GENERATOR_TAG),
        device=device,
    )
    log.info(
        "client %d (%s): %d generator steps (%d critic each), DM loss %.4g, fake loss %.4f, %.1f s",
        partition_id,
        data.domain,
        cfg.params(GeneratorParams).steps,
        cfg.params(GeneratorParams).critic_steps,
        DMD2History.mean(history.dm_losses),
        DMD2History.mean(history.fake_losses),
        history.seconds,
    )
    state = {k: v.cpu() for k, v in bundle.state_dict().items()}
    metrics: dict[str, int | float] = {
        "num-examples": len(labels),
        "dm-loss": DMD2History.mean(history.dm_losses),
        "dm-grad-norm": DMD2History.mean(history.dm_grad_norms),
        "fake-score-loss": DMD2History.mean(history.fake_losses),
        "generator-steps": len(history.dm_losses),
        "critic-steps": len(history.fake_losses),
        "generator-seconds": history.seconds,
        "partition-id": partition_id,
    }
    if history.gan_generator_losses:
        metrics["gan-generator-loss"] = DMD2History.mean(history.gan_generator_losses)
    if history.gan_critic_losses:
        metrics["gan-critic-loss"] = DMD2History.mean(history.gan_critic_losses)
    return job.reply({"arrays": state_to_arrays(state), "metrics": MetricRecord(metrics)})
