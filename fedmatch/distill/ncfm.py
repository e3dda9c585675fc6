"""Neural Characteristic Function Matching (NCFM).

Wang et al., "Dataset Distillation with Neural Characteristic Function: A Minmax Perspective",
CVPR 2025 (arXiv 2502.20653; https://github.com/gszfwsb/NCFM).

The characteristic function (CF) of features f(x) is Φ_x(t) = E[exp(j⟨t, f(x)⟩)], estimated by
the sample mean of cos⟨t, f⟩ + j·sin⟨t, f⟩.  With |Φ| its amplitude and a its phase, the
discrepancy between real and synthetic features at frequency t splits into (Sec. 3.2)

    amplitude  (|Φ_x(t)| − |Φ_x̃(t)|)²
    phase      2 |Φ_x(t)| |Φ_x̃(t)| (1 − cos(a_x(t) − a_x̃(t)))

(their sum is |Φ_x(t) − Φ_x̃(t)|²), and the neural characteristic function discrepancy (NCFD,
Eq. 8) averages over frequencies t ~ F_T

    NCFD = E_t sqrt( α · amplitude(t) + (1 − α) · phase(t) ).

As in the code, features are L2-normalised first and the loss is scaled by 300; the code's two
weights (``alpha_for_loss``, ``beta_for_loss``, both 0.5) are α and 1 − α here.

F_T comes from a sampling network ψ trained to *maximise* NCFD while the synthetic images
minimise it (the min-max of Eq. 9).  Following the paper, F_T is a scale mixture of zero-mean
Gaussians: ψ maps noise to ``num_frequencies / 16`` scale vectors σ_k (the code's ``SampleNet``:
three Linear+BatchNorm1d layers with LeakyReLU(0.2), LeakyReLU(0.2), Tanh), and each σ_k scales
16 fresh Gaussian draws, t = σ_k ⊙ z.  (The released ``SampleNet`` returns σ_k itself, so it
yields only ``t_batchsize / 16`` = 4 distinct frequency vectors.)

The released min-max update cancels to zero: it calls ``loss.backward()`` and, after the image
step, ``(-loss).backward()``, so ψ's accumulated gradient is g − g = 0 and ψ never moves.  Here
one ``torch.autograd.grad`` call returns the image gradient and ψ's gradient as separate
tensors; the images descend and ψ ascends (:func:`minmax_step`).

Feature network: with ``feature_nets`` (:mod:`fedmatch.distill.feature_nets`) every step
embeds with the paper's blend of an initial and a trained ConvNet; without it (the cheap
default), with a freshly initialised ConvNet every step, as in DM.

Calibration (``calibration_weight`` > 0, needs ``feature_nets``): after each matching step the
images take one more step on ``w · CE(f_final(DSA(S)), y)``, the cross-entropy of one fully
trained network of the pool on the augmented synthetic set (the code's ``compute_calib_loss``,
``iter_calib`` 1, ``calib_weight`` 1, through the same image optimiser).  Without it the
objective is the pure min-max of the paper's Table 5.

Image steps: by default all classes share one image step per iteration; ``step_per_class``
steps once per class as the code does (C Adam steps per iteration, the other classes moving by
momentum), from one backward pass.  Multi-formation (the paper's ρ = 2, ``factor``) is available but
off by default (factor 1), so that the default run matches DM's pixel-for-pixel set.
Images are clamped to the data range after each step, as the code clamps to [0, 1].
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fedmatch.distill.common import (
    DM_NET,
    DistillHistory,
    InitMode,
    RealSampler,
    Stopwatch,
    check_dataset,
    convnet_for,
    draw_seed,
    measure_peak_memory,
)
from fedmatch.distill.dsa import DIGIT_STRATEGY, sample_dsa
from fedmatch.distill.feature_nets import FeatureNetPool
from fedmatch.distill.multiformation import (
    check_factor,
    decode,
    decode_images,
    decode_labels,
    init_stored,
)
from fedmatch.distill.ncfm_minmax import (
    FREQUENCY_REPEAT,
    FrequencySampler,
    minmax_step,
    step_rows_in_turn,
)

log = logging.getLogger(__name__)

__all__ = [
    "FREQUENCY_REPEAT",
    "NCFM_LOSS_SCALE",
    "FrequencySampler",
    "characteristic_function",
    "distill_ncfm",
    "minmax_step",
    "ncfd",
    "ncfd_per_class",
    "step_rows_in_turn",
]

NCFM_LOSS_SCALE = 300.0
_EPS = 1e-12


def characteristic_function(
    features: torch.Tensor, freqs: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class empirical CF at each frequency: real and imaginary parts (C, F), counts (C,)."""
    phase = features @ freqs.t()  # (N, F): ⟨t, f(x)⟩
    counts = torch.bincount(labels, minlength=num_classes)
    denom = counts.clamp(min=1).to(phase.dtype).unsqueeze(1)
    zeros = phase.new_zeros(num_classes, phase.shape[1])
    real = zeros.index_add(0, labels, torch.cos(phase)) / denom
    imag = zeros.index_add(0, labels, torch.sin(phase)) / denom
    return real, imag, counts


def _discrepancy(
    real_r: torch.Tensor,
    imag_r: torch.Tensor,
    real_s: torch.Tensor,
    imag_s: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """sqrt(α·amplitude + (1 − α)·phase) at every frequency (Eq. 8 before the expectation)."""
    norm_r = torch.sqrt(real_r**2 + imag_r**2 + _EPS)
    norm_s = torch.sqrt(real_s**2 + imag_s**2 + _EPS)
    amplitude = (norm_r - norm_s) ** 2
    # phase = 2(|Φ_r||Φ_s| − Re Φ_r·conj Φ_s) = |Φ_r − Φ_s|² − amplitude.  The difference form
    # is exactly 0 for identical sets; the product form leaves float32 rounding (~1e-7) that
    # the square root would blow up to ~1e-4.
    difference = (real_r - real_s) ** 2 + (imag_r - imag_s) ** 2
    phase = (difference - amplitude).clamp(min=0)
    return torch.sqrt((alpha * amplitude + (1 - alpha) * phase).clamp(min=_EPS))


def _check_alpha(alpha: float) -> None:
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha (the amplitude weight) must lie in [0, 1], got {alpha}")


def ncfd(
    feat_real: torch.Tensor, feat_syn: torch.Tensor, freqs: torch.Tensor, alpha: float = 0.5
) -> torch.Tensor:
    """NCFD between two feature sets (Eq. 8), features used as given (normalise first).

    Zero (up to a 1e-6 stabiliser) when the sets have the same empirical distribution.
    """
    _check_alpha(alpha)
    zeros_r = torch.zeros(len(feat_real), dtype=torch.long, device=feat_real.device)
    zeros_s = torch.zeros(len(feat_syn), dtype=torch.long, device=feat_syn.device)
    return ncfd_per_class(feat_real, zeros_r, feat_syn, zeros_s, freqs, alpha, 1)[0]


def ncfd_per_class(
    feat_real: torch.Tensor,
    y_real: torch.Tensor,
    feat_syn: torch.Tensor,
    y_syn: torch.Tensor,
    freqs: torch.Tensor,
    alpha: float,
    num_classes: int,
) -> torch.Tensor:
    """NCFD of every class (C,), 0 for classes missing from either set; one batched pass."""
    _check_alpha(alpha)
    real_r, imag_r, count_r = characteristic_function(feat_real, freqs, y_real, num_classes)
    real_s, imag_s, count_s = characteristic_function(feat_syn, freqs, y_syn, num_classes)
    per_freq = _discrepancy(real_r, imag_r, real_s, imag_s, alpha)
    present = ((count_r > 0) & (count_s > 0)).to(per_freq.dtype)
    return per_freq.mean(dim=1) * present


def distill_ncfm(
    images: torch.Tensor,
    labels: torch.Tensor,
    ipc: int,
    steps: int,
    *,
    num_classes: int = 10,
    alpha: float = 0.5,
    num_frequencies: int = 1024,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    sampler_lr: float = 1e-3,
    frequency_scale: float = 1.0,
    batch_real: int = 256,
    init: InitMode = "real",
    net: Mapping[str, Any] = DM_NET,
    dsa_strategy: str = DIGIT_STRATEGY,
    loss_scale: float = NCFM_LOSS_SCALE,
    clamp: tuple[float, float] | None = (-1.0, 1.0),
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    log_every: int = 0,
    feature_nets: FeatureNetPool | None = None,
    calibration_weight: float = 0.0,
    factor: int = 1,
    step_per_class: bool = False,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, DistillHistory]:
    """Distil ``(images, labels)`` to ``ipc`` images per class with NCFM's min-max.

    Images: AdamW (lr 0.01, weight decay 5e-4, the released configs).  ψ: SGD at
    ``sampler_lr`` (1e-3 in the code), by gradient *ascent*; ``sampler_lr=0`` turns ψ off and
    draws t ~ N(0, I) every step, as every released config does.  ``feature_nets``: embed
    with NCFM's blended pretrained networks (:mod:`fedmatch.distill.feature_nets`; the pool's
    architecture replaces ``net``); None embeds with a fresh random ConvNet every step, as DM
    (the cheap default).  ``frequency_scale`` σ multiplies every frequency, t → σ·t: the CF
    kernel between two features at distance d is E_t cos⟨t, d⟩ = exp(−σ²|d|²/2) for Gaussian
    t, so a small σ tends to mean matching (DM's objective, on normalised features) and a
    large one to matching the modes of the real features.  ``calibration_weight`` w > 0 adds
    the code's calibration step (one image step on w · CE of the pool's first trained network;
    needs ``feature_nets``).  ``factor`` f > 1: IDC's multi-formation, as the paper (ρ = 2):
    ``ipc`` stored images per class are matched, and returned, as ``ipc``·f² decoded images
    (:mod:`fedmatch.distill.multiformation`; ``init='real'`` tiles downsampled real images).
    ``step_per_class``: the images take one optimiser step per class per iteration, each on
    that class's gradient, as the released code (:func:`step_rows_in_turn`); False: one step
    for all classes.  Only classes present in ``labels`` get synthetic images.
    ``history.extra`` holds ψ's total weight change and the last calibration loss.
    ``on_step(k, stored)`` is called with k = 0 (the start) and after every step k with the
    stored images (detached, on ``device``; do not modify them): snapshots for benchmarks.
    """
    check_dataset(images, labels, num_classes)
    _check_alpha(alpha)
    if steps < 0 or num_frequencies < 1 or sampler_lr < 0:
        raise ValueError(
            "need steps >= 0, num_frequencies >= 1 and sampler_lr >= 0, got "
            f"{steps}, {num_frequencies}, {sampler_lr}"
        )
    if not frequency_scale > 0:
        raise ValueError(f"frequency_scale must be > 0, got {frequency_scale}")
    check_factor(factor, (images.shape[2], images.shape[3]))
    if calibration_weight < 0:
        raise ValueError(f"calibration_weight must be >= 0, got {calibration_weight}")
    if calibration_weight > 0 and feature_nets is None:
        raise ValueError(
            f"calibration_weight={calibration_weight} needs trained feature networks "
            "(feature_nets): the calibration loss is a trained network's cross-entropy"
        )
    device = torch.device(device)
    classes = sorted(int(c) for c in torch.unique(labels.cpu()))
    syn_init, syn_labels = init_stored(images, labels, classes, ipc, init, generator, factor)
    images, labels = images.to(device), labels.to(device)
    syn = syn_init.to(device).requires_grad_(True)
    syn_labels_dev = decode_labels(syn_labels, factor).to(device)
    image_optimizer = torch.optim.AdamW([syn], lr=lr, weight_decay=weight_decay)
    row_groups = (
        [torch.nonzero(syn_labels == c).flatten().to(device) for c in classes]
        if step_per_class
        else None
    )
    sampler_rng = RealSampler(labels, classes, batch_real)
    image_size = (images.shape[2], images.shape[3])

    if feature_nets is not None and (
        feature_nets.in_channels != images.shape[1] or feature_nets.image_size != images.shape[2]
    ):
        raise ValueError(
            f"the feature networks take {feature_nets.in_channels}-channel "
            f"{feature_nets.image_size}-px images, the data is {images.shape[1]}-channel "
            f"{images.shape[2]}-px"
        )

    def embedder(seed: int) -> nn.Module:
        if feature_nets is not None:
            # The pool draws from the run's generator (pair and blend weight); ``seed`` unused.
            return feature_nets.draw(generator, device)
        return convnet_for(images, net, num_classes=num_classes, seed=seed, device=device)

    sampler: FrequencySampler | None = None
    sampler_optimizer = None
    feature_dim = int(
        (feature_nets.new_model() if feature_nets is not None else embedder(0)).feature_dim
    )
    if sampler_lr > 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(draw_seed(generator))
            sampler = FrequencySampler(feature_dim, num_frequencies).to(device)
        sampler_optimizer = torch.optim.SGD(sampler.parameters(), lr=sampler_lr)
        start_weights = [p.detach().clone() for p in sampler.parameters()]
    final_model: nn.Module | None = None
    if calibration_weight > 0 and feature_nets is not None:
        final_model = feature_nets.trained_model(0, device)
    history = DistillHistory("ncfm")

    def clamp_images() -> None:
        if clamp is not None:
            with torch.no_grad():
                syn.clamp_(*clamp)

    if on_step is not None:
        on_step(0, syn.detach())
    with measure_peak_memory(device) as peak, Stopwatch(device) as watch:
        for step in range(steps):
            model = embedder(draw_seed(generator))
            augment = sample_dsa(dsa_strategy, generator, image_size=image_size)
            idx = sampler_rng.sample(generator).to(device)
            with torch.no_grad():
                feat_real = F.normalize(model.embed(augment(images[idx])), dim=1)
            feat_syn = F.normalize(model.embed(augment(decode_images(syn, factor))), dim=1)
            if sampler is not None:
                noise, gaussian = sampler.draw_noise(generator)
                freqs = frequency_scale * sampler(noise.to(device), gaussian.to(device))
            else:
                freqs = frequency_scale * torch.randn(
                    num_frequencies, feature_dim, generator=generator
                ).to(device)
            per_class = ncfd_per_class(
                feat_real, labels[idx], feat_syn, syn_labels_dev, freqs, alpha, num_classes
            )
            loss = loss_scale * per_class.sum()
            minmax_step(
                loss,
                syn,
                image_optimizer,
                list(sampler.parameters()) if sampler is not None else (),
                sampler_optimizer,
                row_groups,
            )
            clamp_images()
            if final_model is not None:
                calibration = calibration_weight * F.cross_entropy(
                    final_model(
                        sample_dsa(dsa_strategy, generator, image_size=image_size)(
                            decode_images(syn, factor)
                        )
                    ),
                    syn_labels_dev,
                )
                # No ψ: a plain image descent (per class too, as the code's compute_calib_loss).
                minmax_step(calibration, syn, image_optimizer, row_groups=row_groups)
                clamp_images()
                history.extra["calibration-loss"] = float(calibration.detach())
            history.losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step + 1, syn.detach())
            if log_every and (step + 1) % log_every == 0:
                log.info("NCFM step %d/%d: loss %.4f", step + 1, steps, history.losses[-1])
    history.seconds, history.cpu_seconds = watch.seconds, watch.cpu_seconds
    history.peak_memory_bytes, history.peak_memory_kind = peak.bytes, peak.kind
    if sampler is not None:
        change = sum(
            float((p.detach() - w).norm() ** 2)
            for p, w in zip(sampler.parameters(), start_weights, strict=True)
        )
        history.extra["sampler-weight-change"] = math.sqrt(change)
    if feature_nets is not None:
        history.extra["feature-nets"] = float(len(feature_nets))
    history.extra["image-steps-per-iteration"] = float(len(row_groups) if row_groups else 1)
    if factor > 1:
        history.extra["factor"] = float(factor)
        history.extra["stored-images"] = float(len(syn_labels))
    out_images, out_labels = decode(syn.detach().cpu(), syn_labels, factor)
    return out_images, out_labels, history
