"""DMD2: improved distribution matching distillation (Yin et al., NeurIPS 2024, arXiv 2405.14867).

Three networks share the teacher's architecture: the frozen teacher (the "real score"
μ_real), an online "fake score" μ_fake trained by denoising on the generator's outputs, and
the generator G (initialised from the teacher, queried at t = 999 on pure noise).  As the
released code runs it (``../shared/notes/diffusion.md`` §A):

- **Distribution-matching gradient** (DMD, Yin et al. CVPR 2024, Eq. 7; DMD2 §3): the
  KL gradient ∇_θ KL ≈ E_t[(s_fake − s_real) dG/dθ], in x_0 space
  (x̂_0^fake − x̂_0^real), normalised per sample by mean |x − x̂_0^real| (DMD Eq. 8), and
  applied through 0.5·||x − sg(x − grad)||² (:func:`dm_gradient`, :func:`dm_loss`).
- **Fake-score loss**: the teacher's denoising loss on detached generator samples
  (:func:`fake_score_loss`).
- **Two time-scale update rule** (DMD2 §4.2): ``critic_steps`` fake-score (+ GAN head)
  updates per generator update, separate AdamW optimisers.
- **GAN loss** (DMD2 §4.3, Eq. 3): a classifier head on the fake-score UNet's bottleneck
  (mid-block output) sees noised real and generated images; non-saturating losses
  D = softplus(l_fake) + softplus(−l_real), G = softplus(−l_fake); the D loss (× 1e-2) trains
  the head *and* the fake UNet, the G loss (× 3e-3) reaches G through the frozen critic.
  The real images are the client's local data: this is where federated data enters.
- **Backward simulation** (DMD2 §4.5): a multi-step generator with student timesteps
  [999, 749, 499, 249] is trained at a randomly drawn step k, on inputs made by running G
  itself k steps from noise without gradients, re-noising each x̂_0 with fresh noise
  (:func:`backward_simulate`).

The networks predict v (``fedmatch.diffusion.teacher``); the DMD2 code's SD path converts its
ε output to x_0 the same way.  Everything works on 32x32 edge-padded images.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import nn

from fedmatch.diffusion.teacher import (
    NUM_TRAIN_TIMESTEPS,
    add_noise,
    alphas_cumprod,
    denoising_loss,
    predict_x0,
    sample_batch,
)
from fedmatch.diffusion.unet import UNET_SIZE, crop_images

log = logging.getLogger("fedmatch.diffusion")

# DM-loss timesteps t ~ U[0.02 T, 0.98 T] (DMD2 code: min_step_percent / max_step_percent).
DM_T_MIN = int(0.02 * NUM_TRAIN_TIMESTEPS)
DM_T_MAX = int(0.98 * NUM_TRAIN_TIMESTEPS)


def student_timesteps(num_steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """The generator's timesteps: ``range(T−1, 0, −T/N)``; [999] or [999, 749, 499, 249]."""
    if num_steps < 1 or num_train_timesteps % num_steps:
        raise ValueError(
            f"generator-nfe={num_steps}: must be >= 1 and divide {num_train_timesteps} "
            "(e.g. 1, 2, 4, 5, 10)"
        )
    return list(range(num_train_timesteps - 1, 0, -(num_train_timesteps // num_steps)))


def _noise(shape: tuple[int, ...], rng: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn(shape, generator=rng).to(device)


def _full(value: int, n: int, device: torch.device) -> torch.Tensor:
    return torch.full((n,), value, dtype=torch.long, device=device)


@torch.no_grad()
def backward_simulate(
    generator: UNet2DModel,
    labels: torch.Tensor,
    k: int,
    timesteps: list[int],
    ac: torch.Tensor,
    rng: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The generator's own input at student step ``k`` (DMD2 §4.5, "backward simulation").

    Starts from pure noise at ``timesteps[0]`` (= 999) and runs G for ``k`` steps without
    gradients: x̂_0 = G(x_{t_i}, t_i), then x_{t_{i+1}} = √ᾱ x̂_0 + √(1−ᾱ) ε with fresh,
    uncorrelated ε (DMD2 issue #9).  Returns (x_{t_k}, t_k); k = 0 gives pure noise.
    """
    if not 0 <= k < len(timesteps):
        raise ValueError(f"step k={k} outside 0..{len(timesteps) - 1}")
    device = labels.device
    n = len(labels)
    shape = (n, generator.config.in_channels, UNET_SIZE, UNET_SIZE)
    x = _noise(shape, rng, device)
    for i in range(k):
        x0 = predict_x0(generator, x, _full(timesteps[i], n, device), labels, ac)
        x = add_noise(x0, _noise(shape, rng, device), _full(timesteps[i + 1], n, device), ac)
    return x, _full(timesteps[k], n, device)


@torch.no_grad()
def generate(
    generator: UNet2DModel,
    labels: torch.Tensor,
    *,
    num_steps: int,
    rng: torch.Generator,
    batch_size: int = 256,
) -> torch.Tensor:
    """Samples of the ``num_steps``-step generator, 28x28 in [-1, 1]."""
    device = next(generator.parameters()).device
    generator.eval()
    out = [
        crop_images(generate_padded(generator, chunk.to(device), num_steps=num_steps, rng=rng))
        for chunk in labels.split(batch_size)
    ]
    return torch.cat([x.clamp(-1, 1).cpu() for x in out])


@torch.no_grad()
def generate_padded(
    generator: UNet2DModel, labels: torch.Tensor, *, num_steps: int, rng: torch.Generator
) -> torch.Tensor:
    """The generator's x̂_0 at its last step, padded 32x32 and unclamped (for training use)."""
    timesteps = student_timesteps(num_steps)
    ac = alphas_cumprod()
    x_t, t = backward_simulate(generator, labels, num_steps - 1, timesteps, ac, rng)
    return predict_x0(generator, x_t, t, labels, ac)


def dm_gradient(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """The distribution-matching gradient in x_0 space (DMD Eqs. 7-8, as DMD2's code runs it).

    grad = (x̂_0^fake − x̂_0^real) / mean_{c,h,w} |x − x̂_0^real|, per sample.  The code maps NaN
    to 0 (``nan_to_num``); here ±inf (a zero normaliser) also gives 0 rather than 3e38.  It
    is zero exactly when the real and fake scores agree.
    """
    weight = (x - x0_real).abs().mean(dim=tuple(range(1, x.dim())), keepdim=True)
    return torch.nan_to_num((x0_fake - x0_real) / weight, nan=0.0, posinf=0.0, neginf=0.0)


def dm_loss(
    x: torch.Tensor,
    real_unet: UNet2DModel,
    fake_unet: UNet2DModel,
    labels: torch.Tensor,
    ac: torch.Tensor,
    rng: torch.Generator,
    t_min: int = DM_T_MIN,
    t_max: int = DM_T_MAX,
    real_guidance: float = 0.0,
    null_label: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5·||x − sg(x − grad)||² (DMD2 code), whose gradient w.r.t. x is ∝ :func:`dm_gradient`.

    ``x``: generator outputs (with autograd).  Both scores see the same x_t = √ᾱ x + √(1−ᾱ) ε,
    t ~ U[t_min, t_max], without gradients.  ``real_guidance`` > 0: the real score is the
    teacher's classifier-free-guided prediction, as DMD2's code does for its text-to-image
    teachers (``real_guidance_scale``; ``../shared/notes/diffusion.md``), so the generator
    matches the guided teacher; the fake score is never guided (asserted there too).
    Returns (loss, grad).
    """
    n = x.shape[0]
    t = torch.randint(t_min, t_max + 1, (n,), generator=rng).to(x.device)
    noise = _noise(tuple(x.shape), rng, x.device)
    with torch.no_grad():
        x_t = add_noise(x.detach(), noise, t, ac)
        x0_real = predict_x0(real_unet, x_t, t, labels, ac, real_guidance, null_label)
        x0_fake = predict_x0(fake_unet, x_t, t, labels, ac)
        grad = dm_gradient(x.detach(), x0_real, x0_fake)
    return 0.5 * F.mse_loss(x, (x - grad).detach()), grad


def fake_score_loss(
    fake_unet: UNet2DModel,
    x_gen: torch.Tensor,
    labels: torch.Tensor,
    ac: torch.Tensor,
    rng: torch.Generator,
) -> torch.Tensor:
    """The fake score's denoising loss on detached generator samples (DMD2 §3, Eq. 2)."""
    return denoising_loss(fake_unet, x_gen.detach(), labels, ac, rng)


class _Bottleneck(Exception):
    def __init__(self, features: torch.Tensor) -> None:
        self.features = features


def bottleneck(
    unet: UNet2DModel, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """The UNet's mid-block output; the forward pass stops there (the up path is not run)."""

    def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        raise _Bottleneck(output)

    handle = unet.mid_block.register_forward_hook(hook)
    try:
        unet(x_t, t, class_labels=labels)
    except _Bottleneck as stop:
        return stop.features
    finally:
        handle.remove()
    raise RuntimeError("the UNet's mid block did not run")


class GanHead(nn.Module):
    """DMD2's classifier branch on the bottleneck: 2 × (conv 4x4/s2, GroupNorm, SiLU), 1x1 conv."""

    def __init__(self, channels: int, groups: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, channels, 4, stride=2, padding=1),
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 4, stride=2, padding=1),
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, 1, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).flatten()


def gan_logits(
    fake_unet: UNet2DModel,
    head: GanHead,
    x0: torch.Tensor,
    labels: torch.Tensor,
    ac: torch.Tensor,
    rng: torch.Generator,
) -> torch.Tensor:
    """Head logits of images noised at t ~ U{0..999} ("diffusion GAN", DMD2 §4.3)."""
    n = x0.shape[0]
    t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (n,), generator=rng).to(x0.device)
    x_t = add_noise(x0, _noise(tuple(x0.shape), rng, x0.device), t, ac)
    return head(bottleneck(fake_unet, x_t, t, labels))


def gan_critic_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating discriminator loss softplus(l_fake) + softplus(−l_real) (DMD2 Eq. 3)."""
    return F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()


def gan_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss softplus(−l_fake) (DMD2 Eq. 3)."""
    return F.softplus(-logits_fake).mean()


@dataclass(frozen=True)
class DMD2Settings:
    """One client's local DMD2 training (defaults: the notes' tiny form)."""

    generator_steps: int
    critic_steps: int = 5
    lr: float = 1e-4
    batch_size: int = 32
    nfe: int = 1
    gan_weight_generator: float = 3e-3
    gan_weight_critic: float = 1e-2
    # Classifier-free guidance of the real score (dm_loss); null_label: the teacher's null row.
    real_guidance: float = 0.0
    null_label: int | None = None


@dataclass
class DMD2History:
    dm_losses: list[float] = field(default_factory=list)
    dm_grad_norms: list[float] = field(default_factory=list)
    gan_generator_losses: list[float] = field(default_factory=list)
    fake_losses: list[float] = field(default_factory=list)
    gan_critic_losses: list[float] = field(default_factory=list)
    simulated_steps: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @staticmethod
    def mean(values: list[float]) -> float:
        return float(sum(values) / len(values)) if values else 0.0


def _set_trainable(modules: tuple[nn.Module, ...], trainable: bool) -> None:
    for module in modules:
        module.requires_grad_(trainable)


def train_dmd2(
    generator: UNet2DModel,
    fake_unet: UNet2DModel,
    head: GanHead,
    real_unet: UNet2DModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: DMD2Settings,
    *,
    seed: int,
    device: torch.device,
) -> DMD2History:
    """``generator_steps`` DMD2 generator updates, each after ``critic_steps`` critic updates.

    ``images``/``labels``: the local real data (28x28 in [-1, 1]); its labels also set the
    classes generated, so a label-skewed client distils its own classes.  ``real_unet`` is
    frozen (the teacher, or DisBack's current target).
    """
    rng = torch.Generator().manual_seed(seed)
    ac = alphas_cumprod()
    for module in (generator, fake_unet, head, real_unet):
        module.to(device)
    real_unet.eval().requires_grad_(False)
    for module in (generator, fake_unet, head):
        module.train().requires_grad_(True)
    timesteps = student_timesteps(settings.nfe)
    opt_g = torch.optim.AdamW(generator.parameters(), lr=settings.lr, weight_decay=0.01)
    critic_params = [*fake_unet.parameters(), *head.parameters()]
    opt_c = torch.optim.AdamW(critic_params, lr=settings.lr, weight_decay=0.01)
    use_gan_d = settings.gan_weight_critic > 0
    use_gan_g = settings.gan_weight_generator > 0
    history = DMD2History()
    start = time.perf_counter()

    def generated(y: torch.Tensor, with_grad: bool) -> torch.Tensor:
        k = int(torch.randint(0, len(timesteps), (1,), generator=rng))
        history.simulated_steps.append(timesteps[k])
        x_t, t = backward_simulate(generator, y, k, timesteps, ac, rng)
        with torch.set_grad_enabled(with_grad):
            return predict_x0(generator, x_t, t, y, ac)

    for _ in range(settings.generator_steps):
        # Critic turns: the fake score (and the GAN head on its bottleneck).
        for _ in range(settings.critic_steps):
            x_real, y = sample_batch(images, labels, settings.batch_size, rng)
            x_real, y = x_real.to(device), y.to(device)
            x_gen = generated(y, with_grad=False)
            loss = fake_score_loss(fake_unet, x_gen, y, ac, rng)
            history.fake_losses.append(float(loss.detach()))
            if use_gan_d:
                d_loss = gan_critic_loss(
                    gan_logits(fake_unet, head, x_real, y, ac, rng),
                    gan_logits(fake_unet, head, x_gen, y, ac, rng),
                )
                history.gan_critic_losses.append(float(d_loss.detach()))
                loss = loss + settings.gan_weight_critic * d_loss
            opt_c.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(critic_params, 10.0)
            opt_c.step()
        # Generator turn: the critic is frozen, but gradients still flow through it to G.
        _set_trainable((fake_unet, head), False)
        _, y = sample_batch(images, labels, settings.batch_size, rng)
        y = y.to(device)
        x = generated(y, with_grad=True)
        loss, grad = dm_loss(
            x,
            real_unet,
            fake_unet,
            y,
            ac,
            rng,
            real_guidance=settings.real_guidance,
            null_label=settings.null_label,
        )
        history.dm_losses.append(float(loss.detach()))
        history.dm_grad_norms.append(float(grad.flatten(1).norm(dim=1).mean()))
        if use_gan_g:
            g_loss = gan_generator_loss(gan_logits(fake_unet, head, x, y, ac, rng))
            history.gan_generator_losses.append(float(g_loss.detach()))
            loss = loss + settings.gan_weight_generator * g_loss
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(generator.parameters(), 10.0)
        opt_g.step()
        _set_trainable((fake_unet, head), True)
    history.seconds = time.perf_counter() - start
    generator.eval()
    fake_unet.eval()
    head.eval()
    return history
