"""NCFM's feature networks: ConvNets trained on the real data, blended with their initialisation.

NCFM (Wang et al., CVPR 2025, Sec. 4 "Implementation"; released code ``gszfwsb/NCFM``) does not
match in a fresh random network each step, as DM does.  It first trains M ConvNets on the real
data (20 models, 60 epochs each, in the released configs) and, at every distillation step,
picks one of them and interpolates its weights with the same network's initial weights,

    θ = l · θ_init + (1 − l) · θ_trained,    l ~ U(0, 1),

so the features range from a random network's to a trained one's.  :func:`pretrain_feature_nets`
builds the pool (the training is the synthetic-set evaluation protocol's: SGD, DSA on every
batch, the learning rate ×0.1 at half), :meth:`FeatureNetPool.draw` gives one blended network.

The pool is built from the client's own data on the client: nothing of it leaves the client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedmatch.distill.common import DM_NET, check_dataset, draw_seed
from fedmatch.distill.evaluate import (
    EvalProtocol,
    convnet_factory,
    measure_accuracy,
    train_on_set,
)

log = logging.getLogger(__name__)

__all__ = ["FeatureNetPool", "blend_states", "pretrain_feature_nets"]

State = dict[str, torch.Tensor]


def blend_states(
    initial: Mapping[str, torch.Tensor], trained: Mapping[str, torch.Tensor], mix: float
) -> State:
    """``mix · initial + (1 − mix) · trained`` for every floating-point entry (NCFM's blend).

    Integer buffers (e.g. a BatchNorm step counter) are taken from ``trained``.
    """
    if set(initial) != set(trained):
        raise ValueError(
            f"the two weight sets differ in their keys: {sorted(set(initial) ^ set(trained))}"
        )
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"blend weight mix={mix} must lie in [0, 1]")
    blended: State = {}
    for key, value in trained.items():
        if value.is_floating_point():
            blended[key] = mix * initial[key] + (1.0 - mix) * value
        else:
            blended[key] = value.clone()
    return blended


@dataclass
class FeatureNetPool:
    """Pairs of (initial, trained) weights of one ConvNet architecture, on the CPU."""

    net: Mapping[str, Any]
    in_channels: int
    num_classes: int
    image_size: int
    initial: list[State]
    trained: list[State]
    train_accuracy: list[float]  # each trained model's accuracy on the data it was trained on

    def __post_init__(self) -> None:
        if not self.initial or len(self.initial) != len(self.trained):
            raise ValueError(
                f"a feature-network pool needs one trained state per initial state and at least "
                f"one pair, got {len(self.initial)} and {len(self.trained)}"
            )

    def __len__(self) -> int:
        return len(self.initial)

    def new_model(self) -> nn.Module:
        """An unblended network of the pool's architecture (its weights are overwritten)."""
        # convnet_factory builds under fork_rng: drawing networks leaves torch's global RNG alone.
        return convnet_factory(
            self.net,
            in_channels=self.in_channels,
            num_classes=self.num_classes,
            image_size=self.image_size,
        )(0)

    def _frozen(self, state: State, device: torch.device | str) -> nn.Module:
        """A network of the pool's architecture holding ``state``, frozen, in train mode."""
        model = self.new_model()
        model.load_state_dict(state)
        model.to(device).train()
        model.requires_grad_(False)
        return model

    def trained_model(self, index: int, device: torch.device | str = "cpu") -> nn.Module:
        """The ``index``-th trained network, unblended (frozen, eval mode): NCFM's f_final."""
        if not 0 <= index < len(self):
            raise IndexError(f"feature network {index} of a pool of {len(self)}")
        return self._frozen(self.trained[index], device).eval()

    def draw(self, generator: torch.Generator, device: torch.device | str = "cpu") -> nn.Module:
        """A blended network (frozen, train mode, like DM's fresh ones): pick a pair, draw l."""
        index = int(torch.randint(0, len(self), (1,), generator=generator))
        mix = float(torch.rand((), generator=generator))
        return self._frozen(blend_states(self.initial[index], self.trained[index], mix), device)


def pretrain_feature_nets(
    images: torch.Tensor,
    labels: torch.Tensor,
    count: int,
    epochs: int,
    *,
    num_classes: int = 10,
    net: Mapping[str, Any] = DM_NET,
    lr: float = 0.01,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> FeatureNetPool:
    """Train ``count`` ConvNets for ``epochs`` epochs each on ``(images, labels)``.

    Each network's initial weights and training order come from ``generator``, so the pool is
    a function of the seed.  Logs each model's training accuracy.
    """
    check_dataset(images, labels, num_classes)
    if count < 1 or epochs < 1:
        raise ValueError(f"need count >= 1 and epochs >= 1, got count={count}, epochs={epochs}")
    device = torch.device(device)
    protocol = EvalProtocol(epochs=epochs, lr=lr)
    images, labels = images.detach().cpu().float(), labels.detach().cpu().long()
    initial: list[State] = []
    trained: list[State] = []
    accuracies: list[float] = []
    make = convnet_factory(
        net, in_channels=images.shape[1], num_classes=num_classes, image_size=images.shape[2]
    )
    for index in range(count):
        model = make(draw_seed(generator))
        initial.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        train_on_set(model, images, labels, protocol, seed=draw_seed(generator), device=device)
        trained.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        accuracies.append(measure_accuracy(model, images, labels, device))
        log.info(
            "NCFM feature network %d/%d: %d epochs, train accuracy %.3f",
            index + 1,
            count,
            epochs,
            accuracies[-1],
        )
    return FeatureNetPool(
        net=dict(net),
        in_channels=images.shape[1],
        num_classes=num_classes,
        image_size=images.shape[2],
        initial=initial,
        trained=trained,
        train_accuracy=accuracies,
    )
