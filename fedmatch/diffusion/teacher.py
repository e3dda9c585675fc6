"""The teacher: DDPM training and DDIM sampling of the class-conditional UNet.

Schedule: DDPM's 1000 steps with linear β from 1e-4 to 0.02 (Ho et al., NeurIPS 2020, §4),
through diffusers' ``DDPMScheduler``.  The network predicts **v** (Salimans & Ho, ICLR 2022,
"Progressive distillation", §4 and App. D): v = √ᾱ_t ε − √(1−ᾱ_t) x_0, so that

    x̂_0 = √ᾱ_t x_t − √(1−ᾱ_t) v̂.                                         (Salimans & Ho, Eq. 9)

With the linear schedule √ᾱ_999 ≈ 0.006, so recovering x̂_0 from an ε-prediction at t = 999
(where DMD2's one-step generator is queried) divides the error by 0.006; the v form has no
such division and is exact at every t, which is why the distillation uses it.

The DDPM loss is the "simple" objective (Ho et al., Eq. 14) with v as the target.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from fedmatch.diffusion.unet import crop_images, pad_images, unet_output

log = logging.getLogger("fedmatch.diffusion")

NUM_TRAIN_TIMESTEPS = 1000
_SCHEDULE = {
    "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "v_prediction",
}


def ddpm_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**_SCHEDULE, clip_sample=False)


def ddim_scheduler(steps: int, spacing: str = "trailing") -> DDIMScheduler:
    """DDIM (Song et al., ICLR 2021, Eq. 12 with η = 0) over ``steps`` steps.

    ``trailing`` spacing starts at t = 999 ([999, 749, 499, 249] for 4 steps); diffusers'
    default ``leading`` gives [750, 500, 250, 0] and never sees pure noise.
    """
    scheduler = DDIMScheduler(
        **_SCHEDULE, clip_sample=True, set_alpha_to_one=True, timestep_spacing=spacing
    )
    scheduler.set_timesteps(steps)
    return scheduler


def alphas_cumprod() -> torch.Tensor:
    """ᾱ_t for t = 0..999 (float32, CPU)."""
    return ddpm_scheduler().alphas_cumprod.float()


def _gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device)[t].view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def add_noise(
    x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, ac: torch.Tensor
) -> torch.Tensor:
    """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (Ho et al., Eq. 4)."""
    a = _gather(ac, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def v_target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, ac: torch.Tensor):
    """v = √ᾱ_t ε − √(1−ᾱ_t) x_0 (Salimans & Ho, §4)."""
    a = _gather(ac, t, x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def predict_x0(
    unet: UNet2DModel,
    x_t: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor,
    ac: torch.Tensor,
) -> torch.Tensor:
    """x̂_0 = √ᾱ_t x_t − √(1−ᾱ_t) v̂(x_t, t, y) (Salimans & Ho, Eq. 9)."""
    a = _gather(ac, t, x_t)
    return a.sqrt() * x_t - (1 - a).sqrt() * unet_output(unet, x_t, t, labels)


def denoising_loss(
    unet: UNet2DModel,
    x0: torch.Tensor,
    labels: torch.Tensor,
    ac: torch.Tensor,
    generator: torch.Generator,
    t: torch.Tensor | None = None,
) -> torch.Tensor:
    """E_{t, ε} ||v̂(x_t, t, y) − v||² (Ho et al., Eq. 14, with the v target).

    ``x0`` are padded 32x32 images; ``t`` defaults to U{0..999}.  Noise and timesteps come
    from ``generator`` (on the CPU), so the loss is reproducible on any device.
    """
    n = x0.shape[0]
    if t is None:
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (n,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    t = t.to(x0.device)
    x_t = add_noise(x0, noise, t, ac)
    return F.mse_loss(unet_output(unet, x_t, t, labels), v_target(x0, noise, t, ac))


@dataclass
class TrainHistory:
    """Per-step losses and wall time of a training loop."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    # AdamW's state after the last step, for a caller that keeps it across rounds.
    optimizer_state: dict | None = None

    @property
    def steps(self) -> int:
        return len(self.losses)

    def mean_loss(self, last: int = 0) -> float:
        values = self.losses[-last:] if last else self.losses
        return float(sum(values) / max(1, len(values)))


def sample_batch(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch drawn with replacement by ``generator`` (images padded to 32x32)."""
    index = torch.randint(0, len(labels), (batch_size,), generator=generator)
    return pad_images(images[index]), labels[index]


def train_denoiser(
    unet: UNet2DModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: torch.device,
    optimizer_state: dict | None = None,
) -> TrainHistory:
    """``steps`` AdamW steps of :func:`denoising_loss` on (images in [-1, 1], labels).

    ``optimizer_state``: AdamW's moments from this client's previous round (its
    ``history.optimizer_state``), so that a federated client does not restart Adam's bias
    correction and second-moment estimate every round (Kingma & Ba, ICLR 2015, Alg. 1); the
    learning rate is ``lr`` either way.
    """
    generator = torch.Generator().manual_seed(seed)
    ac = alphas_cumprod()
    unet.to(device).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
        for group in optimizer.param_groups:
            group["lr"] = lr
    history = TrainHistory()
    start = time.perf_counter()
    for _ in range(steps):
        x0, y = sample_batch(images, labels, batch_size, generator)
        loss = denoising_loss(unet, x0.to(device), y.to(device), ac, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        history.losses.append(float(loss.detach()))
    history.seconds = time.perf_counter() - start
    history.optimizer_state = optimizer.state_dict()
    unet.eval()
    return history


@torch.no_grad()
def ddim_sample(
    unet: UNet2DModel,
    labels: torch.Tensor,
    *,
    steps: int,
    generator: torch.Generator,
    batch_size: int = 256,
) -> torch.Tensor:
    """Teacher samples for ``labels`` with ``steps`` DDIM steps (η = 0), as 28x28 in [-1, 1]."""
    device = next(unet.parameters()).device
    unet.eval()
    out = []
    for chunk in labels.split(batch_size):
        scheduler = ddim_scheduler(steps)
        x = torch.randn((len(chunk), unet.config.in_channels, 32, 32), generator=generator)
        x = x.to(device)
        y = chunk.to(device)
        for t in scheduler.timesteps:
            tt = torch.full((len(chunk),), int(t), device=device, dtype=torch.long)
            x = scheduler.step(unet_output(unet, x, tt, y), int(t), x).prev_sample
        out.append(crop_images(x.clamp(-1, 1)).cpu())
    return torch.cat(out)
