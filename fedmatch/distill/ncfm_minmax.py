"""NCFM's min-max machinery (Wang et al., CVPR 2025, Eq. 9): the frequency sampler ψ and the
update that descends the NCFD in the images while ψ ascends it.

Split from :mod:`fedmatch.distill.ncfm` (which re-exports these names): the loss lives there,
the optimisation steps here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["FREQUENCY_REPEAT", "FrequencySampler", "minmax_step", "step_rows_in_turn"]

FREQUENCY_REPEAT = 16  # Gaussian draws per ψ scale vector (paper: mixture size = freqs / 16)


class FrequencySampler(nn.Module):
    """ψ: noise → scale vectors σ_k; frequencies t = σ_k ⊙ z, z ~ N(0, I) (a scale mixture).

    The layers are the released ``SampleNet``'s.  Noise comes from the caller's generator (on
    the CPU), so the frequencies are a function of the seed.
    """

    def __init__(self, dim: int, num_frequencies: int, repeat: int = FREQUENCY_REPEAT) -> None:
        super().__init__()
        if dim < 1 or num_frequencies < 1 or repeat < 1:
            raise ValueError(
                f"dim, num_frequencies and repeat must be positive, got {dim}, "
                f"{num_frequencies}, {repeat}"
            )
        self.dim, self.num_frequencies, self.repeat = dim, num_frequencies, repeat
        self.components = math.ceil(num_frequencies / repeat)
        if self.components < 2:
            # BatchNorm1d in training mode needs at least two rows.
            raise ValueError(
                f"the sampling network needs num_frequencies > {repeat} (at least two mixture "
                f"components of {repeat} frequencies), got {num_frequencies}"
            )
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [nn.Linear(dim, dim), nn.BatchNorm1d(dim)]
            layers.append(nn.LeakyReLU(0.2) if i < 2 else nn.Tanh())
        self.net = nn.Sequential(*layers)

    def draw_noise(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(ψ's input noise (K, D), Gaussian draws z (F, D)), on the CPU."""
        noise = torch.randn(self.components, self.dim, generator=generator)
        gaussian = torch.randn(self.num_frequencies, self.dim, generator=generator)
        return noise, gaussian

    def forward(self, noise: torch.Tensor, gaussian: torch.Tensor) -> torch.Tensor:
        scales = self.net(noise).repeat_interleave(self.repeat, dim=0)[: self.num_frequencies]
        return scales * gaussian


def step_rows_in_turn(
    images: torch.Tensor,
    grad: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    row_groups: Sequence[torch.Tensor],
) -> None:
    """One optimiser step per group of rows, each seeing only its own rows' gradient.

    This is the released code's class loop (``compute_match_loss``: per class, ``backward``
    then ``optim_img.step()`` on the one tensor that holds every class): a class's step
    passes zero gradient to the other classes' rows, which still move by Adam's momentum and
    by weight decay, so an iteration is C optimiser steps.  Each class's loss depends only
    on its own rows (instance norm), so one backward pass gives every class's gradient; the
    code instead re-evaluates class c's loss after classes < c have stepped, which differs
    only by the momentum moves made in between.
    """
    for rows in row_groups:
        masked = torch.zeros_like(grad)
        masked[rows] = grad[rows]
        images.grad = masked
        optimizer.step()
    images.grad = None


def minmax_step(
    loss: torch.Tensor,
    images: torch.Tensor,
    image_optimizer: torch.optim.Optimizer,
    sampler_params: Sequence[nn.Parameter] = (),
    sampler_optimizer: torch.optim.Optimizer | None = None,
    row_groups: Sequence[torch.Tensor] | None = None,
) -> None:
    """Descend ``loss`` in ``images`` and ascend it in ψ's parameters, from one graph.

    The two gradients are computed as separate tensors, never accumulated into shared
    ``.grad`` fields, so they cannot cancel (the released code's ψ update is g − g = 0).
    ``row_groups`` (one index tensor per class): step the images once per class
    (:func:`step_rows_in_turn`); None: one step for all.  ψ takes one SGD step on the summed
    gradient, which equals the code's per-class SGD steps summed.
    """
    params = list(sampler_params)
    grads = torch.autograd.grad(loss, [images, *params], allow_unused=True)
    if row_groups is None:
        images.grad = grads[0]
        image_optimizer.step()
        images.grad = None
    else:
        step_rows_in_turn(images, grads[0], image_optimizer, row_groups)
    if sampler_optimizer is not None and params:
        for param, grad in zip(params, grads[1:], strict=True):
            param.grad = None if grad is None else -grad  # ascent: step along +∇ψ
        sampler_optimizer.step()
        for param in params:
            param.grad = None
