"""MOON (Li, He & Song, "Model-Contrastive Federated Learning", CVPR 2021), Eq. (3)–(4).

Each local step adds to the supervised loss the model-contrastive loss (Eq. 3)::

    ℓ_con = −log [ exp(sim(z, z_glob)/τ) / (exp(sim(z, z_glob)/τ) + exp(sim(z, z_prev)/τ)) ]

where z, z_glob and z_prev are the representations of the same images under the model being
trained, the global model received this round and the client's own model from the last round
it took part in, sim is cosine similarity and τ the temperature; the local objective is
ℓ_sup + μ·ℓ_con (Eq. 4), averaged over the batch.  Here z is the model's ``embed()`` output
(the flattened features before the classifier): fedmatch's models have no projection head,
unlike the paper's, so the comparison keeps one architecture for every strategy.

Before a client has a previous model (its first round), MOON's code uses the global model
in its place; then z_glob = z_prev, ℓ_con = log 2 whatever z is, and its gradient is 0, so
the term is left out.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# Slot of the client's previous local model in its local state.
CLIENT_STATE_SLOT = "moon-previous"


def model_contrastive_loss(
    z: torch.Tensor, z_glob: torch.Tensor, z_prev: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Eq. (3), averaged over the batch: cross-entropy of [sim(z, z_glob), sim(z, z_prev)]/τ
    with the global representation as the positive (index 0)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    positive = F.cosine_similarity(z, z_glob, dim=1)
    negative = F.cosine_similarity(z, z_prev, dim=1)
    logits = torch.stack([positive, negative], dim=1) / temperature
    target = torch.zeros(len(z), dtype=torch.long, device=z.device)
    return F.cross_entropy(logits, target)


class MoonLoss:
    """The ``feature_loss`` hook of ``train_local``: μ·ℓ_con with frozen global/previous models.

    The two reference models run in eval mode without gradients (they are fixed during the
    round; eval mode keeps BatchNorm statistics untouched).
    """

    def __init__(
        self, global_model: nn.Module, previous_model: nn.Module, *, mu: float, temperature: float
    ) -> None:
        self.global_model = global_model.eval()
        self.previous_model = previous_model.eval()
        for module in (self.global_model, self.previous_model):
            module.requires_grad_(False)
        self.mu = mu
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
        with torch.no_grad():
            z_glob = self.global_model.embed(images)
            z_prev = self.previous_model.embed(images)
        loss = model_contrastive_loss(features, z_glob, z_prev, self.temperature)
        self.values.append(float(loss.detach()))
        return self.mu * loss
