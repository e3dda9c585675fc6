"""Classifier-free guidance of the diffusion teacher (Ho & Salimans 2021): null row, condition
dropout, the guided output (Eq. 6), its use as DMD2's real score and in PTQ calibration."""

from __future__ import annotations

import itertools

import pytest
import torch

from fedmatch.config import ConfigError, RunConfig
from fedmatch.diffusion.dmd2 import dm_gradient, dm_loss
from fedmatch.diffusion.teacher import (
    alphas_cumprod,
    ddim_sample,
    denoising_loss,
    drop_conditions,
    guided_output,
    predict_x0,
    train_denoiser,
)
from fedmatch.diffusion.unet import AddedDomainEmbedding, UNetSpec, build_unet, unet_output
from fedmatch.factories.diffusion import dmd2_settings, teacher_key, unet_spec
from fedmatch.quant.calibrate import CalibBatch, trajectory_batches, with_null_condition

GUIDED = UNetSpec(channels=(8, 16), guidance=True)


def perturbed_unet(spec: UNetSpec, seed: int = 0) -> torch.nn.Module:
    """A UNet whose output depends on its condition (diffusers zero-initialises conv_out)."""
    unet = build_unet(spec, seed)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 100)
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return unet.eval()


def test_spec_adds_one_null_row_and_keeps_old_cache_keys():
    assert UNetSpec(channels=(8, 16)).null_label is None
    assert "guidance" not in UNetSpec(channels=(8, 16)).to_dict()
    assert GUIDED.null_label == 10 and GUIDED.num_embeddings == 11
    assert GUIDED.to_dict()["guidance"] is True
    assert build_unet(GUIDED, 0).class_embedding.num_embeddings == 11
    conditioned = UNetSpec(channels=(8, 16), domains=3, domain_embedding="added", guidance=True)
    assert conditioned.null_label == 30
    xattn = UNetSpec(channels=(16, 32), cross_attention=True, guidance=True)
    assert build_unet(xattn, 0).tokens.num_embeddings == 12  # BOS + 10 classes + null


def test_added_domain_embedding_null_row_is_its_own():
    emb = AddedDomainEmbedding(10, 3, 4, guidance=True)
    with torch.no_grad():
        emb.null.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    out = emb(torch.tensor([23, 30]))
    assert torch.equal(out[0], emb.classes.weight[3] + emb.domains.weight[2])
    assert torch.equal(out[1], emb.null)
    plain = AddedDomainEmbedding(10, 3, 4)
    assert not hasattr(plain, "null") and plain.null_label is None


def test_guided_output_is_eq6_from_two_separate_passes():
    unet = perturbed_unet(GUIDED)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 32, 32, generator=gen)
    t = torch.tensor([999, 600, 200, 10])
    y = torch.tensor([0, 3, 7, 9])
    with torch.no_grad():
        cond = unet_output(unet, x, t, y)
        uncond = unet_output(unet, x, t, torch.full_like(y, 10))
        assert (cond - uncond).abs().max() > 1e-4  # the condition matters
        for w in (0.0, 1.5, 4.0):
            guided = guided_output(unet, x, t, y, w, GUIDED.null_label)
            torch.testing.assert_close(guided, (1 + w) * cond - w * uncond, rtol=1e-4, atol=1e-5)
        assert torch.equal(guided_output(unet, x, t, y, 0.0, None), cond)
    with pytest.raises(ValueError, match=r"no null condition.*teacher-cond-dropout"):
        guided_output(unet, x, t, y, 2.0, None)


def test_condition_dropout_rate_null_row_trains_and_zero_keeps_the_stream():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat(1000)
    dropped = drop_conditions(labels, 0.2, 10, gen)
    share = float((dropped == 10).float().mean())
    assert 0.18 < share < 0.22
    kept = dropped != 10
    assert torch.equal(dropped[kept], labels[kept])
    state = gen.get_state()
    assert drop_conditions(labels, 0.0, None, gen) is labels
    assert torch.equal(gen.get_state(), state)  # p = 0 draws nothing: old runs unchanged
    with pytest.raises(ValueError, match="no null condition"):
        drop_conditions(labels, 0.1, None, gen)

    unet = build_unet(GUIDED, 0)
    images = torch.rand(32, 3, 28, 28, generator=gen) * 2 - 1
    y = torch.randint(0, 10, (32,), generator=gen)
    before = unet.class_embedding.weight[10].clone()
    train_denoiser(
        unet, images, y, steps=3, lr=1e-2, batch_size=16, seed=0, device=torch.device("cpu"),
        cond_dropout=0.5, null_label=10,
    )  # fmt: skip
    assert not torch.equal(unet.class_embedding.weight[10], before)
    plain = build_unet(GUIDED, 0)
    train_denoiser(
        plain, images, y, steps=3, lr=1e-2, batch_size=16, seed=0, device=torch.device("cpu")
    )
    assert torch.equal(plain.class_embedding.weight[10], before)  # never dropped: untouched


def test_guided_sampling_differs_and_is_reproducible():
    unet = perturbed_unet(GUIDED)
    y = torch.arange(4)

    def draw(w: float) -> torch.Tensor:
        g = torch.Generator().manual_seed(5)
        return ddim_sample(unet, y, steps=3, generator=g, guidance_scale=w, null_label=10)

    assert torch.equal(draw(2.0), draw(2.0))
    assert (draw(2.0) - draw(0.0)).abs().max() > 1e-3


def test_dmd2_real_score_is_guided_and_fake_score_is_not():
    real, fake = perturbed_unet(GUIDED, 0), perturbed_unet(GUIDED, 1)
    ac = alphas_cumprod()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([1, 2, 3])
    _, grad = dm_loss(
        x, real, fake, y, ac, torch.Generator().manual_seed(3), real_guidance=3.0, null_label=10
    )
    # The same draws by hand: t, then the noise, from the same generator.
    rng = torch.Generator().manual_seed(3)
    t = torch.randint(20, 981, (3,), generator=rng)
    noise = torch.randn(x.shape, generator=rng)
    a = ac[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x + (1 - a).sqrt() * noise
    with torch.no_grad():
        x0_real = predict_x0(real, x_t, t, y, ac, 3.0, 10)
        x0_fake = predict_x0(fake, x_t, t, y, ac)
    torch.testing.assert_close(grad, dm_gradient(x, x0_real, x0_fake), rtol=1e-4, atol=1e-5)
    _, unguided = dm_loss(x, real, fake, y, ac, torch.Generator().manual_seed(3))
    assert (grad - unguided).abs().max() > 1e-4


def test_run_config_keys_validate_and_reach_spec_key_and_dmd2():
    base = {"diffusion.unet-channels": "8,16"}
    plain = RunConfig.from_flower(base)
    guided = RunConfig.from_flower(
        {**base, "diffusion.teacher-cond-dropout": 0.1, "diffusion.guidance-scale": 2.0}
    )
    assert unet_spec(plain).null_label is None and unet_spec(guided).null_label == 10
    assert teacher_key(plain, 2, 2) != teacher_key(guided, 2, 2)
    dropout_only = RunConfig.from_flower({**base, "diffusion.teacher-cond-dropout": 0.2})
    assert teacher_key(guided, 2, 2) != teacher_key(dropout_only, 2, 2)
    # The guidance scale is a sampling setting: the teacher it samples is the same.
    assert teacher_key(guided, 2, 2) == teacher_key(
        RunConfig.from_flower({**base, "diffusion.teacher-cond-dropout": 0.1}), 2, 2
    )
    settings = dmd2_settings(guided)
    assert settings.real_guidance == 2.0 and settings.null_label == 10
    with pytest.raises(ConfigError, match=r"guidance-scale.*teacher-cond-dropout"):
        RunConfig.from_flower({**base, "diffusion.guidance-scale": 2.0})
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="teacher-cond-dropout"):
            RunConfig.from_flower({**base, "diffusion.teacher-cond-dropout": bad})


def test_calibration_follows_the_guided_trajectory_and_sees_the_null_pass():
    unet = perturbed_unet(GUIDED)
    y = torch.tensor([0, 5])

    def first_steps(w: float) -> list[CalibBatch]:
        batches, _ = trajectory_batches(
            unet, y, steps=3, generator=torch.Generator().manual_seed(4),
            guidance_scale=w, null_label=10,
        )  # fmt: skip
        return batches

    guided, plain = first_steps(2.0), first_steps(0.0)
    assert torch.equal(guided[0].x, plain[0].x)  # the same noise
    assert (guided[1].x - plain[1].x).abs().max() > 1e-4  # a guided step after it
    doubled = with_null_condition(guided, 10)
    assert doubled[1].labels.tolist() == [0, 5, 10, 10]
    assert torch.equal(doubled[1].x, torch.cat([guided[1].x, guided[1].x]))


def test_min_snr_weighting_matches_hand_computed_weights():
    unet = perturbed_unet(UNetSpec(channels=(8, 16)))
    ac = alphas_cumprod()
    x0 = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(6)) * 2 - 1
    y, t = torch.tensor([1, 2, 3]), torch.tensor([5, 400, 990])
    with torch.no_grad():
        weighted = denoising_loss(unet, x0, y, ac, torch.Generator().manual_seed(7), t, 0.0,
                                  None, 5.0)  # fmt: skip
        plain = denoising_loss(unet, x0, y, ac, torch.Generator().manual_seed(7), t)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
        a = ac[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        err = (unet_output(unet, x_t, t, y) - (a.sqrt() * noise - (1 - a).sqrt() * x0)) ** 2
        per_example = err.flatten(1).mean(dim=1)
    snr = ac[t] / (1 - ac[t])
    weights = torch.minimum(snr, torch.tensor(5.0)) / (snr + 1)
    # t = 5: SNR ≈ 400, weight 5/401; t = 990: SNR < 1e-4, weight = SNR / (SNR + 1) ≈ SNR
    assert weights[0] < 0.02 and weights[2] < 1e-3
    torch.testing.assert_close(weighted, (weights * per_example).mean(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(plain, per_example.mean(), rtol=1e-5, atol=1e-7)


def test_teacher_lr_schedule_over_rounds_key_and_client_check():
    from clients.generator import _round_lr
    from fedmatch.factories.diffusion import teacher_round_lr

    base = {"diffusion.unet-channels": "8,16", "diffusion.teacher-lr": 2e-3}
    constant = RunConfig.from_flower(base)
    cosine = RunConfig.from_flower({**base, "diffusion.teacher-lr-final": 1e-4})
    assert [teacher_round_lr(constant, r, 5) for r in (1, 3, 5)] == [2e-3] * 3
    lrs = [teacher_round_lr(cosine, r, 5) for r in range(1, 6)]
    assert lrs[0] == pytest.approx(2e-3) and lrs[-1] == pytest.approx(1e-4)
    assert lrs[2] == pytest.approx((2e-3 + 1e-4) / 2)  # cos(π/2) = 0: the midpoint
    assert all(a > b for a, b in itertools.pairwise(lrs))
    assert teacher_key(constant, 5, 2) != teacher_key(cosine, 5, 2)

    class Job:
        def __init__(self, config):
            self.config = config

    assert _round_lr(Job({}), constant) == 2e-3
    assert _round_lr(Job({"teacher-lr": 5e-4}), constant) == 5e-4
    for bad in (0.0, -1.0, float("nan"), float("inf"), 1e9, True, "0.1"):
        with pytest.raises(ValueError, match=r"'teacher-lr'.*from the server"):
            _round_lr(Job({"teacher-lr": bad}), constant)


def test_teacher_cpu_preset_is_a_valid_guided_five_domain_teacher():
    import tomllib
    from pathlib import Path

    from fedmatch.params import DiffusionParams

    preset = Path(__file__).resolve().parents[1] / "presets" / "teacher-cpu.toml"
    cfg = RunConfig.from_flower(tomllib.loads(preset.read_text()))
    params = cfg.params(DiffusionParams)
    assert cfg.strategy == "diffusion-teacher" and cfg.domains == "all"
    spec = unet_spec(cfg)
    assert spec.domains == 5 and spec.domain_embedding == "added" and spec.null_label == 50
    assert params.guidance_scale > 0 and params.teacher_lr_final < params.teacher_lr
    assert cfg.num_server_rounds % params.eval_every == 0  # the last round is scored anyway
    # the measured schedule: 6,400 steps per client (RESULTS, "at 6,400 steps per client")
    assert cfg.num_server_rounds * params.teacher_steps == 6400 and params.teacher_bf16
