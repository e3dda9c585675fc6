"""FedKA's client workload: supervised training plus alignment to the target domain.

Each local step minimises (Sun, Chong & Ochiai, ACML 2022, Sec. 3, "embedding matching")::

    CE(source batch) + α(p) · MK-MMD(client features of the source batch, target features)
                     [+ DANN domain loss through gradient reversal, with ``domain-head``]

``α(p)`` is ``mmd-weight`` times DANN's ramp of the training progress ``p`` (0 at the first
step of round 1, 1 at the last step of the last round; ``align-schedule``).  The target
features are FedKA's "global workspace" view of the target domain: features of target
images computed by the server's current fine-tuned global model.

- ``target-access='features'`` (default, privacy-preserving): the server sends those
  features; raw target images never leave the server.
- ``target-access='raw'``: the client reads target images itself (as the official code
  does) and computes their features with the fine-tuned global model the server sends;
  with ``domain-head`` its own features of those images also feed the domain head.

Either way each step draws ``target-batch-size`` of the ``target-samples`` target features
with a generator seeded by (seed, round, partition).  Target labels never reach this module.
The official code runs the MMD in a second pass over the batches with gradient accumulation
whose ``=+`` typo drops 7 of 8 terms; here the MMD term joins every step's loss, which is
the objective the paper writes down.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord
from torch import nn
from torch.utils.data import TensorDataset

from clients.classifier import local_training, received_model
from clients.job import ClientJob
from clients.local_state import save_local_state
from fedmatch.align.dann import domain_loss
from fedmatch.align.fedka import schedule_weight
from fedmatch.align.mmd import mk_mmd, parse_multipliers
from fedmatch.config import RunConfig
from fedmatch.data.loaders import load_target_domain, to_images
from fedmatch.factories.models import model_from_config
from fedmatch.records import arrays_to_state, state_to_arrays
from fedmatch.seeding import derive_seed
from fedmatch.train import TrainResult
from strategies.fedka import FedKAParams

log = logging.getLogger("fedmatch.client")

FEATURE_BATCH = 256
# Purpose tags that keep the seeds of this module's random draws apart.
_DRAW_TARGET_BATCHES = 1
_DRAW_RAW_SAMPLES = 2


@dataclass(frozen=True)
class TargetView:
    """What a client knows of the target domain this round (never any label)."""

    features: torch.Tensor  # (M, D): the fine-tuned global model's features of M images
    images: torch.Tensor | None = None  # (M, 3, 28, 28) in raw mode, row-aligned with features


class AlignmentLoss:
    """The ``feature_loss`` hook of ``train_local``: α(p)·MK-MMD (+ the DANN domain loss)."""

    def __init__(
        self,
        cfg: RunConfig,
        target: TargetView,
        *,
        server_round: int,
        steps_per_round: int,
        seed: int,
    ) -> None:
        self.cfg = cfg
        self.target = target
        self.server_round = server_round
        self.steps_per_round = max(1, steps_per_round)
        self.multipliers = parse_multipliers(cfg.params(FedKAParams).mmd_bandwidth_multipliers)
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0
        self.mmd_values: list[float] = []
        self.domain_values: list[float] = []

    def progress(self) -> float:
        """Training progress p in [0, 1] at the current step (over all rounds)."""
        done = (self.server_round - 1) + self.step / self.steps_per_round
        return done / self.cfg.num_server_rounds

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor,
        features: torch.Tensor,
    ) -> torch.Tensor:
        cfg = self.cfg
        p = self.progress()
        self.step += 1
        count = len(self.target.features)
        idx = torch.randperm(count, generator=self.generator)[
            : cfg.params(FedKAParams).target_batch_size
        ]
        target_features = self.target.features[idx].to(features.device)
        loss = features.new_zeros(())
        if cfg.params(FedKAParams).mmd_weight > 0:
            mmd = mk_mmd(
                features,
                target_features,
                multipliers=self.multipliers,
                bandwidth_base=cfg.params(FedKAParams).mmd_bandwidth_base,
                estimator=cfg.params(FedKAParams).mmd_estimator,
            )
            self.mmd_values.append(float(mmd.detach()))
            loss = (
                loss
                + schedule_weight(
                    cfg.params(FedKAParams).align_schedule,
                    cfg.params(FedKAParams).mmd_weight,
                    p,
                    cfg.params(FedKAParams).align_gamma,
                )
                * mmd
            )
        if cfg.params(FedKAParams).domain_head:
            coeff = schedule_weight(
                cfg.params(FedKAParams).align_schedule,
                cfg.params(FedKAParams).domain_weight,
                p,
                cfg.params(FedKAParams).align_gamma,
            )
            if self.target.images is not None:
                # Raw mode, as in DANN: the client's own features of target images, so the
                # reversed gradient also shapes how the extractor sees the target.
                target_side = model.embed(self.target.images[idx].to(features.device))
            else:
                target_side = target_features
            dom = domain_loss(
                model.domain_logits(features, coeff), model.domain_logits(target_side, coeff)
            )
            self.domain_values.append(float(dom.detach()))
            loss = loss + dom
        return loss


@torch.no_grad()
def embed_images(
    model: nn.Module, images: torch.Tensor, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Eval-mode features ``model.embed(images)`` on the CPU, batched."""
    model.to(device).eval()
    chunks = [
        model.embed(images[i : i + FEATURE_BATCH].to(device)).cpu()
        for i in range(0, len(images), FEATURE_BATCH)
    ]
    return torch.cat(chunks)


def raw_target_images(cfg: RunConfig, server_round: int, partition_id: int) -> torch.Tensor:
    """``target-samples`` images of the target's training split, drawn per (round, client).

    Only the images are taken from the domain's arrays; its labels stay behind.
    """
    domain = load_target_domain(cfg)
    rng = np.random.default_rng(
        derive_seed(cfg.seed, server_round, partition_id, _DRAW_RAW_SAMPLES)
    )
    count = min(cfg.params(FedKAParams).target_samples, len(domain.x_train))
    idx = np.sort(rng.choice(len(domain.x_train), size=count, replace=False))
    return to_images(domain.x_train[idx])


def local_steps(num_examples: int, cfg: RunConfig) -> int:
    """The number of SGD steps ``train_local`` takes for this client."""
    steps = cfg.local_epochs * -(-num_examples // cfg.batch_size)
    return min(steps, cfg.max_local_steps) if cfg.max_local_steps else steps


def train_aligned(
    cfg: RunConfig,
    model: nn.Module,
    train_set: TensorDataset,
    target: TargetView | None,
    *,
    server_round: int,
    partition_id: int,
    device: torch.device,
) -> tuple[TrainResult, AlignmentLoss | None]:
    """One round of FedKA local training (``target=None``: plain supervised training)."""
    hook = None
    if target is not None:
        hook = AlignmentLoss(
            cfg,
            target,
            server_round=server_round,
            steps_per_round=local_steps(len(train_set), cfg),
            seed=derive_seed(cfg.seed, server_round, partition_id, _DRAW_TARGET_BATCHES),
        )
    result = local_training(
        cfg, train_set, model, server_round, partition_id, device, feature_loss=hook
    )
    return result, hook


def _target_view(
    cfg: RunConfig, msg: Message, server_round: int, partition_id: int, device: torch.device
) -> TargetView | None:
    content = msg.content
    if "target" in content.array_records:
        return TargetView(features=arrays_to_state(content["target"])["features"])
    if "reference" in content.array_records:
        reference = model_from_config(cfg)
        reference.load_state_dict(arrays_to_state(content["reference"]))
        images = raw_target_images(cfg, server_round, partition_id)
        return TargetView(features=embed_images(reference, images, device), images=images)
    return None  # nothing to align to (mmd-weight=0 without a domain head)


def handle_train(msg: Message, context: Context) -> Message:
    job = ClientJob.receive(msg, context)
    cfg, data, partition_id, device = job.cfg, job.data, job.partition_id, job.device
    server_round = job.server_round
    model, sent_keys, local_keys = received_model(job, server_round - 1)
    target = _target_view(cfg, msg, server_round, partition_id, device)
    result, hook = train_aligned(
        cfg,
        model,
        data.train,
        target,
        server_round=server_round,
        partition_id=partition_id,
        device=device,
    )
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    if local_keys:
        save_local_state(
            context, job.run_dir, partition_id, server_round, {k: state[k] for k in local_keys}
        )
    values: dict[str, int | float] = {
        "num-examples": len(data.train),
        "train-loss": result.loss,
        "train-steps": result.steps,
        "train-seconds": result.seconds,
        "partition-id": partition_id,
    }
    if hook is not None and hook.mmd_values:
        values["train-mmd"] = float(np.mean(hook.mmd_values))
    if hook is not None and hook.domain_values:
        values["train-domain-loss"] = float(np.mean(hook.domain_values))
    return job.reply({"arrays": state_to_arrays(state, sent_keys), "metrics": MetricRecord(values)})
