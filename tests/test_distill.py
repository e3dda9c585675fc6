"""Unit tests of the distillation math (no Flower): DSA, DM, NCFM, gradient matching, evaluation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from fedmatch.distill.dm import distill_dm, dm_loss
from fedmatch.distill.dsa import (
    DIGIT_STRATEGY,
    TRANSFORM_GROUPS,
    DSAParams,
    parse_strategy,
    sample_dsa,
)
from fedmatch.distill.evaluate import (
    EvalProtocol,
    convnet_factory,
    evaluate_set,
    random_real_subset,
)
from fedmatch.distill.feature_nets import blend_states, pretrain_feature_nets
from fedmatch.distill.gradient_matching import gradient_distance, model_gradients
from fedmatch.distill.ncfm import (
    FrequencySampler,
    distill_ncfm,
    minmax_step,
    ncfd,
    ncfd_per_class,
    step_rows_in_turn,
)
from tests.flower_harness import make_config, with_values

TINY_NET = {"width": 8, "depth": 2, "norm": "instancenorm"}


# Tiny tensors: on a busy machine, thread barriers would cost more than the arithmetic.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def toy_digits(n_per_class: int = 20, classes: int = 3, seed: int = 0):
    """Class c is a bright horizontal bar at row band c on a dark 3x12x12 background."""
    g = torch.Generator().manual_seed(seed)
    images = torch.full((n_per_class * classes, 3, 12, 12), -1.0)
    images += 0.2 * torch.randn(images.shape, generator=g)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    for i, c in enumerate(labels.tolist()):
        images[i, :, 4 * c : 4 * c + 4, 2:10] = 1.0
    return images.clamp(-1, 1), labels


# --------------------------------------------------------------------------- DSA


@pytest.mark.parametrize("group", [g for g in TRANSFORM_GROUPS])
def test_dsa_is_siamese_and_differentiable(group):
    g = torch.Generator().manual_seed(1)
    params = sample_dsa(group, g, image_size=(12, 12))
    assert params.transform == group
    x = torch.randn(5, 3, 12, 12)
    synthetic = x[:2].clone().requires_grad_(True)
    real_out, syn_out = params(x), params(synthetic)
    # One sampled parameter set: the same images come out the same in either batch.
    torch.testing.assert_close(real_out[:2], syn_out)
    # Differentiable with respect to the pixels, with a non-trivial gradient.
    (syn_out * torch.randn_like(syn_out)).sum().backward()
    assert synthetic.grad is not None and synthetic.grad.abs().sum() > 0
    # The same generator seed draws the same parameters; the transform changes the image
    # (flip and colour may be near-identity for one draw, so compare across several).
    again = sample_dsa(group, torch.Generator().manual_seed(1), image_size=(12, 12))
    torch.testing.assert_close(again(x), real_out)
    changed = [
        not torch.allclose(sample_dsa(group, g, image_size=(12, 12))(x), x) for _ in range(8)
    ]
    assert any(changed)


def test_dsa_mode_s_picks_one_group_per_call_and_per_sample_mode():
    g = torch.Generator().manual_seed(0)
    picked = {sample_dsa(DIGIT_STRATEGY, g).transform for _ in range(200)}
    assert picked == set(DIGIT_STRATEGY.split("_"))  # every group, never flip
    assert "flip" not in picked
    per_sample = sample_dsa("rotate", g, batch_size=4, image_size=(12, 12))
    x = torch.randn(1, 3, 12, 12).expand(4, 3, 12, 12)
    out = per_sample(x)
    assert not torch.allclose(out[0], out[1])  # each sample its own angle
    with pytest.raises(ValueError, match="drawn for 4 samples"):
        per_sample(torch.randn(3, 3, 12, 12))
    assert sample_dsa("none", g)(x) is x
    with pytest.raises(ValueError, match="'blur'"):
        parse_strategy("color_blur")


def test_dsa_crop_and_cutout_match_the_reference_semantics():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(1, 3, 1, 1) + 1
    crop = DSAParams(
        "crop", 1, (4, 4), {"shift_h": torch.tensor([1]), "shift_w": torch.tensor([-1])}
    )
    out = crop(x)[0, 0]
    # Output (i, j) reads input (i + 1, j - 1), zero outside the image.
    expected = torch.zeros(4, 4)
    expected[:3, 1:] = x[0, 0, 1:, :3]
    torch.testing.assert_close(out, expected)
    cut = DSAParams(
        "cutout", 1, (4, 4), {"offset_h": torch.tensor([0]), "offset_w": torch.tensor([4])}
    )
    # A 2x2 square centred at (0, 4): rows -1..0, cols 3..4, clipped to row 0, col 3.
    mask = (cut(x)[0, 0] == 0).nonzero().tolist()
    assert mask == [[0, 3]]


# --------------------------------------------------------------------------- DM


def test_dm_loss_equals_a_hand_computed_value():
    embed_real = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [5.0, 5.0]])
    y_real = torch.tensor([0, 0, 1, 2])  # class 2 has no synthetic image: ignored
    embed_syn = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    y_syn = torch.tensor([0, 1])
    # Class 0: real mean (2, 1), synthetic (1, 1) -> 1.  Class 1: (0, 4) vs (2, 2) -> 4 + 4.
    loss = dm_loss(embed_real, y_real, embed_syn, y_syn, num_classes=4)
    assert loss.item() == pytest.approx(9.0)
    syn = embed_syn.clone().requires_grad_(True)
    dm_loss(embed_real, y_real, syn, y_syn, 4).backward()
    # d/ds ||m - s||^2 = 2 (s - m) for a class with a single synthetic embedding.
    torch.testing.assert_close(syn.grad, torch.tensor([[-2.0, 0.0], [4.0, -4.0]]))


def test_distill_dm_reduces_its_loss_and_is_seeded():
    images, labels = toy_digits()

    def run(seed: int, steps: int):
        return distill_dm(
            images,
            labels,
            ipc=2,
            steps=steps,
            batch_real=16,
            init="noise",
            net=TINY_NET,
            generator=torch.Generator().manual_seed(seed),
        )

    syn, syn_labels, history = run(0, 30)
    assert syn.shape == (6, 3, 12, 12)
    assert syn_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert history.steps == 30 and history.seconds > 0
    assert history.final_loss < 0.5 * history.initial_loss
    first, _, first_history = run(0, 3)
    again, _, again_history = run(0, 3)
    torch.testing.assert_close(again, first)
    assert again_history.losses == first_history.losses == history.losses[:3]
    other, _, _ = run(1, 3)
    assert not torch.allclose(other, first)


def test_distill_dm_only_distils_present_classes_and_inits_from_real():
    images, labels = toy_digits()
    keep = labels != 1
    syn, syn_labels, _ = distill_dm(
        images[keep],
        labels[keep],
        ipc=3,
        steps=0,
        net=TINY_NET,
        generator=torch.Generator().manual_seed(0),
    )
    assert syn_labels.tolist() == [0, 0, 0, 2, 2, 2]
    # With zero steps the set is the real initialisation: every image is a real one.
    real = images[keep]
    assert all(any(torch.equal(s, r) for r in real) for s in syn)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.1"):
        distill_dm(images, labels, 1, 1, num_classes=2, generator=torch.Generator())


# --------------------------------------------------------------------------- NCFM


def test_ncfd_is_zero_for_identical_sets_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(64, 16, generator=g), dim=1)
    freqs = torch.randn(256, 16, generator=g)
    assert ncfd(feats, feats, freqs).item() < 1e-5
    # The empirical CF does not depend on sample order.
    assert ncfd(feats, feats[torch.randperm(64, generator=g)], freqs).item() < 1e-5
    shifted = F.normalize(feats + 0.5, dim=1)
    assert ncfd(feats, shifted, freqs).item() > 0.05
    assert ncfd(feats, feats[:8], freqs).item() > 0
    # Amplitude-only and phase-only weightings are both valid discrepancies.
    for alpha in (0.0, 1.0):
        assert ncfd(feats, shifted, freqs, alpha).item() > 0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ncfd(feats, feats, freqs, alpha=1.5)


def test_ncfd_per_class_matches_the_per_set_value():
    g = torch.Generator().manual_seed(0)
    real, syn = torch.randn(30, 8, generator=g), torch.randn(9, 8, generator=g)
    y_real, y_syn = torch.arange(3).repeat(10), torch.arange(3).repeat(3)
    freqs = torch.randn(64, 8, generator=g)
    per_class = ncfd_per_class(real, y_real, syn, y_syn, freqs, 0.3, num_classes=4)
    for c in range(3):
        expected = ncfd(real[y_real == c], syn[y_syn == c], freqs, 0.3)
        torch.testing.assert_close(per_class[c], expected)
    assert per_class[3] == 0  # absent class


def test_sampling_network_ascends_the_discrepancy():
    g = torch.Generator().manual_seed(0)
    feat_real = F.normalize(torch.randn(48, 16, generator=g), dim=1)
    # "Images" here are the synthetic features themselves: the step descends in them.
    feat_syn = F.normalize(torch.randn(12, 16, generator=g) + 0.3, dim=1).requires_grad_(True)
    sampler = FrequencySampler(16, num_frequencies=64)
    before = copy.deepcopy(sampler.state_dict())
    noise, gaussian = sampler.draw_noise(g)
    fixed_real, fixed_syn = feat_real.clone(), feat_syn.detach().clone()

    def measured() -> float:
        with torch.no_grad():
            return ncfd(fixed_real, fixed_syn, sampler(noise, gaussian)).item()

    start = measured()
    image_opt = torch.optim.SGD([feat_syn], lr=0.0)  # hold the features fixed
    sampler_opt = torch.optim.SGD(sampler.parameters(), lr=0.05)
    for _ in range(10):
        loss = ncfd(feat_real, feat_syn, sampler(noise, gaussian))
        minmax_step(loss, feat_syn, image_opt, list(sampler.parameters()), sampler_opt)
    assert measured() > start * 1.05
    changed = [
        not torch.equal(before[k], v)
        for k, v in sampler.state_dict().items()
        if k.endswith("weight")
    ]
    assert all(changed)

    # The released update order (backward(loss), image step, backward(-loss)) cancels.
    probe = FrequencySampler(16, num_frequencies=64)
    loss = ncfd(feat_real, feat_syn, probe(noise, gaussian))
    loss.backward(retain_graph=True)
    (-loss).backward()
    assert all(p.grad.abs().max() < 1e-6 for p in probe.parameters())


def test_minmax_step_descends_the_images():
    g = torch.Generator().manual_seed(0)
    feat_real = F.normalize(torch.randn(48, 16, generator=g), dim=1)
    feat_syn = F.normalize(torch.randn(12, 16, generator=g) + 0.5, dim=1).requires_grad_(True)
    freqs = torch.randn(128, 16, generator=g)
    start = ncfd(feat_real, feat_syn, freqs).item()
    opt = torch.optim.SGD([feat_syn], lr=2.0)
    for _ in range(20):
        minmax_step(ncfd(feat_real, feat_syn, freqs), feat_syn, opt)
    assert ncfd(feat_real, feat_syn, freqs).item() < 0.5 * start


def test_distill_ncfm_runs_and_moves_the_sampling_network():
    images, labels = toy_digits()
    syn, syn_labels, history = distill_ncfm(
        images,
        labels,
        ipc=2,
        steps=30,
        batch_real=16,
        num_frequencies=64,
        lr=0.05,
        sampler_lr=0.01,
        init="noise",
        net=TINY_NET,
        generator=torch.Generator().manual_seed(0),
    )
    assert syn.shape == (6, 3, 12, 12) and syn_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert syn.min() >= -1 and syn.max() <= 1
    assert history.final_loss < history.initial_loss
    assert history.extra["sampler-weight-change"] > 0
    with pytest.raises(ValueError, match="num_frequencies > 16"):
        FrequencySampler(8, num_frequencies=16)
    with pytest.raises(ValueError, match="frequency_scale"):
        distill_ncfm(
            images,
            labels,
            ipc=1,
            steps=1,
            net=TINY_NET,
            frequency_scale=0.0,
            generator=torch.Generator().manual_seed(0),
        )


def test_step_rows_in_turn_equals_the_released_class_loop():
    # Reference: the code's compute_match_loss, literally: per class, the class's loss on the
    # current tensor, backward, optim_img.step().  On a fresh AdamW without weight decay the
    # rows of later classes cannot move before their own step (zero momentum), so one
    # backward pass plus masked steps must give exactly the same tensor.
    g = torch.Generator().manual_seed(0)
    start = torch.randn(6, 4, generator=g)
    target = torch.randn(6, 4, generator=g)
    groups = [torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])]

    def class_loss(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return ((x[rows] - target[rows]) ** 3).abs().sum()

    reference = start.clone().requires_grad_(True)
    ref_opt = torch.optim.AdamW([reference], lr=0.1, weight_decay=0.0)
    for rows in groups:
        ref_opt.zero_grad()
        class_loss(reference, rows).backward()
        ref_opt.step()

    ours = start.clone().requires_grad_(True)
    opt = torch.optim.AdamW([ours], lr=0.1, weight_decay=0.0)
    total = sum(class_loss(ours, rows) for rows in groups)
    minmax_step(total, ours, opt, row_groups=groups)
    assert torch.equal(ours.detach(), reference.detach())
    assert opt.state[ours]["step"].item() == 3  # three Adam steps, one per class
    assert ours.grad is None

    # On the second iteration the momentum moves every row at every class's step.
    before = ours.detach().clone()
    step_rows_in_turn(ours, torch.zeros_like(ours), opt, groups[:1])
    assert not torch.equal(ours.detach()[2:], before[2:])


def test_distill_ncfm_steps_once_per_class_when_asked():
    images, labels = toy_digits()
    common = dict(
        ipc=2,
        steps=30,
        batch_real=16,
        num_frequencies=64,
        lr=0.05,
        sampler_lr=0.0,
        init="noise",
        net=TINY_NET,
    )
    _, _, shared = distill_ncfm(
        images, labels, generator=torch.Generator().manual_seed(0), **common
    )
    syn, _, per_class = distill_ncfm(
        images, labels, generator=torch.Generator().manual_seed(0), step_per_class=True, **common
    )
    assert per_class.extra["image-steps-per-iteration"] == 3
    assert shared.extra["image-steps-per-iteration"] == 1
    assert per_class.final_loss < per_class.initial_loss
    assert per_class.losses != shared.losses
    assert syn.min() >= -1 and syn.max() <= 1


# --------------------------------------------------------------------------- gradient matching


def test_gradient_distance_zero_for_identical_positive_otherwise():
    model = convnet_factory(TINY_NET, image_size=12, num_classes=3)(0)
    images, labels = toy_digits(n_per_class=4)
    grads = model_gradients(model, images, labels)
    assert gradient_distance(grads, grads).item() == pytest.approx(0.0, abs=1e-3)
    other = model_gradients(model, images.flip(3), labels)
    assert gradient_distance(grads, other).item() > 0.1
    for metric in ("mse", "cos"):
        assert gradient_distance(grads, grads, metric).item() == pytest.approx(0.0, abs=1e-4)
        assert gradient_distance(grads, other, metric).item() > 0
    # Per output row: (1 - cos) summed; 1-D parameters contribute nothing.
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 3.0]])
    assert gradient_distance([a, torch.ones(2)], [b, -torch.ones(2)]).item() == pytest.approx(
        1.0, abs=1e-5
    )
    with pytest.raises(ValueError, match="shapes differ"):
        gradient_distance([a], [torch.ones(3, 2)])


def test_synthetic_gradients_stay_differentiable():
    model = convnet_factory(TINY_NET, image_size=12, num_classes=3)(0)
    images, labels = toy_digits(n_per_class=4)
    real = model_gradients(model, images, labels)
    syn = images[::4].clone().requires_grad_(True)
    distance = gradient_distance(model_gradients(model, syn, labels[::4], create_graph=True), real)
    distance.backward()
    assert syn.grad is not None and syn.grad.abs().sum() > 0


# --------------------------------------------------------------------------- evaluation


def test_evaluation_protocol_learns_a_separable_set():
    images, labels = toy_digits(n_per_class=10)
    test_images, test_labels = toy_digits(n_per_class=30, seed=1)
    protocol = EvalProtocol(epochs=30, lr=0.05)
    score = evaluate_set(
        images,
        labels,
        test_images,
        test_labels,
        protocol=protocol,
        seeds=[0, 1],
        model_factory=convnet_factory(TINY_NET, image_size=12, num_classes=3),
    )
    assert len(score.accuracies) == 2 and score.num_images == 30
    assert score.mean > 0.9
    again = evaluate_set(
        images,
        labels,
        test_images,
        test_labels,
        protocol=protocol,
        seeds=[1],
        model_factory=convnet_factory(TINY_NET, image_size=12, num_classes=3),
    )
    assert again.accuracies == score.accuracies[1:]  # seeded
    with pytest.raises(ValueError, match="epochs"):
        EvalProtocol(epochs=0)


def test_random_real_subset_takes_ipc_per_class():
    images, labels = toy_digits(n_per_class=5)
    sub_x, sub_y = random_real_subset(images, labels, 2, torch.Generator().manual_seed(0))
    assert sub_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert all(any(torch.equal(s, r) for r in images) for s in sub_x)
    _, all_y = random_real_subset(images, labels, 50, torch.Generator().manual_seed(0))
    assert len(all_y) == 15


# --------------------------------------------------------------------------- run config


@pytest.mark.parametrize(("method", "feature_nets"), [("dm", 0), ("ncfm", 0), ("ncfm", 1)])
def test_distill_from_config_runs_the_configured_method(method, feature_nets):
    from fedmatch.factories.distill import distill_from_config, eval_protocol, method_lr

    cfg = make_config(
        model_width=8,
        model_depth=2,
        ipc=1,
        distill_method=method,
        distill_steps=3,
        distill_batch_real=4,
        ncfm_frequencies=32,
        ncfm_feature_nets=feature_nets,
        ncfm_feature_epochs=2,
        eval_epochs=7,
        dsa_strategy="crop_scale",
    )
    images, labels = toy_digits(n_per_class=6)
    syn, syn_labels, history = distill_from_config(
        cfg, images, labels, seed=5, device=torch.device("cpu")
    )
    assert syn.shape == (3, 3, 12, 12) and syn_labels.tolist() == [0, 1, 2]
    assert history.method == method and history.steps == 3
    assert history.extra.get("feature-nets", 0) == feature_nets
    assert method_lr(cfg) == {"dm": 1.0, "ncfm": 0.01}[method]
    assert method_lr(with_values(cfg, distill_lr=0.3)) == 0.3
    assert eval_protocol(cfg) == EvalProtocol(epochs=7, dsa_strategy="crop_scale")
    again, _, _ = distill_from_config(cfg, images, labels, seed=5, device=torch.device("cpu"))
    torch.testing.assert_close(again, syn)


def test_synthetic_sets_round_trip_through_records():
    from fedmatch.distill.wire import synthetic_from_record, synthetic_record

    images, labels = toy_digits(n_per_class=2)
    back_images, back_labels = synthetic_from_record(synthetic_record(images, labels))
    torch.testing.assert_close(back_images, images)
    assert back_labels.tolist() == labels.tolist()


# --------------------------------------------------------------------------- NCFM feature nets


def test_blend_states_interpolates_floats_and_keeps_integer_buffers():
    initial = {"w": torch.tensor([0.0, 4.0]), "steps": torch.tensor(3)}
    trained = {"w": torch.tensor([2.0, 0.0]), "steps": torch.tensor(7)}
    blended = blend_states(initial, trained, 0.25)
    # 0.25 * [0, 4] + 0.75 * [2, 0] = [1.5, 1.0]
    assert torch.allclose(blended["w"], torch.tensor([1.5, 1.0]))
    assert int(blended["steps"]) == 7
    assert torch.equal(blend_states(initial, trained, 1.0)["w"], initial["w"])
    assert torch.equal(blend_states(initial, trained, 0.0)["w"], trained["w"])
    with pytest.raises(ValueError, match="keys"):
        blend_states({"w": initial["w"]}, trained, 0.5)
    with pytest.raises(ValueError, match=r"mix=1\.5"):
        blend_states(initial, trained, 1.5)


def toy_feature_nets(images, labels, count):
    """A pool of ``count`` TINY_NETs trained 30 epochs on the toy digits (train acc > 0.9)."""
    return pretrain_feature_nets(
        images,
        labels,
        count=count,
        epochs=30,
        num_classes=3,
        net=TINY_NET,
        lr=0.05,
        generator=torch.Generator().manual_seed(0),
    )


def test_feature_net_pool_trains_its_networks_and_blends_them():
    images, labels = toy_digits(n_per_class=10)
    pool = toy_feature_nets(images, labels, count=2)
    assert len(pool) == 2 and min(pool.train_accuracy) > 0.9  # chance is 1/3
    # Two networks from distinct initialisations, each moved by its training.
    assert not torch.equal(
        pool.initial[0]["features.0.weight"], pool.initial[1]["features.0.weight"]
    )
    assert not torch.equal(
        pool.initial[0]["features.0.weight"], pool.trained[0]["features.0.weight"]
    )
    first = pool.draw(torch.Generator().manual_seed(5))
    again = pool.draw(torch.Generator().manual_seed(5))
    for a, b in zip(first.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b) and not a.requires_grad  # seeded, frozen
    # Every drawn weight lies between its pair's initial and trained value.
    g = torch.Generator().manual_seed(5)
    index = int(torch.randint(0, 2, (1,), generator=g))
    drawn = first.state_dict()["features.0.weight"]
    lo = torch.minimum(
        pool.initial[index]["features.0.weight"], pool.trained[index]["features.0.weight"]
    )
    hi = torch.maximum(
        pool.initial[index]["features.0.weight"], pool.trained[index]["features.0.weight"]
    )
    assert bool(((drawn >= lo - 1e-6) & (drawn <= hi + 1e-6)).all())

    syn, _, history = distill_ncfm(
        images,
        labels,
        ipc=2,
        steps=20,
        batch_real=10,
        num_frequencies=64,
        lr=0.05,
        init="noise",
        net=TINY_NET,
        feature_nets=pool,
        generator=torch.Generator().manual_seed(0),
    )
    assert syn.shape == (6, 3, 12, 12)
    assert history.extra["feature-nets"] == 2
    assert history.final_loss < history.initial_loss
    with pytest.raises(ValueError, match="1-channel"):
        distill_ncfm(
            images[:, :1],
            labels,
            ipc=1,
            steps=1,
            net=TINY_NET,
            feature_nets=pool,
            generator=torch.Generator().manual_seed(0),
        )


def test_ncfm_calibration_makes_the_set_classifiable_by_the_trained_network():
    images, labels = toy_digits(n_per_class=10)
    pool = toy_feature_nets(images, labels, count=1)
    final = pool.trained_model(0)
    assert not any(p.requires_grad for p in final.parameters())

    def final_ce(calibration_weight: float) -> float:
        syn, syn_labels, history = distill_ncfm(
            images,
            labels,
            ipc=2,
            steps=3,
            batch_real=10,
            num_frequencies=64,
            lr=0.05,
            init="noise",
            net=TINY_NET,
            feature_nets=pool,
            calibration_weight=calibration_weight,
            dsa_strategy="none",
            generator=torch.Generator().manual_seed(0),
        )
        assert ("calibration-loss" in history.extra) == (calibration_weight > 0)
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(final(syn), syn_labels))

    # From noise, the pure min-max leaves the trained net unsure; calibration steps on its CE.
    assert final_ce(1.0) < 0.5 * final_ce(0.0)  # measured 0.19 vs 0.77
    with pytest.raises(ValueError, match="feature_nets"):
        distill_ncfm(
            images,
            labels,
            ipc=1,
            steps=1,
            net=TINY_NET,
            calibration_weight=1.0,
            generator=torch.Generator().manual_seed(0),
        )
    with pytest.raises(IndexError, match="pool of 1"):
        pool.trained_model(1)


def test_ncfm_calibration_key_needs_feature_nets():

    with pytest.raises(ValueError, match=r"ncfm-calibration.*ncfm-feature-nets"):
        make_config(distill_method="ncfm", ncfm_calibration=1.0)
    assert (
        make_config(ncfm_calibration=1.0, ncfm_feature_nets=2).tables["distill"].ncfm_calibration
        == 1.0
    )
