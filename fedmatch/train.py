"""The one local training loop and the one evaluation loop every workload uses.

Methods that change the local objective (FedProx's proximal term, MMD
alignment, contrastive regularisers, ...) pass an ``extra_loss`` hook instead
of writing another loop; methods that change the gradient itself (SCAFFOLD's
control-variate correction) pass a ``grad_hook``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

# (model, images, labels, logits) -> an extra scalar loss added to cross-entropy.
ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# (model, images, labels, logits, features) -> an extra loss that also needs the features
# (``model.embed(images)``, e.g. MMD alignment); the loop computes them once per step.
FeatureLoss = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor
]
# (model) -> None, called after ``backward`` and before the optimiser step; may change the
# parameters' ``.grad`` in place (e.g. SCAFFOLD's g − c_i + c).
GradHook = Callable[[nn.Module], None]


@dataclass(frozen=True)
class TrainResult:
    loss: float  # mean total loss over the steps taken
    steps: int
    examples: int  # examples seen, counting repeats over epochs
    seconds: float


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    examples: int


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when this process sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run-config key 'device' = 'cuda' but this process sees no CUDA GPU")
    return torch.device(name)


def train_local(
    model: nn.Module,
    loader: DataLoader,
    *,
    epochs: int,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    device: torch.device | str = "cpu",
    max_steps: int = 0,
    extra_loss: ExtraLoss | None = None,
    feature_loss: FeatureLoss | None = None,
    grad_hook: GradHook | None = None,
) -> TrainResult:
    """SGD on cross-entropy (+ ``extra_loss``) for ``epochs`` epochs or ``max_steps`` steps.

    With ``feature_loss`` the forward pass runs as ``model.classifier(model.embed(x))`` so
    the hook sees the features without a second forward; the model needs both attributes
    (ConvNet, ResNet18 and FedKACNN have them, and ``forward`` is exactly that).
    """
    if feature_loss is not None and not (
        callable(getattr(model, "embed", None)) and callable(getattr(model, "classifier", None))
    ):
        raise ValueError(
            f"a feature loss needs a model with embed() and classifier, got {type(model).__name__}"
        )
    device = torch.device(device)
    model.to(device).train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    start = time.perf_counter()
    total, steps, examples = 0.0, 0, 0
    for _ in range(epochs):
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            if feature_loss is not None:
                features = model.embed(images)
                logits = model.classifier(features)
            else:
                logits = model(images)
            loss = F.cross_entropy(logits, labels)
            if extra_loss is not None:
                loss = loss + extra_loss(model, images, labels, logits)
            if feature_loss is not None:
                loss = loss + feature_loss(model, images, labels, logits, features)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_hook is not None:
                grad_hook(model)
            optimizer.step()
            total += float(loss.detach())
            steps += 1
            examples += len(labels)
            if max_steps and steps >= max_steps:
                break
        if max_steps and steps >= max_steps:
            break
    if steps == 0:
        raise ValueError("train_local got an empty data loader: the client holds no training data")
    return TrainResult(total / steps, steps, examples, time.perf_counter() - start)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu"
) -> EvalResult:
    """Mean cross-entropy and accuracy in eval mode."""
    device = torch.device(device)
    model.to(device).eval()
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == labels).sum())
        count += len(labels)
    if count == 0:
        return EvalResult(float("nan"), float("nan"), 0)
    return EvalResult(loss_sum / count, correct / count, count)


def proximal_loss(global_params: Mapping[str, torch.Tensor], mu: float) -> ExtraLoss:
    """FedProx's proximal term (mu/2)·||w − w^t||² (Li et al., MLSys 2020, Eq. 2)."""

    def term(model: nn.Module, *_: torch.Tensor) -> torch.Tensor:
        squared = [
            (param - global_params[name]).pow(2).sum()
            for name, param in model.named_parameters()
            if name in global_params
        ]
        return 0.5 * mu * torch.stack(squared).sum()

    return term
