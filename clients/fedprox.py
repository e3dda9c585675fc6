"""FedProx's client workload: the classifier's local training plus the proximal term (Eq. 2)."""

from __future__ import annotations

import torch
from flwr.app import Context, Message

from clients import classifier
from fedmatch.config import RunConfig
from fedmatch.train import ExtraLoss, proximal_loss
from strategies.fedprox import FedProxParams


def proximal_term(cfg: RunConfig, model: torch.nn.Module, device: torch.device) -> ExtraLoss | None:
    """(mu/2)||w - w^t||^2 around the model as received; None when mu is 0."""
    mu = cfg.params(FedProxParams).proximal_mu
    if mu == 0:
        return None
    anchor = {n: p.detach().clone().to(device) for n, p in model.named_parameters()}
    return proximal_loss(anchor, mu)


def handle_train(msg: Message, context: Context) -> Message:
    return classifier.handle_train(msg, context, make_extra_loss=proximal_term)
