"""The diffusion math: teacher, DMD2 losses and backward simulation, DisBack, FID."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from fedmatch.diffusion.disback import backtrack_target, record_degradation
from fedmatch.diffusion.dmd2 import (
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
    generate_padded,
    student_timesteps,
    train_dmd2,
)
from fedmatch.diffusion.fid import FIDScorer, frechet_distance, precision_recall, train_feature_net
from fedmatch.diffusion.teacher import (
    alphas_cumprod,
    ddim_sample,
    denoising_loss,
    predict_x0,
    train_denoiser,
)
from fedmatch.diffusion.unet import (
    CrossAttentionUNet,
    UNetSpec,
    build_unet,
    pad_images,
    parse_channels,
)
from tests.flower_harness import make_config

TINY = UNetSpec(channels=(8, 16))
TINY_XATTN = UNetSpec(channels=(8, 16), cross_attention=True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def toy_digits(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-dependent blobs in [-1, 1]: a bright square whose position encodes the label."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.full((n, 3, 28, 28), -1.0)
    for i, y in enumerate(labels.tolist()):
        r, c = 4 + 2 * (y // 5) * 5, 2 + 5 * (y % 5)
        images[i, :, r : r + 8, c : c + 5] = 1.0
    return images + 0.05 * torch.randn(images.shape, generator=g), labels


# ----------------------------------------------------------------- UNet and teacher


def test_unet_spec_errors_name_the_value():
    with pytest.raises(ValueError, match=r"'12,24'.*GroupNorm"):
        parse_channels("12,24")
    with pytest.raises(ValueError, match="levels"):
        UNetSpec(channels=(8, 8, 8, 8, 8)).validate()
    with pytest.raises(ValueError, match="comma-separated"):
        parse_channels("8;16")
    assert parse_channels("8,16,16") == (8, 16, 16)


def test_unet_spec_width_error_mentions_widths():
    with pytest.raises(ValueError, match=r"\[12, 20\]"):
        UNetSpec(channels=(12, 20)).validate()


def test_teacher_ddpm_loss_falls_and_ddim_sampling_is_seeded():
    images, labels = toy_digits(64)
    unet = build_unet(TINY, seed=0)
    ac = alphas_cumprod()
    x0 = pad_images(images[:32])

    def held_out_loss() -> float:
        with torch.no_grad():
            g = torch.Generator().manual_seed(123)
            return float(denoising_loss(unet, x0, labels[:32], ac, g))

    before = held_out_loss()
    history = train_denoiser(
        unet, images, labels, steps=40, lr=3e-3, batch_size=16, seed=1, device=torch.device("cpu")
    )
    assert history.steps == 40
    assert held_out_loss() < 0.7 * before
    samples = ddim_sample(
        unet, torch.arange(10), steps=3, generator=torch.Generator().manual_seed(5)
    )
    again = ddim_sample(unet, torch.arange(10), steps=3, generator=torch.Generator().manual_seed(5))
    assert samples.shape == (10, 3, 28, 28)
    assert samples.min() >= -1 and samples.max() <= 1
    assert torch.equal(samples, again)


def _xattn_out(unet: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    x = torch.randn((len(labels), 3, 32, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return unet(x, torch.full((len(labels),), 500), class_labels=labels).sample


def test_cross_attention_unet_is_seeded_and_called_like_the_plain_unet():
    from diffusers import UNet2DModel

    assert isinstance(build_unet(TINY, 0), UNet2DModel)  # the default is unchanged
    unet = build_unet(TINY_XATTN, seed=0)
    assert isinstance(unet, CrossAttentionUNet)
    labels = torch.arange(4)
    out = _xattn_out(unet, labels)
    assert out.shape == (4, 3, 32, 32) and unet.config.in_channels == 3
    assert torch.equal(out, _xattn_out(build_unet(TINY_XATTN, seed=0), labels))
    assert not torch.allclose(out, _xattn_out(build_unet(TINY_XATTN, seed=1), labels))
    # the prompt is [BOS, label]: two tokens of the last width
    assert unet.prompt(labels).shape == (4, 2, 16)
    attn2 = [n for n, _ in unet.named_modules() if n.endswith("attn2")]
    assert any(n.startswith("unet.mid_block") for n in attn2)
    assert any(n.startswith("unet.down_blocks.1") for n in attn2)
    assert not any(n.startswith("unet.down_blocks.0") for n in attn2)  # 32x32: no attention
    # DMD2's GAN head hooks the mid block exactly as on the plain UNet
    features = bottleneck(unet, torch.randn(4, 3, 32, 32), torch.full((4,), 10), labels)
    assert features.shape == (4, 16, 16, 16) and GanHead(16)(features).shape == (4,)
    assert not unet.mid_block._forward_hooks
    rng = torch.Generator().manual_seed(1)
    samples = ddim_sample(unet, torch.arange(3), steps=2, generator=rng)
    assert samples.shape == (3, 3, 28, 28)


def test_cross_attention_output_depends_on_the_label_tokens():
    unet = build_unet(TINY_XATTN, seed=0).eval()
    labels = torch.tensor([3, 5])
    before = _xattn_out(unet, labels)
    with torch.no_grad():
        unet.tokens.weight[3 + 1] += 1.0  # only label 3's token (row 0 is BOS)
    after = _xattn_out(unet, labels)
    assert not torch.allclose(after[0], before[0], atol=1e-4)  # label 3 changed
    assert torch.equal(after[1], before[1])  # label 5 did not
    with torch.no_grad():
        unet.tokens.weight[0] += 1.0  # BOS: every prompt
    assert not torch.allclose(_xattn_out(unet, labels)[1], before[1], atol=1e-4)
    # the table is learned: the denoising loss reaches the rows of the labels it saw
    loss = denoising_loss(
        unet, torch.randn(2, 3, 32, 32), labels, alphas_cumprod(), torch.Generator().manual_seed(0)
    )
    loss.backward()
    grad = unet.tokens.weight.grad.abs().sum(dim=1)
    assert float(grad[0]) > 0 and float(grad[4]) > 0 and float(grad[6]) > 0
    assert float(grad[1]) == 0  # label 0 was not in the batch


def test_cross_attention_teacher_checkpoint_round_trip_and_cache_key(tmp_path):
    from fedmatch.factories.diffusion import load_teacher, save_teacher, teacher_key, unet_spec

    # the default spec's dict (saved with, and hashed into, cached teachers) has no new key
    assert "cross_attention" not in UNetSpec().to_dict()
    assert TINY_XATTN.to_dict()["cross_attention"] is True
    plain = make_config(unet_channels="8,16")
    xattn = make_config(unet_channels="8,16", unet_cross_attention=True)
    assert unet_spec(xattn) == TINY_XATTN
    assert teacher_key(plain, 1, 2) != teacher_key(xattn, 1, 2)
    unet = build_unet(TINY_XATTN, seed=3).eval()
    with torch.no_grad():
        unet.tokens.weight.mul_(2.0)  # not what a fresh build_unet(spec, 0) holds
    path = tmp_path / "teacher.pt"
    save_teacher(path, unet, TINY_XATTN, {})
    loaded = load_teacher(path, TINY_XATTN)
    labels = torch.arange(4)
    assert torch.equal(_xattn_out(loaded, labels), _xattn_out(unet, labels))
    with pytest.raises(ValueError, match="unet-cross-attention"):
        load_teacher(path, TINY)


def test_cross_attention_head_width_is_validated():
    with pytest.raises(ValueError, match=r"width 24 .* 16 channels per attention head"):
        UNetSpec(channels=(8, 24), cross_attention=True).validate()
    UNetSpec(channels=(8, 24)).validate()  # no attention heads without cross-attention
    UNetSpec(channels=(32,), cross_attention=True).validate()


# ----------------------------------------------------------------- DMD2


def test_dm_gradient_is_zero_when_real_and_fake_scores_agree():
    real = build_unet(TINY, seed=0)
    fake = copy.deepcopy(real)  # the fake score equals the real score
    generator = copy.deepcopy(real)
    ac = alphas_cumprod()
    labels = torch.arange(8)
    rng = torch.Generator().manual_seed(0)
    x_t, t = backward_simulate(generator, labels, 0, [999], ac, rng)
    x = predict_x0(generator, x_t, t, labels, ac)
    loss, grad = dm_loss(x, real, fake, labels, ac, rng)
    assert float(grad.abs().max()) == 0.0
    loss.backward()
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in generator.parameters())
    # Scores that disagree give a non-zero gradient that reaches the generator.
    generator.zero_grad()
    other = build_unet(TINY, seed=1)
    x = predict_x0(generator, x_t, t, labels, ac)
    loss, grad = dm_loss(x, real, other, labels, ac, rng)
    assert float(grad.abs().max()) > 0
    loss.backward()
    assert max(float(p.grad.abs().max()) for p in generator.parameters()) > 0


def test_dm_gradient_formula_normalises_per_sample():
    x = torch.zeros(2, 1, 2, 2)
    x0_real = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    x0_fake = x0_real + 1.0
    grad = dm_gradient(x, x0_real, x0_fake)
    # (fake - real) / mean|x - real| = 1/1 for the first sample, 1/2 for the second.
    assert torch.allclose(grad[0], torch.ones(1, 2, 2))
    assert torch.allclose(grad[1], torch.full((1, 2, 2), 0.5))
    # x equal to the real x̂_0 divides by zero; the gradient is then 0, not NaN.
    assert torch.equal(dm_gradient(x, torch.zeros_like(x), x0_fake), torch.zeros_like(x))


def test_fake_score_loss_falls_on_a_fixed_generator():
    generator = build_unet(TINY, seed=0).eval().requires_grad_(False)
    fake = build_unet(TINY, seed=1)
    ac = alphas_cumprod()
    labels = torch.arange(16) % 10
    samples = generate_padded(generator, labels, num_steps=1, rng=torch.Generator().manual_seed(2))

    def held_out() -> float:
        with torch.no_grad():
            return float(
                fake_score_loss(fake, samples, labels, ac, torch.Generator().manual_seed(9))
            )

    before = held_out()
    optimizer = torch.optim.AdamW(fake.parameters(), lr=3e-3)
    rng = torch.Generator().manual_seed(3)
    for _ in range(30):
        x = generate_padded(generator, labels, num_steps=1, rng=rng)
        loss = fake_score_loss(fake, x, labels, ac, rng)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert held_out() < 0.6 * before


class ConstantX0(nn.Module):
    """A stand-in generator whose x̂_0 is the constant ``value`` at every input."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.config = SimpleNamespace(in_channels=3)
        self.ac = alphas_cumprod()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t, class_labels=None):
        a = self.ac[t].view(-1, 1, 1, 1)
        # x0 = √a x_t − √(1−a) v  =>  v = (√a x_t − x0) / √(1−a)
        return SimpleNamespace(sample=(a.sqrt() * x_t - self.value) / (1 - a).sqrt())


def test_backward_simulation_gives_inputs_at_the_student_timesteps():
    assert student_timesteps(1) == [999]
    assert student_timesteps(4) == [999, 749, 499, 249]
    with pytest.raises(ValueError, match="generator-nfe=3"):
        student_timesteps(3)
    ac = alphas_cumprod()
    stub = ConstantX0(0.5)
    labels = torch.zeros(64, dtype=torch.long)
    timesteps = student_timesteps(4)
    for k, expected_t in enumerate(timesteps):
        x, t = backward_simulate(stub, labels, k, timesteps, ac, torch.Generator().manual_seed(k))
        assert x.shape == (64, 3, 32, 32)
        assert set(t.tolist()) == {expected_t}
        if k == 0:
            # Pure noise: N(0, 1).
            assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1) < 0.02
        else:
            # Re-noised x̂_0 of the previous step: √ᾱ_{t_k}·0.5 + √(1−ᾱ_{t_k})·ε.
            a = float(ac[expected_t])
            assert abs(float(x.mean()) - 0.5 * a**0.5) < 0.02
            assert abs(float(x.std()) - (1 - a) ** 0.5) < 0.02
    with pytest.raises(ValueError):
        backward_simulate(stub, labels, 4, timesteps, ac, torch.Generator())


def test_bottleneck_and_gan_head_give_one_logit_per_image():
    unet = build_unet(TINY, seed=0)
    x = torch.randn(4, 3, 32, 32)
    t = torch.full((4,), 10)
    features = bottleneck(unet, x, t, torch.arange(4))
    assert features.shape == (4, 16, 16, 16)
    assert GanHead(16)(features).shape == (4,)
    assert not unet.mid_block._forward_hooks  # the hook is removed again


HEAD_SEED = 0


def seeded_head(seed: int) -> GanHead:
    """A GAN head whose initialisation does not depend on the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GanHead(16)


def test_gan_critic_on_the_fake_bottleneck_learns_real_from_generated():
    images, labels = toy_digits(32)
    real = pad_images(images)
    generator = build_unet(TINY, seed=0).eval().requires_grad_(False)
    fake_images = generate_padded(
        generator, labels, num_steps=1, rng=torch.Generator().manual_seed(1)
    )
    fake_unet, head = build_unet(TINY, seed=1), seeded_head(HEAD_SEED)
    ac = alphas_cumprod()

    def loss(rng: torch.Generator) -> torch.Tensor:
        return gan_critic_loss(
            gan_logits(fake_unet, head, real, labels, ac, rng),
            gan_logits(fake_unet, head, fake_images, labels, ac, rng),
        )

    with torch.no_grad():
        before = float(loss(torch.Generator().manual_seed(5)))
    params = [*fake_unet.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    rng = torch.Generator().manual_seed(2)
    for _ in range(30):
        value = loss(rng)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(loss(torch.Generator().manual_seed(5)))
    assert after < 0.8 * before, (before, after)
    # The generator's GAN loss reaches the generator through the frozen critic.
    fake_unet.requires_grad_(False)
    head.requires_grad_(False)
    g = build_unet(TINY, seed=0)
    noise = torch.randn((4, 3, 32, 32), generator=torch.Generator().manual_seed(3))
    x = predict_x0(g, noise, torch.full((4,), 999), labels[:4], ac)
    gan_generator_loss(gan_logits(fake_unet, head, x, labels[:4], ac, rng)).backward()
    assert max(float(p.grad.abs().max()) for p in g.parameters() if p.grad is not None) > 0


def test_dmd2_local_training_runs_ttur_with_gan_and_multistep():
    images, labels = toy_digits(32)
    teacher = build_unet(TINY, seed=0)
    generator, fake = copy.deepcopy(teacher), copy.deepcopy(teacher)
    head = seeded_head(0)
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    settings = DMD2Settings(generator_steps=3, critic_steps=2, batch_size=8, nfe=4, lr=1e-3)
    history = train_dmd2(
        generator,
        fake,
        head,
        teacher,
        images,
        labels,
        settings,
        seed=0,
        device=torch.device("cpu"),
    )
    assert len(history.dm_losses) == 3 and len(history.gan_generator_losses) == 3
    assert len(history.fake_losses) == 6 and len(history.gan_critic_losses) == 6
    assert set(history.simulated_steps) <= {999, 749, 499, 249}
    assert any(not torch.equal(before[k], v) for k, v in generator.state_dict().items())
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    samples = generate(
        generator, torch.arange(10), num_steps=4, rng=torch.Generator().manual_seed(0)
    )
    assert samples.shape == (10, 3, 28, 28) and torch.isfinite(samples).all()


# ----------------------------------------------------------------- DisBack


def test_backtrack_schedule_visits_every_node_in_reverse_and_ends_at_the_teacher():
    targets = [backtrack_target(4, step, 20) for step in range(20)]
    assert targets[0] == 3 and targets[-1] == 0
    assert targets == sorted(targets, reverse=True)
    assert [targets.count(i) for i in range(4)] == [5, 5, 5, 5]
    assert backtrack_target(4, 100, 20) == 0
    assert [backtrack_target(1, s, 3) for s in range(3)] == [0, 0, 0]


def test_backtrack_controller_schedule_and_convergence_switching():
    from fedmatch.diffusion.disback import BacktrackController

    scheduled = BacktrackController(3, 6)
    assert [scheduled.target(r) for r in range(1, 7)] == [2, 2, 1, 1, 0, 0]
    ctl = BacktrackController(3, 10, mode="converged")
    targets = []
    # Falling norms keep the target; a plateau (round 3) moves it back one node.
    for r, norm in enumerate([1.0, 0.8, 0.8, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01], start=1):
        targets.append(ctl.target(r))
        ctl.observe(r, norm)
    assert targets[:4] == [2, 2, 2, 1]
    assert targets[-1] == 0 and targets == sorted(targets, reverse=True)
    # Never converging: forced moves still end at the teacher in the last round.
    stuck = BacktrackController(4, 5, mode="converged")
    seen = []
    for r in range(1, 6):
        seen.append(stuck.target(r))
        stuck.observe(r, 1.0 / r)
    assert seen[-1] == 0
    with pytest.raises(ValueError, match="disback-switch"):
        BacktrackController(2, 2, mode="sometimes")


def test_degradation_path_starts_at_the_teacher_and_moves_towards_the_generator():
    teacher = build_unet(TINY, seed=0)
    generator0 = build_unet(TINY, seed=1)  # a generator whose distribution differs
    path, _ = record_degradation(
        teacher,
        generator0,
        steps=24,
        num_nodes=3,
        lr=3e-3,
        batch_size=8,
        nfe=1,
        seed=0,
        device=torch.device("cpu"),
    )
    assert len(path) == 4
    assert all(torch.equal(path[0][k], v) for k, v in teacher.state_dict().items())
    ac = alphas_cumprod()
    labels = torch.arange(16) % 10
    x = generate_padded(generator0, labels, num_steps=1, rng=torch.Generator().manual_seed(7))

    def loss_of(state) -> float:
        net = build_unet(TINY, seed=0)
        net.load_state_dict(state, strict=True)
        with torch.no_grad():
            return float(denoising_loss(net, x, labels, ac, torch.Generator().manual_seed(8)))

    losses = [loss_of(state) for state in path]
    assert losses[-1] < 0.7 * losses[0], losses
    with pytest.raises(ValueError, match="disback-nodes"):
        record_degradation(
            teacher,
            generator0,
            steps=2,
            num_nodes=3,
            lr=1e-3,
            batch_size=2,
            nfe=1,
            seed=0,
            device=torch.device("cpu"),
        )


# ----------------------------------------------------------------- FID


class Flatten(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x):
        return x.flatten(1).double()


def test_torchmetrics_fid_with_custom_features_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    d, n = 4, 20000
    mu1, mu2 = torch.zeros(d), torch.tensor([1.0, -0.5, 0.0, 2.0])
    a = torch.randn(d, d, generator=g) * 0.5
    cov2 = a @ a.T + torch.eye(d) * 0.5
    real = torch.randn(n, d, generator=g).view(n, 1, 1, d) + mu1.view(1, 1, 1, d)
    fake = (torch.randn(n, d, generator=g) @ torch.linalg.cholesky(cov2).T + mu2).view(n, 1, 1, d)
    scorer = FIDScorer(Flatten(d), {"ref": real})
    fid = scorer.score(fake)["ref"]
    exact = frechet_distance(mu1.numpy(), np.eye(d), mu2.numpy(), cov2.numpy())
    assert abs(fid - exact) < 0.05 * exact
    sample = frechet_distance(
        real.flatten(1).mean(0).double().numpy(),
        np.cov(real.flatten(1).double().numpy(), rowvar=False),
        fake.flatten(1).mean(0).double().numpy(),
        np.cov(fake.flatten(1).double().numpy(), rowvar=False),
    )
    assert abs(fid - sample) < 1e-3 * max(1.0, sample)
    assert scorer.score(real)["ref"] < 1e-6


def test_score_each_reads_each_set_against_its_own_reference_and_the_floor_is_real_images():
    g = torch.Generator().manual_seed(0)
    d = 4
    shift = torch.tensor([3.0, 0.0, -2.0, 1.0]).view(1, 1, 1, d)
    a_test, a_train = (torch.randn(2000, 1, 1, d, generator=g) for _ in range(2))
    b_test, b_train = (torch.randn(2000, 1, 1, d, generator=g) + shift for _ in range(2))
    scorer = FIDScorer(Flatten(d), {"a": a_test, "b": b_test})
    fake_a, fake_b = a_train[:300] * 1.5, b_train[:300] * 1.5 + shift * 0.5
    each = scorer.score_each({"a": fake_a, "b": fake_b})
    assert each == {"a": scorer.score(fake_a)["a"], "b": scorer.score(fake_b)["b"]}
    assert scorer.score(fake_a)["b"] > 5 * each["a"]  # a's samples are far from b's reference
    # The floor: held-out real images of the same count, close to 0 and below any fake set.
    floor = scorer.real_floor("a", a_train, 300, seed=1)
    assert floor == scorer.real_floor("a", a_train, 300, seed=1)  # seeded
    assert 0 < floor < 0.25 * each["a"]
    # Fewer images, higher floor: FID is biased upwards at small counts.
    assert scorer.real_floor("a", a_train, 20, seed=1) > floor
    from fedmatch.diffusion.fid import RealFloors

    floors = RealFloors(scorer, {"a": a_train}, seed=1)
    assert floors("a", 300) == floor and floors("a", 10**6) == floors("a", 2000)  # clamped
    with pytest.raises(KeyError, match=r"no reference set \['c'\]"):
        scorer.score_each({"c": fake_a})
    with pytest.raises(ValueError, match="3000 images asked, 2000 given"):
        scorer.real_floor("a", a_train, 3000)
    with pytest.raises(ValueError, match=">= 2 images"):
        scorer.score_each({"a": fake_a[:1]})


def test_precision_recall_of_identical_and_disjoint_sets():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 8, generator=g)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    p, r = precision_recall(real, real + 100.0)
    assert (p, r) == (0.0, 0.0)


def test_trained_feature_net_separates_domains_and_noise():
    images, labels = toy_digits(256, seed=0)
    other = -images  # a second "domain": inverted colours
    x = torch.cat([images, other])
    y = torch.cat([labels, labels + 10])
    net = train_feature_net(x, y, 20, steps=60, seed=0, batch_size=64)
    test_a, _ = toy_digits(200, seed=1)
    scorer = FIDScorer(net, {"a": test_a})
    same = scorer.score(toy_digits(200, seed=2)[0])["a"]
    shifted = scorer.score(-toy_digits(200, seed=2)[0])["a"]
    noise = scorer.score(
        torch.rand(200, 3, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    )["a"]
    assert same < 0.2 * shifted and same < 0.2 * noise, (same, shifted, noise)


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (
            {"diffusion.unet-channels": "12,24"},
            ["'diffusion.unet-channels'", "'12,24'", "GroupNorm"],
        ),
        ({"diffusion.unet-channels": "8,16,16,16,16"}, ["'diffusion.unet-channels'", "levels"]),
        ({"generator.nfe": 3}, ["'generator.nfe'", "divide 1000"]),
        ({"strategy": "disback", "disback.nodes": 5, "disback.degradation-steps": 4}, ["5"]),
        ({"disback.switch": "often"}, ["'disback.switch'", "'schedule'", "'converged'"]),
        (
            {"diffusion.teacher-checkpoint": "teacher.pt"},
            ["'diffusion.teacher-checkpoint'", "absolute"],
        ),
        (
            {"diffusion.unet-cross-attention": True, "diffusion.unet-channels": "16,40"},
            [
                "unet-channels='16,40'",
                "unet-cross-attention=true",
                "width 40",
                "attention head",
            ],
        ),
    ],
)
def test_generator_config_errors_name_key_value_and_allowed(overrides, fragments):
    from fedmatch.config import ConfigError, RunConfig

    with pytest.raises(ConfigError) as err:
        RunConfig.from_flower(overrides)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_load_teacher_refuses_a_file_that_is_not_a_teacher(tmp_path):
    from fedmatch.factories.diffusion import load_teacher

    path = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2)}, path)  # a bare state dict: no spec, no state
    with pytest.raises(ValueError, match=r"weights\.pt: not a fedmatch teacher"):
        load_teacher(path, TINY)
    torch.save(torch.zeros(3), path)
    with pytest.raises(ValueError, match="not a fedmatch teacher"):
        load_teacher(path, TINY)


def test_generator_bench_reads_a_run_teacher_and_a_bare_state_dict(tmp_path):
    """The benchmarks take the teacher a ``diffusion-teacher`` run saved (spec checked)."""
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    from fedmatch.factories.diffusion import save_teacher

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from generator_bench import Bench

    bench = SimpleNamespace(spec=TINY, device=torch.device("cpu"))
    unet = build_unet(TINY, seed=5)
    run_file, bare = tmp_path / "teacher-abc.pt", tmp_path / "bare.pt"
    save_teacher(run_file, unet, TINY, {"run-dir": "x"})
    torch.save(unet.state_dict(), bare)
    for path in (run_file, bare):
        loaded = Bench.read_teacher(bench, path)
        assert all(
            torch.equal(a, b) for a, b in zip(loaded.parameters(), unet.parameters(), strict=True)
        )
    with pytest.raises(ValueError, match="UNet"):
        Bench.read_teacher(SimpleNamespace(spec=TINY_XATTN, device=bench.device), run_file)
    with pytest.raises(SystemExit, match="no such file"):
        Bench.read_teacher(bench, tmp_path / "missing.pt")


def test_backtrack_path_fraction_gives_the_path_that_share_of_the_steps():
    from fedmatch.diffusion.disback import BacktrackController

    # 0.1 of 40 rounds: nodes 2 and 1 two rounds each, then the teacher for 36 rounds.
    targets = [backtrack_target(3, step, 40, path_fraction=0.1) for step in range(40)]
    assert targets[:4] == [2, 2, 1, 1] and targets[4:] == [0] * 36
    # A fraction of (N-1)/N is the equal-stage schedule.
    equal = [backtrack_target(4, s, 20) for s in range(20)]
    assert [backtrack_target(4, s, 20, path_fraction=0.75) for s in range(20)] == equal
    with pytest.raises(ValueError, match=r"path-fraction=0.05 .* fewer than its 3 degraded"):
        backtrack_target(4, 0, 20, path_fraction=0.05)
    with pytest.raises(ValueError, match="allowed 0 <= value < 1"):
        backtrack_target(4, 0, 20, path_fraction=1.0)
    ctl = BacktrackController(3, 40, path_fraction=0.1)
    assert [ctl.target(r) for r in range(1, 6)] == [2, 2, 1, 1, 0]
    with pytest.raises(ValueError, match="needs disback-switch='schedule'"):
        BacktrackController(3, 40, mode="converged", path_fraction=0.1)


def test_disback_path_fraction_key_is_validated():
    from strategies.generators import DisBackParams

    assert DisBackParams().path_fraction == 0.0
    assert DisBackParams(path_fraction=0.1).path_fraction == 0.1
    with pytest.raises(ValueError, match=r"path.fraction"):
        DisBackParams(path_fraction=1.5)
    with pytest.raises(ValueError, match=r"needs disback\.switch = 'schedule'"):
        DisBackParams(path_fraction=0.1, switch="converged")
