"""VHL (Tang, Zhang, Shi, Chu & Han, "Virtual Homogeneity Learning: Defending against Data
Heterogeneity in Federated Learning", ICML 2022).

Every client adds the same *virtual* dataset D^v to its local data and aligns, class by class,
the features of its natural data with those of the virtual data (Sec. 4, the VHL objective)::

    min_θ  E_{(x,y)~P_k} ℓ(θ; x, y) + E_{(x,y)~D^v} ℓ(θ; x, y) + λ·d(P_k(h | y), P^v(h | y))

- D^v comes from an *untrained* generator fed with pure noise: class c draws latents
  z ~ N(z̄_c, σ²I) around its own random mean z̄_c ~ N(0, s²I), so the virtual classes are
  separable but carry nothing of any client's data (``virtual_dataset``).  The official code's
  default generator is an untrained StyleGAN-v2; here it is a small untrained conv decoder
  (``VirtualGenerator``), which keeps what VHL relies on: random, structured, class-separable
  images, identical on every client because they depend only on the run seed.
- d is the official code's "feature calibration": the supervised contrastive loss (SupCon,
  Khosla et al., NeurIPS 2020, Eq. 2, τ = 0.07) over the L2-normalised features of the
  natural batch and a virtual batch, virtual class c counting as the positive of natural
  class c; the virtual features enter detached (the code's ``VHL_feat_detach``), so the
  alignment moves the natural features towards the virtual ones, not the reverse.
- Nothing of D^v travels: each client generates it from the run seed (the official code
  ships the generated files from the server once); ``vhl-virtual-per-class`` sets its size.
- Virtual labels share the model's classes (virtual class c is labelled c).  The official
  code's default instead labels them C + c with a 2C-way head; one head keeps every strategy
  on the same model.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from fedmatch.contrastive import SUPCON_TEMPERATURE, supcon_loss
from fedmatch.data.types import IMAGE_SHAPE, NUM_CLASSES

LATENT_DIM = 64
# Spread of the class means z̄_c and of the latents around them: the official code's
# style_gan_sample_z_mean / _std (0.3 / 0.3).  With these the ten virtual classes are already
# separable by their nearest class mean in pixel space (a unit test checks it).
CLASS_MEAN_STD = 0.3
LATENT_STD = 0.3


class VirtualGenerator(nn.Module):
    """An untrained conv decoder: latent (64) -> 3x28x28 images in [-1, 1]."""

    def __init__(self, latent_dim: int = LATENT_DIM, width: int = 64) -> None:
        super().__init__()
        self.width = width
        self.project = nn.Linear(latent_dim, width * 7 * 7)
        self.body = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),  # 14x14
            nn.Conv2d(width, width, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="nearest"),  # 28x28
            nn.Conv2d(width, width // 2, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width // 2, IMAGE_SHAPE[0], 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.body(self.project(z).view(len(z), self.width, 7, 7))
        # Per-image standardisation, then tanh: images on the real data's [-1, 1] scale
        # whatever the random weights' output scale is.
        flat = x.flatten(1)
        flat = (flat - flat.mean(1, keepdim=True)) / (flat.std(1, keepdim=True) + 1e-6)
        return torch.tanh(flat).view_as(x)


@functools.lru_cache(maxsize=2)
def virtual_dataset(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (10·per_class, 3, 28, 28), labels): the virtual data of a run, a pure function
    of (per_class, seed).  Cached per process: every round of a client reuses it."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = VirtualGenerator().eval()
    means = torch.randn(NUM_CLASSES, LATENT_DIM, generator=generator) * CLASS_MEAN_STD
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    z = means[labels] + LATENT_STD * torch.randn(len(labels), LATENT_DIM, generator=generator)
    with torch.no_grad():
        images = torch.cat([net(chunk) for chunk in z.split(256)])
    return images, labels


class VHLLoss:
    """The ``feature_loss`` hook of ``train_local``: CE on a virtual batch + λ·SupCon alignment.

    Each step draws as many virtual samples as the natural batch has, with its own seeded
    generator, and runs them through the same model.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        weight: float,
        seed: int,
        temperature: float = SUPCON_TEMPERATURE,
    ) -> None:
        self.images = images
        self.labels = labels
        self.weight = weight
        self.temperature = temperature
        self.generator = torch.Generator().manual_seed(seed)
        self.virtual_ce: list[float] = []
        self.align: list[float] = []

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor,
        features: torch.Tensor,
    ) -> torch.Tensor:
        idx = torch.randperm(len(self.labels), generator=self.generator)[: len(labels)]
        v_images = self.images[idx].to(features.device)
        v_labels = self.labels[idx].to(features.device)
        v_features = model.embed(v_images)
        ce = F.cross_entropy(model.classifier(v_features), v_labels)
        loss = ce
        self.virtual_ce.append(float(ce.detach()))
        if self.weight > 0:
            align = supcon_loss(
                torch.cat([features, v_features.detach()]),
                torch.cat([labels, v_labels]),
                self.temperature,
            )
            self.align.append(float(align.detach()))
            loss = loss + self.weight * align
        return loss
