"""Federated voting: pseudo-labels for unlabelled target data from the clients' consensus.

FedKA (Sun, Chong & Ochiai, ACML 2022, Sec. 3, "federated voting") labels each target
example with the class most client models predict and fine-tunes the global model on
those labels.  The official code takes the plurality of the argmax votes and breaks ties
by the iteration order of a Python ``set`` of tensors (effectively random).  Here ties are
broken deterministically:

1. the class with the most votes (plurality);
2. among tied classes, the one with the largest summed softmax probability over all
   clients (a soft vote);
3. if that is tied too (exactly equal floats), the lowest class index.

An optional agreement threshold keeps only examples whose winning class got at least
``threshold`` of the votes (0 keeps all, as in the official code; 0.5+ needs a majority).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["federated_vote"]


def federated_vote(
    client_logits: Sequence[torch.Tensor], threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-labels and the mask of examples that pass the agreement threshold.

    ``client_logits`` holds one (N, C) tensor per client (the same N target examples).
    Returns ``(labels, mask)``: int64 labels of shape (N,) and a bool mask of shape (N,)
    that is True where the winning class's share of votes is at least ``threshold``.
    """
    if not client_logits:
        raise ValueError("federated_vote needs the logits of at least one client")
    shapes = {tuple(logits.shape) for logits in client_logits}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(
            f"every client's logits must be one (N, C) tensor of the same shape, got {shapes}"
        )
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"vote threshold {threshold!r} must lie in [0, 1]")
    stacked = torch.stack([logits.detach().float() for logits in client_logits])  # (K, N, C)
    num_clients, _, num_classes = stacked.shape
    votes = torch.nn.functional.one_hot(stacked.argmax(dim=2), num_classes).sum(dim=0)
    confidence = stacked.softmax(dim=2).sum(dim=0)  # (N, C)

    most = votes.max(dim=1, keepdim=True).values
    tied = votes == most
    soft = torch.where(tied, confidence, torch.full_like(confidence, -torch.inf))
    still_tied = soft == soft.max(dim=1, keepdim=True).values
    classes = torch.arange(num_classes, device=stacked.device).expand_as(votes)
    labels = torch.where(still_tied, classes, num_classes).min(dim=1).values

    share = most.squeeze(1).float() / num_clients
    return labels, share >= threshold
