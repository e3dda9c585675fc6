"""FedKA's server-side pieces: the ramp schedule, pseudo-label fine-tuning, Group Effect.

FedKA: Sun, Chong & Ochiai, "Feature Distribution Matching for Federated Domain
Generalization", ACML 2022 (PMLR 189); official code ``yuweisunn/federated-knowledge-
alignment``.  Everything here is plain PyTorch; labels of the target domain never enter
this module's training functions (they take images and pseudo-labels only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "FinetuneResult",
    "finetune_on_pseudo_labels",
    "group_effect",
    "predict_logits",
    "ramp",
    "schedule_weight",
]

Schedule = Literal["dann", "constant"]


def ramp(progress: float, gamma: float = 10.0) -> float:
    """DANN's ramp ``2 / (1 + exp(−γ·p)) − 1`` (Ganin et al., JMLR 2016, Sec. 5.2).

    Rises from 0 at ``p = 0`` towards 1; γ = 10 in DANN, 5 in the official FedKA code.
    ``progress`` is clipped to [0, 1].
    """
    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


def schedule_weight(schedule: Schedule, maximum: float, progress: float, gamma: float) -> float:
    """``maximum · ramp(progress)`` for the ``dann`` schedule, ``maximum`` for ``constant``."""
    if schedule == "constant":
        return float(maximum)
    if schedule == "dann":
        return float(maximum) * ramp(progress, gamma)
    raise ValueError(f"schedule {schedule!r} is not allowed: use 'dann' or 'constant'")


def group_effect(global_accuracy: float, client_accuracies: Sequence[float]) -> float:
    """Group Effect: what aggregation adds on the target over the clients' own models.

    ``GE = acc_T(global model) − mean_k acc_T(client model k)``, all measured on the
    target domain.  FedKA (Sun et al., ACML 2022) introduces the Group Effect criterion to
    quantify negative transfer in FL ("the performance gain via model aggregation", which
    FedKA improves about 4x); its exact formula was not available to us, so this is the
    reading of that phrase: positive when the aggregated model beats its average
    contributor on the unseen domain, negative under negative transfer.
    """
    if not client_accuracies:
        raise ValueError("group_effect needs the target accuracy of at least one client model")
    return float(global_accuracy) - sum(client_accuracies) / len(client_accuracies)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Logits of ``model`` in eval mode for ``images`` (CPU tensor), batched."""
    model.to(device).eval()
    out = [
        model(images[i : i + batch_size].to(device)).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out) if out else torch.empty(0)


@dataclass(frozen=True)
class FinetuneResult:
    loss: float  # mean weighted loss over the steps (nan when no step ran)
    steps: int
    examples: int


def finetune_on_pseudo_labels(
    model: nn.Module,
    images: torch.Tensor,
    pseudo_labels: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    weight: float,
    seed: int,
    device: torch.device | str = "cpu",
    class_balanced: bool = False,
) -> FinetuneResult:
    """``steps`` SGD steps on ``weight · CE(model(x), pseudo-label)`` over shuffled batches.

    FedKA fine-tunes the aggregated global model on the voted pseudo-labels, with the loss
    scaled by the ramp ("adoption rate" in the official code).  Batches cycle through
    ``images`` in a seeded order, reshuffled each pass.  Takes no true labels by design.

    ``class_balanced``: draw each batch with replacement, an example of pseudo-class c with
    probability ∝ 1 / n_c, so every pseudo-class is drawn equally often (class-balanced
    sampling, as in class-balanced self-training, Zou et al., ECCV 2018).  Why: self-training
    on confident labels starves the classes the model already under-predicts (on optdigits,
    after 20 rounds, the fine-tuned model predicted 49 "1"s and 52 "4"s of ~145 each), so the
    plain loop confirms its own bias; balancing assumes the target's classes are about
    equally frequent, as in every digit domain here.
    """
    if len(images) != len(pseudo_labels):
        raise ValueError(
            f"{len(images)} images but {len(pseudo_labels)} pseudo-labels: they must pair up"
        )
    if steps <= 0 or len(images) == 0 or weight == 0:
        return FinetuneResult(float("nan"), 0, 0)
    device = torch.device(device)
    model.to(device).train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    if class_balanced:
        counts = torch.bincount(pseudo_labels.cpu())
        draw_weights = 1.0 / counts[pseudo_labels.cpu()].double()
    cursor, total, examples = 0, 0.0, 0
    with torch.random.fork_rng(devices=[]):
        # Dropout in the model draws from the global generator: seed it too.
        torch.manual_seed(seed)
        for _ in range(steps):
            if class_balanced:
                idx = torch.multinomial(
                    draw_weights, batch_size, replacement=True, generator=generator
                )
            else:
                if cursor >= len(order):
                    order, cursor = torch.randperm(len(images), generator=generator), 0
                idx = order[cursor : cursor + batch_size]
                cursor += batch_size
            x, y = images[idx].to(device), pseudo_labels[idx].to(device)
            loss = weight * F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            examples += len(idx)
    return FinetuneResult(total / steps, steps, examples)
