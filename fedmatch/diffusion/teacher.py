"""The teacher: DDPM training and DDIM sampling of the class-conditional UNet.

Schedule: DDPM's 1000 steps with linear β from 1e-4 to 0.02 (Ho et al., NeurIPS 2020, §4),
through diffusers' ``DDPMScheduler``.  The network predicts **v** (Salimans & Ho, ICLR 2022,
"Progressive distillation", §4 and App. D): v = √ᾱ_t ε − √(1−ᾱ_t) x_0, so that

    x̂_0 = √ᾱ_t x_t − √(1−ᾱ_t) v̂.                                         (Salimans & Ho, Eq. 9)

With the linear schedule √ᾱ_999 ≈ 0.006, so recovering x̂_0 from an ε-prediction at t = 999
(where DMD2's one-step generator is queried) divides the error by 0.006; the v form has no
such division and is exact at every t, which is why the distillation uses it.

The DDPM loss is the "simple" objective (Ho et al., Eq. 14) with v as the target.

Classifier-free guidance (Ho & Salimans, "Classifier-Free Diffusion Guidance", 2021): the
teacher is trained with each example's condition replaced by the null condition with
probability ``cond_dropout`` (their Alg. 1), so one network models both p(x | y) and p(x);
sampling then follows

    ṽ = (1 + w) v̂(x_t, y) − w v̂(x_t, ∅)                                    (Ho & Salimans, Eq. 6)

with guidance scale w (their Eq. 6 is written for ε; v = √ᾱ_t ε − √(1−ᾱ_t) x_0 is affine in ε
for fixed x_t, so guiding v is guiding ε).  w = 0 is the plain conditional model.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel

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


Solver = Literal["ddim", "dpm++2m"]
SOLVERS: tuple[Solver, ...] = ("ddim", "dpm++2m")


def dpm_scheduler(steps: int) -> DPMSolverMultistepScheduler:
    """DPM-Solver++(2M) (Lu et al., 2022, Alg. 2) over ``steps`` steps uniform in log-SNR λ_t.

    The steps are spread evenly in λ (``use_lu_lambdas``), as the paper's Sec. 3.1 advises,
    instead of in t: with DDPM's linear β, t ∈ [0, 100) holds the log-SNR range where fine
    detail forms, and trailing DDIM at 10 steps spends one step there.  With the exact
    denoiser of Gaussian data (tests/test_diffusion_sampler.py) 10 such steps give the data's
    spread, where 10 DDIM steps give half of it.  x̂_0 is clipped to [-1, 1] at every step,
    as DDIM's ``clip_sample`` (``thresholding`` with ``sample_max_value`` 1 is that clip).
    """
    scheduler = DPMSolverMultistepScheduler(
        **_SCHEDULE,
        algorithm_type="dpmsolver++",
        solver_order=2,
        use_lu_lambdas=True,
        thresholding=True,
        sample_max_value=1.0,
    )
    scheduler.set_timesteps(steps)
    return scheduler


def sampler_scheduler(
    steps: int, solver: Solver = "ddim"
) -> DDIMScheduler | DPMSolverMultistepScheduler:
    """A fresh scheduler of ``solver`` over ``steps`` network evaluations: trailing DDIM
    (:func:`ddim_scheduler`) or DPM-Solver++(2M) (:func:`dpm_scheduler`).  Fresh per
    trajectory: the multistep solver keeps the previous model outputs in its state."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    return ddim_scheduler(steps) if solver == "ddim" else dpm_scheduler(steps)


def alphas_cumprod() -> torch.Tensor:
    """ᾱ_t for t = 0..999 (float32, CPU)."""
    return ddpm_scheduler().alphas_cumprod.float()


def cosine_round_lr(lr: float, final: float, server_round: int, rounds: int) -> float:
    """Cosine decay from ``lr`` (round 1) to ``final`` (round ``rounds``), one value per
    federated round (SGDR's cosine, Loshchilov & Hutter, ICLR 2017, Eq. 5, without restarts)."""
    if rounds <= 1:
        return lr
    progress = min(1.0, max(0.0, (server_round - 1) / (rounds - 1)))
    return final + 0.5 * (lr - final) * (1 + math.cos(math.pi * progress))


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


def guided_output(
    unet: UNet2DModel,
    x_t: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor,
    guidance_scale: float = 0.0,
    null_label: int | None = None,
) -> torch.Tensor:
    """ṽ = (1 + w) v̂(x_t, y) − w v̂(x_t, ∅) (Ho & Salimans, Eq. 6); w = 0: v̂(x_t, y).

    Both predictions come from one forward pass over the doubled batch.  ``null_label`` is
    the null condition's row (:attr:`UNetSpec.null_label`); a teacher trained without
    condition dropout has none, and asking it for guidance is an error, not a silent no-op.
    """
    if guidance_scale == 0:
        return unet_output(unet, x_t, t, labels)
    if null_label is None:
        raise ValueError(
            f"guidance scale {guidance_scale}: this UNet has no null condition; train the "
            "teacher with diffusion.teacher-cond-dropout > 0 or set diffusion.guidance-scale=0"
        )
    null = torch.full_like(labels, null_label)
    both = unet_output(unet, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null]))
    conditional, unconditional = both.chunk(2)
    return conditional + guidance_scale * (conditional - unconditional)


def predict_x0(
    unet: UNet2DModel,
    x_t: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor,
    ac: torch.Tensor,
    guidance_scale: float = 0.0,
    null_label: int | None = None,
) -> torch.Tensor:
    """x̂_0 = √ᾱ_t x_t − √(1−ᾱ_t) v̂(x_t, t, y) (Salimans & Ho, Eq. 9), with v̂ guided by
    :func:`guided_output` when ``guidance_scale`` > 0."""
    a = _gather(ac, t, x_t)
    v = guided_output(unet, x_t, t, labels, guidance_scale, null_label)
    return a.sqrt() * x_t - (1 - a).sqrt() * v


def drop_conditions(
    labels: torch.Tensor, cond_dropout: float, null_label: int | None, generator: torch.Generator
) -> torch.Tensor:
    """``labels`` with each replaced by ``null_label`` with probability ``cond_dropout``
    (Ho & Salimans, Alg. 1, line 3).  Draws from ``generator`` only when ``cond_dropout`` > 0,
    so a run without guidance keeps its random stream."""
    if cond_dropout == 0:
        return labels
    if null_label is None:
        raise ValueError(
            f"cond_dropout={cond_dropout}: the UNet has no null condition (build it with "
            "UNetSpec(guidance=True))"
        )
    drop = torch.rand(labels.shape, generator=generator).to(labels.device) < cond_dropout
    return torch.where(drop, torch.full_like(labels, null_label), labels)


def denoising_loss(
    unet: UNet2DModel,
    x0: torch.Tensor,
    labels: torch.Tensor,
    ac: torch.Tensor,
    generator: torch.Generator,
    t: torch.Tensor | None = None,
    cond_dropout: float = 0.0,
    null_label: int | None = None,
    min_snr_gamma: float = 0.0,
) -> torch.Tensor:
    """E_{t, ε} ||v̂(x_t, t, y) − v||² (Ho et al., Eq. 14, with the v target).

    ``x0`` are padded 32x32 images; ``t`` defaults to U{0..999}.  Noise and timesteps come
    from ``generator`` (on the CPU), so the loss is reproducible on any device.  With
    ``cond_dropout`` > 0 a share of the labels is replaced by ``null_label``
    (:func:`drop_conditions`), which trains the unconditional model guidance needs.

    ``min_snr_gamma`` = γ > 0 weighs each example's v-loss by min(SNR_t, γ) / (SNR_t + 1),
    SNR_t = ᾱ_t / (1 − ᾱ_t) (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting
    Strategy", ICCV 2023, §3.4, the v-prediction form), which stops the low-noise timesteps'
    easy targets from dominating the gradient; 0 = the uniform "simple" loss.
    """
    n = x0.shape[0]
    if t is None:
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (n,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    labels = drop_conditions(labels, cond_dropout, null_label, generator)
    t = t.to(x0.device)
    x_t = add_noise(x0, noise, t, ac)
    prediction, target = unet_output(unet, x_t, t, labels), v_target(x0, noise, t, ac)
    if min_snr_gamma == 0:
        return F.mse_loss(prediction, target)
    a = ac.to(x0.device)[t]
    snr = a / (1 - a)
    weight = snr.clamp(max=min_snr_gamma) / (snr + 1)
    per_example = (prediction - target).pow(2).flatten(1).mean(dim=1)
    return (weight * per_example).mean()


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
    cond_dropout: float = 0.0,
    null_label: int | None = None,
    min_snr_gamma: float = 0.0,
    bf16: bool = False,
) -> TrainHistory:
    """``steps`` AdamW steps of :func:`denoising_loss` on (images in [-1, 1], labels).

    ``bf16``: the UNet's forward and backward under bfloat16 autocast (weights, AdamW and the
    loss stay float32), the usual mixed-precision training of diffusion models.

    ``cond_dropout`` / ``null_label``: classifier-free guidance training (:func:`drop_conditions`);
    ``min_snr_gamma``: Min-SNR loss weighting (:func:`denoising_loss`).

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
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = denoising_loss(
                unet,
                x0.to(device),
                y.to(device),
                ac,
                generator,
                cond_dropout=cond_dropout,
                null_label=null_label,
                min_snr_gamma=min_snr_gamma,
            )
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
    guidance_scale: float = 0.0,
    null_label: int | None = None,
    solver: Solver = "ddim",
) -> torch.Tensor:
    """Teacher samples for ``labels`` with ``steps`` DDIM steps (η = 0), as 28x28 in [-1, 1];
    guided with scale ``guidance_scale`` (:func:`guided_output`) when it is > 0.
    ``solver="dpm++2m"``: DPM-Solver++(2M) steps uniform in log-SNR (:func:`dpm_scheduler`)
    instead of DDIM, the same number of network evaluations."""
    sampler_scheduler(steps, solver)  # a bad solver fails before any work
    device = next(unet.parameters()).device
    unet.eval()
    out = []
    for chunk in labels.split(batch_size):
        scheduler = sampler_scheduler(steps, solver)
        x = torch.randn((len(chunk), unet.config.in_channels, 32, 32), generator=generator)
        x = x.to(device)
        y = chunk.to(device)
        for t in scheduler.timesteps:
            tt = torch.full((len(chunk),), int(t), device=device, dtype=torch.long)
            v = guided_output(unet, x, tt, y, guidance_scale, null_label)
            x = scheduler.step(v, int(t), x).prev_sample
        out.append(crop_images(x.clamp(-1, 1)).cpu())
    return torch.cat(out)
