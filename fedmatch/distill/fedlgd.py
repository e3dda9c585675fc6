"""FedLGD's math: the local regulariser, the pseudo-gradient and the server's gradient matching.

Huang, Jin, Zhao, Xu & Li, "Federated Virtual Learning on Heterogeneous Data with Local-Global
Distillation" (TMLR 2024, arXiv 2303.02278; official code ``ubc-tea/FedLGD``).  Clients train
on local virtual data (DM, ``fedmatch.distill.dm``) together with global virtual data the
server distils; three pieces of the method live here, as plain PyTorch:

- :class:`VirtualRegulariser`, the client's extra term in non-refresh rounds (Eq. 6):
  λ · SupCon between the batch's features and the features of *all* global virtual images
  (re-embedded every step, every sample an anchor, τ = 0.07, as ``loss_fn.SupConLoss`` with
  ``contrast_mode='all'`` in the code), or λ · MK-MMD between the two feature sets (the code's
  ``mmd`` option: five Gaussian kernels, bandwidths ×{1/4, 1/2, 1, 2, 4} of the mean squared
  distance).
- :func:`pseudo_gradient`, the server's gradient target (θ_old − θ_new) / lr from the
  aggregated model (the TMLR code), so that clients send nothing beyond their weights.
- :func:`match_global_virtual`, federated gradient matching (Eq. 5): SGD on the global
  virtual images so that the cross-entropy gradient they produce at θ_old matches the target
  under DC's layer-wise cosine distance (``fedmatch.distill.gradient_matching``).  The target is
  either one gradient list for all classes (pseudo-gradient) or one per class (the averaged
  per-class client gradients of the pre-release code).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from fedmatch.align.mmd import mk_mmd
from fedmatch.contrastive import SUPCON_TEMPERATURE, supcon_loss
from fedmatch.distill.gradient_matching import Metric, gradient_distance, model_gradients

log = logging.getLogger(__name__)

__all__ = [
    "GradientMatchHistory",
    "RegulariserKind",
    "VirtualRegulariser",
    "class_gradients",
    "match_global_virtual",
    "pseudo_gradient",
    "regulariser_value",
]

RegulariserKind = Literal["supcon", "mmd", "none"]


def regulariser_value(
    kind: RegulariserKind,
    features: torch.Tensor,
    labels: torch.Tensor,
    global_features: torch.Tensor,
    global_labels: torch.Tensor,
    temperature: float = SUPCON_TEMPERATURE,
) -> torch.Tensor:
    """L_reg of Eq. 6 between a batch's features and the global virtual images' features.

    ``supcon``: SupCon over the concatenation [batch; global] with the labels, every sample an
    anchor (a global image of class c is a positive for every batch sample of class c and vice
    versa).  ``mmd``: the biased MK-MMD² between the two sets, labels unused.
    """
    if kind == "supcon":
        return supcon_loss(
            torch.cat([features, global_features]),
            torch.cat([labels, global_labels]),
            temperature,
            temperature,
        )
    if kind == "mmd":
        return mk_mmd(features, global_features)
    if kind == "none":
        return features.new_zeros(())
    raise ValueError(f"unknown FedLGD regulariser {kind!r}; allowed: 'supcon', 'mmd', 'none'")


class VirtualRegulariser:
    """The ``feature_loss`` hook of ``train_local``: λ · L_reg against the global virtual data.

    The global virtual images go through the model being trained at every step (not detached),
    as in the official code: the regulariser moves both feature sets.
    """

    def __init__(
        self,
        global_images: torch.Tensor,
        global_labels: torch.Tensor,
        *,
        kind: RegulariserKind,
        weight: float,
        temperature: float = SUPCON_TEMPERATURE,
    ) -> None:
        self.global_images = global_images
        self.global_labels = global_labels
        self.kind = kind
        self.weight = weight
        self.temperature = temperature
        self.values: list[float] = []

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor,
        features: torch.Tensor,
    ) -> torch.Tensor:
        del images, logits
        if self.global_images.device != features.device:
            # Once, not every step: the global set is re-embedded each step but never changes.
            self.global_images = self.global_images.to(features.device)
            self.global_labels = self.global_labels.to(features.device)
        g_images, g_labels = self.global_images, self.global_labels
        value = regulariser_value(
            self.kind, features, labels, model.embed(g_images), g_labels, self.temperature
        )
        self.values.append(float(value.detach()))
        return self.weight * value


def pseudo_gradient(
    model: nn.Module,
    old_state: Mapping[str, torch.Tensor],
    new_state: Mapping[str, torch.Tensor],
    lr: float,
) -> list[torch.Tensor]:
    """(θ_old − θ_new) / lr for every trainable parameter of ``model``, in ``parameters()`` order.

    The order is that of :func:`~fedmatch.distill.gradient_matching.model_gradients`, so the two
    lists pair up layer by layer.
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    out = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name not in old_state or name not in new_state:
            raise KeyError(f"parameter {name!r} is missing from the old or the new model state")
        delta = old_state[name].detach().float() - new_state[name].detach().float()
        out.append((delta / lr).to(param.device))
    return out


def class_gradients(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> dict[int, list[torch.Tensor]]:
    """Per class c present: ∇θ CE(model(images_c), c), detached (the pre-release code's target)."""
    out = {}
    for c in sorted(int(c) for c in torch.unique(labels)):
        mask = labels == c
        out[c] = model_gradients(model, images[mask], labels[mask])
    return out


@dataclass
class GradientMatchHistory:
    """The matching distance before each step (``losses[0]`` is at the start) and after the last."""

    losses: list[float] = field(default_factory=list)
    final_loss: float = float("nan")

    @property
    def initial_loss(self) -> float:
        return self.losses[0] if self.losses else float("nan")


def match_global_virtual(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    target: Sequence[torch.Tensor] | Mapping[int, Sequence[torch.Tensor]],
    *,
    steps: int,
    lr: float = 1.0,
    momentum: float = 0.5,
    metric: Metric = "ours",
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, GradientMatchHistory]:
    """Federated gradient matching (Eq. 5): update the global virtual images towards ``target``.

    Minimises D(∇θ CE(θ; S, y), target) over the images S by SGD (lr 1, momentum 0.5, no
    augmentation and no image prior, as the code), the model fixed at θ_old.  With a per-class
    ``target`` (mapping class -> gradient list) the loss is Σ_c D(∇θ CE(θ; S_c, c), target_c)
    over the classes both sides have.  Returns the new images (CPU) and the history.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    device = torch.device(device)
    model = model.to(device).train()
    for param in model.parameters():
        param.requires_grad_(True)
    labels = labels.to(device)
    syn = images.detach().to(device).clone().requires_grad_(True)
    optimizer = torch.optim.SGD([syn], lr=lr, momentum=momentum)
    if isinstance(target, Mapping):
        per_class = {
            int(c): [g.to(device) for g in grads]
            for c, grads in target.items()
            if bool((labels == int(c)).any())
        }
        if not per_class:
            raise ValueError("no class of the per-class gradient target has virtual images")
    else:
        whole = [g.to(device) for g in target]

    def distance() -> torch.Tensor:
        if isinstance(target, Mapping):
            terms = []
            for c, grads in per_class.items():
                mask = labels == c
                syn_grads = model_gradients(model, syn[mask], labels[mask], create_graph=True)
                terms.append(gradient_distance(syn_grads, grads, metric))
            return torch.stack(terms).sum()
        syn_grads = model_gradients(model, syn, labels, create_graph=True)
        return gradient_distance(syn_grads, whole, metric)

    history = GradientMatchHistory()
    for _ in range(steps):
        loss = distance()
        optimizer.zero_grad(set_to_none=True)
        # Only the images are optimised: the model's parameter gradients are not needed.
        (grad,) = torch.autograd.grad(loss, [syn])
        syn.grad = grad
        optimizer.step()
        history.losses.append(float(loss.detach()))
    history.final_loss = float(distance().detach())
    return syn.detach().cpu(), history
