"""The teacher's bfloat16 autocast training (`train_denoiser(bf16=True)`)."""

from __future__ import annotations

import pytest
import torch

from fedmatch.diffusion.teacher import alphas_cumprod, denoising_loss, train_denoiser
from fedmatch.diffusion.unet import UNetSpec, build_unet, pad_images
from tests.test_guidance import perturbed_unet

SPEC = UNetSpec(channels=(8, 16))


def _loss_and_grad(unet: torch.nn.Module, bf16: bool) -> tuple[float, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    x0 = pad_images(torch.rand(16, 3, 28, 28, generator=gen) * 2 - 1)
    y = torch.randint(0, 10, (16,), generator=gen)
    unet.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = denoising_loss(unet, x0, y, alphas_cumprod(), gen)
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in unet.parameters() if p.grad is not None])
    return float(loss.detach()), grad


def test_bf16_loss_and_gradient_match_float32_within_bf16_precision():
    unet = perturbed_unet(SPEC).train()
    loss32, grad32 = _loss_and_grad(unet, bf16=False)
    loss16, grad16 = _loss_and_grad(unet, bf16=True)
    assert loss16 != loss32  # autocast really ran the network in bfloat16
    assert abs(loss16 - loss32) / loss32 < 2e-2
    cosine = torch.nn.functional.cosine_similarity(grad16, grad32, dim=0)
    assert cosine > 0.99
    assert all(p.dtype == torch.float32 for p in unet.parameters())


def _eval_loss(unet: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The denoising loss on fixed (t, noise) draws, so that two models compare exactly."""
    with torch.no_grad():
        gen = torch.Generator().manual_seed(9)
        return float(denoising_loss(unet, pad_images(images), labels, alphas_cumprod(), gen))


def test_bf16_training_keeps_float32_weights_and_learns_like_float32():
    # Two flat images per class: a denoiser learns them in a few dozen steps.
    images = (torch.arange(10).float() / 4.5 - 1).repeat_interleave(2)[:, None, None, None]
    images = images.expand(20, 3, 28, 28).contiguous()
    labels = torch.arange(10).repeat_interleave(2)
    before = _eval_loss(build_unet(SPEC, 0), images, labels)
    after, losses = {}, {}
    for bf16 in (False, True):
        unet = build_unet(SPEC, 0)
        history = train_denoiser(
            unet, images, labels, steps=25, lr=5e-3, batch_size=8, seed=1,
            device=torch.device("cpu"), bf16=bf16,
        )  # fmt: skip
        assert all(p.dtype == torch.float32 for p in unet.parameters())
        after[bf16], losses[bf16] = _eval_loss(unet, images, labels), history.losses
    assert losses[True] != losses[False]  # the bf16 run is its own run
    assert after[False] < 0.8 * before and after[True] < 0.8 * before
    assert abs(after[True] - after[False]) < 0.1 * after[False]


def test_run_config_key_reaches_the_client_round_and_the_cache_key():
    from clients.generator import teacher_settings
    from fedmatch.config import ConfigError, RunConfig
    from fedmatch.factories.diffusion import teacher_key

    plain = RunConfig.from_flower({"diffusion.unet-channels": "8,16"})
    mixed = RunConfig.from_flower(
        {"diffusion.unet-channels": "8,16", "diffusion.teacher-bf16": True}
    )
    assert teacher_settings(plain)["bf16"] is False
    assert teacher_settings(mixed)["bf16"] is True
    assert teacher_key(plain, 2, 2) != teacher_key(mixed, 2, 2)
    # Unset, the key is the one every teacher cached before it existed had.
    explicit = RunConfig.from_flower(
        {"diffusion.unet-channels": "8,16", "diffusion.teacher-bf16": False}
    )
    assert teacher_key(plain, 2, 2) == teacher_key(explicit, 2, 2)
    with pytest.raises(ConfigError, match="teacher-bf16"):
        RunConfig.from_flower({"diffusion.teacher-bf16": "sometimes"})
