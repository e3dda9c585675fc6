"""Diffusion workloads: the federated teacher, FID-digits, DMD2 and DisBack generators.

Plain PyTorch + diffusers (UNets and schedulers built from config, never downloaded), seeded by
``torch.Generator``; no Flower here.
"""

from __future__ import annotations

from fedmatch.diffusion.disback import backtrack_target, record_degradation
from fedmatch.diffusion.dmd2 import (
    DMD2History,
    DMD2Settings,
    GanHead,
    backward_simulate,
    bottleneck,
    dm_gradient,
    dm_loss,
    fake_score_loss,
    gan_critic_loss,
    gan_generator_loss,
    gan_logits,
    generate,
    student_timesteps,
    train_dmd2,
)
from fedmatch.diffusion.fid import (
    DigitFeatureNet,
    FIDScorer,
    cached_feature_net,
    frechet_distance,
    precision_recall,
)
from fedmatch.diffusion.teacher import (
    alphas_cumprod,
    ddim_sample,
    denoising_loss,
    predict_x0,
    train_denoiser,
)
from fedmatch.diffusion.unet import UNetSpec, build_unet, crop_images, pad_images

__all__ = [
    "DMD2History",
    "DMD2Settings",
    "DigitFeatureNet",
    "FIDScorer",
    "GanHead",
    "UNetSpec",
    "alphas_cumprod",
    "backtrack_target",
    "backward_simulate",
    "bottleneck",
    "build_unet",
    "cached_feature_net",
    "crop_images",
    "ddim_sample",
    "denoising_loss",
    "dm_gradient",
    "dm_loss",
    "fake_score_loss",
    "frechet_distance",
    "gan_critic_loss",
    "gan_generator_loss",
    "gan_logits",
    "generate",
    "pad_images",
    "precision_recall",
    "predict_x0",
    "record_degradation",
    "student_timesteps",
    "train_denoiser",
    "train_dmd2",
]
