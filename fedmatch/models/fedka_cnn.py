"""The DANN-style digit CNN of the official FedKA code (registered as ``fedka-cnn``).

Architecture of ``CNNModel`` in ``yuweisunn/federated-knowledge-alignment`` (itself the
DANN digit network of Ganin et al., JMLR 2016)::

    features:   conv5x5(3→64) → norm → maxpool2 → ReLU → conv5x5(64→50) → norm
                → Dropout2d(0.5) → maxpool2 → ReLU            (28x28 input → 50x4x4 = 800-d)
    classifier: Linear(800→100) → norm → ReLU → Linear(100→10)
    domain:     Linear(800→100) → norm → ReLU → Linear(100→2)   (only with domain_head=True)

The official code ends both heads in ``LogSoftmax`` and trains with ``NLLLoss``; this model
returns logits for ``cross_entropy``, which is the same loss.  ``embed`` is the 800-d
feature FedKA aligns with MK-MMD.  ``norm`` follows the run config: "batchnorm" (the
official choice: BatchNorm2d / BatchNorm1d), "instancenorm"/"groupnorm"/"layernorm" for the
conv layers as in ``make_norm2d`` with a per-example ``GroupNorm(1, 100)`` (layer norm) in
the heads, or "none".
"""

from __future__ import annotations

import torch
from torch import nn

from fedmatch.align.dann import grad_reverse
from fedmatch.models.convnet import make_norm2d

__all__ = ["FedKACNN"]

HIDDEN = 100


def _norm1d(norm: str, features: int) -> nn.Module:
    if norm == "batchnorm":
        return nn.BatchNorm1d(features)
    if norm == "none":
        return nn.Identity()
    # One statistic set per example, like the instance norm of the conv layers: the
    # layer behaves the same in train and eval mode and needs no running statistics.
    return nn.GroupNorm(1, features)


def _head(norm: str, in_features: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, HIDDEN),
        _norm1d(norm, HIDDEN),
        nn.ReLU(inplace=True),
        nn.Linear(HIDDEN, out_features),
    )


class FedKACNN(nn.Module):
    """FedKA's digit CNN with an optional DANN domain head behind gradient reversal."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        norm: str = "batchnorm",
        domain_head: bool = False,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"fedka-cnn needs images of at least 16x16, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=5),
            make_norm2d(norm, 64, (image_size - 4, image_size - 4)),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 50, kernel_size=5),
            make_norm2d(norm, 50, (side * 2, side * 2)),
            nn.Dropout2d(0.5),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
        )
        self.feature_dim: int = 50 * side * side
        self.classifier = _head(norm, self.feature_dim, num_classes)
        self.domain_classifier = _head(norm, self.feature_dim, 2) if domain_head else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The flattened conv features (800-d for 28x28 input), as FedKA aligns them."""
        return torch.flatten(self.features(x), start_dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))

    def domain_logits(self, features: torch.Tensor, coeff: float) -> torch.Tensor:
        """Source-vs-target logits of ``features`` behind a gradient reversal of ``coeff``."""
        if self.domain_classifier is None:
            raise ValueError("this fedka-cnn was built without a domain head (domain-head=false)")
        return self.domain_classifier(grad_reverse(features, coeff))
