"""Dataset Condensation with Distribution Matching (DM).

Zhao & Bilen, WACV 2023 (arXiv 2110.04181), ``main_DM.py`` of
https://github.com/VICO-UoE/DatasetCondensation.  Each iteration samples a freshly initialised
ConvNet ψ_ϑ (its weights are never trained) and minimises, over the synthetic set S (Eq. 4):

    L = Σ_c || mean_{x ∈ B_c^T} ψ_ϑ(A_ω(x)) − mean_{s ∈ S_c} ψ_ϑ(A_ω(s)) ||²

with A_ω one DSA augmentation shared by real and synthetic images and B_c^T a random batch of
real images of class c: first-moment (linear-kernel MMD) matching of per-class mean embeddings,
with no inner training and no bi-level optimisation.  Defaults follow the code: SGD on the
pixels with lr 1.0 and momentum 0.5, 256 real images per class, init from real images.

Batched over classes.  The reference code loops over classes with one forward pass each (its
BatchNorm branch concatenates the classes).  Here every class goes through the network in one
pass for the real images and one pass for the synthetic images, and :func:`dm_loss` takes the
per-class means with a scatter-add; with the default instance-norm ConvNet each sample's
embedding does not depend on the rest of its batch, so this equals the class loop exactly.
The real images go through without autograd: a single concatenated real+synthetic pass would
also back-propagate through all C·256 real images (about twice the cost, for gradients that
are thrown away).  With a BatchNorm network the batch statistics of a pass mix the classes
(as in DM's own BatchNorm branch) but never real with synthetic images.

One DSA draw per iteration serves all classes (the reference code draws one seed per class).
A synthetic image's gradient comes only from its own class's term, so each class sees the same
distribution of augmentations either way; only the correlation across classes differs.

The image step (``image_step``; not in DM's paper).  Eq. 4 matches each class's *mean*
synthetic embedding, so the gradient on one image s_i of a class with n images is

    ∂L/∂s_i = (2/n) · J_i^T (mean_syn − mean_real)

and shrinks as 1/n: at a fixed lr and step count an IPC-50 set moves a fifth as far from its
start as an IPC-10 set (DM's code hides this behind 20,000 steps).  ``"per-image"`` weighs
class c's term by n_c / :data:`REFERENCE_IPC`, which makes every image's gradient (2/10) ·
J_i^T (mean_syn − mean_real) whatever the IPC; with SGD (momentum is linear in the gradient)
that is the same as lr × n_c/10, up to rounding.  At IPC 10 the weights are 1 and the run is
bit for bit DM's.  ``"class-mean"`` is Eq. 4 unweighted, as published.  ``"larger"`` takes the
larger of the two steps, weight max(1, n_c / :data:`REFERENCE_IPC`): Eq. 4 bit for bit at n_c ≤ 10
(where ``"per-image"`` would step each image n_c/10 as far as DM does, a tenth at IPC 1) and
``"per-image"`` bit for bit at n_c ≥ 10.  The loss recorded in the history is Eq. 4 whatever the
image step, so it compares across IPC and across the choices.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import nn

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
from fedmatch.distill.compiled import Embedder
from fedmatch.distill.dsa import DIGIT_STRATEGY, sample_dsa
from fedmatch.distill.multiformation import (
    check_factor,
    decode,
    decode_images,
    decode_labels,
    init_stored,
)

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_STEPS",
    "REFERENCE_IPC",
    "ImageStep",
    "class_means",
    "class_weights",
    "distill_dm",
    "dm_class_terms",
    "dm_loss",
]

# "per-image": each image's gradient independent of the IPC; "class-mean": Eq. 4 as published;
# "larger": the larger of the two (Eq. 4 up to IPC 10, per-image from IPC 10 on; the run
# config's default).
ImageStep = Literal["larger", "per-image", "class-mean"]
IMAGE_STEPS: tuple[ImageStep, ...] = ("larger", "per-image", "class-mean")
# The IPC at which the image steps coincide.  DM's lr 1.0 (main_DM.py ``lr_img``) and the
# CPU schedules here were set at IPC 10, so a per-image run at IPC 10 is unchanged bit for bit.
REFERENCE_IPC = 10


def class_means(
    embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean rows (C, D) and per-class counts (C,); absent classes have mean 0."""
    counts = torch.bincount(labels, minlength=num_classes)
    sums = embeddings.new_zeros(num_classes, embeddings.shape[1]).index_add(0, labels, embeddings)
    return sums / counts.clamp(min=1).to(embeddings.dtype).unsqueeze(1), counts


def dm_class_terms(
    embed_real: torch.Tensor,
    y_real: torch.Tensor,
    embed_syn: torch.Tensor,
    y_syn: torch.Tensor,
    num_classes: int,
) -> torch.Tensor:
    """The terms of Eq. 4, one per class (C,): ||mean real − mean synthetic embedding of c||².

    A class absent from either set has the term 0 (and no gradient).
    """
    if embed_real.dim() != 2 or embed_syn.dim() != 2 or embed_real.shape[1] != embed_syn.shape[1]:
        raise ValueError(
            "embeddings must be (N, D) with the same D, got "
            f"{tuple(embed_real.shape)} and {tuple(embed_syn.shape)}"
        )
    mean_real, count_real = class_means(embed_real, y_real, num_classes)
    mean_syn, count_syn = class_means(embed_syn, y_syn, num_classes)
    present = (count_real > 0) & (count_syn > 0)
    return ((mean_real - mean_syn) ** 2).sum(dim=1) * present.to(embed_syn.dtype)


def dm_loss(
    embed_real: torch.Tensor,
    y_real: torch.Tensor,
    embed_syn: torch.Tensor,
    y_syn: torch.Tensor,
    num_classes: int,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """DM's loss (Eq. 4): Σ_c ||mean real embedding of c − mean synthetic embedding of c||².

    Summed (not averaged) over the classes present in both sets, as the reference code sums
    its per-class terms.  ``weights`` (C,) multiply the class terms (:func:`class_weights`).
    """
    terms = dm_class_terms(embed_real, y_real, embed_syn, y_syn, num_classes)
    return terms.sum() if weights is None else (terms * weights).sum()


def class_weights(
    image_step: ImageStep, stored_labels: torch.Tensor, num_classes: int
) -> torch.Tensor | None:
    """The factors of Eq. 4's class terms for ``image_step`` (None: unweighted).

    ``"per-image"``: n_c / :data:`REFERENCE_IPC` with n_c the *stored* images of class c, so
    that the gradient on each stored image does not depend on n_c (with multi-formation each
    stored image is f² decoded ones, and the class mean is over the n_c·f² decoded images).
    ``"larger"``: max(1, n_c / :data:`REFERENCE_IPC`), each image's step the larger of the
    class-mean and the per-image one (weights of exactly 1 up to n_c = 10: Eq. 4 bit for bit).
    """
    if image_step == "class-mean":
        return None
    if image_step not in ("per-image", "larger"):
        raise ValueError(f"image_step must be one of {IMAGE_STEPS}, got {image_step!r}")
    counts = torch.bincount(stored_labels.long().cpu(), minlength=num_classes)
    weights = counts.to(torch.float32) / REFERENCE_IPC
    return weights if image_step == "per-image" else weights.clamp(min=1.0)


def distill_dm(
    images: torch.Tensor,
    labels: torch.Tensor,
    ipc: int,
    steps: int,
    *,
    num_classes: int = 10,
    lr: float = 1.0,
    momentum: float = 0.5,
    batch_real: int = 256,
    init: InitMode = "real",
    net: Mapping[str, Any] = DM_NET,
    dsa_strategy: str = DIGIT_STRATEGY,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    log_every: int = 0,
    start: tuple[torch.Tensor, torch.Tensor] | None = None,
    feature_net: nn.Module | None = None,
    factor: int = 1,
    image_step: ImageStep = "class-mean",
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    compile: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, DistillHistory]:
    """Distil ``(images, labels)`` to ``ipc`` images per class with DM.

    Only classes present in ``labels`` get synthetic images.  Returns the synthetic images
    (CPU, class-major), their labels and the history (per-step loss, seconds, peak memory).

    ``start`` continues from an existing synthetic set (images, labels) instead of ``init``
    (``ipc`` is then ignored); ``feature_net`` embeds with that one network every step instead
    of a fresh random ConvNet: FedLGD's iterative local refresh, which matches in the current
    global model's feature space (Huang et al., Sec. 3.3).  The network is not changed.

    ``factor`` f > 1 distils with IDC's multi-formation (:mod:`fedmatch.distill.multiformation`,
    not part of DM's paper; a control for NCFM, which uses it): ``ipc`` stored images per class
    are matched, and returned, as ``ipc``·f² decoded images.

    ``image_step`` (module docstring): ``"class-mean"``, the default here, is Eq. 4 as
    published; the run config's default (``distill.image-step``) is ``"larger"``.
    ``on_step(k, stored)`` is called with k = 0 (the start) and after every step k with the
    stored images (detached, on ``device``; do not modify them): snapshots for benchmarks.
    ``compile`` embeds through one ``torch.compile``d graph shared by every step's network
    (:mod:`fedmatch.distill.compiled`): the same loss up to float rounding, faster after a
    one-time compilation.
    """
    check_dataset(images, labels, num_classes)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    check_factor(factor, (images.shape[2], images.shape[3]))
    if start is not None and factor > 1:
        raise ValueError(
            f"factor={factor} needs a fresh start: a continued set (start) is already decoded"
        )
    device = torch.device(device)
    if start is None:
        classes = sorted(int(c) for c in torch.unique(labels.cpu()))
        syn_init, syn_labels = init_stored(images, labels, classes, ipc, init, generator, factor)
    else:
        # A copy: the steps below are in place, and the caller's set must stay as it was.
        syn_init, syn_labels = start[0].detach().float().clone(), start[1].long()
        check_dataset(syn_init, syn_labels, num_classes)
        classes = sorted(int(c) for c in torch.unique(syn_labels))
    if feature_net is not None:
        feature_net = copy.deepcopy(feature_net).to(device).train().requires_grad_(False)
    images, labels = images.to(device), labels.to(device)
    syn = syn_init.to(device).requires_grad_(True)
    decoded_labels = decode_labels(syn_labels, factor).to(device)
    weights = class_weights(image_step, syn_labels, num_classes)
    if weights is not None:
        weights = weights.to(device)
    optimizer = torch.optim.SGD([syn], lr=lr, momentum=momentum)
    sampler = RealSampler(labels, classes, batch_real)
    image_size = (images.shape[2], images.shape[3])
    history = DistillHistory("dm")

    def new_net(seed: int) -> nn.Module:
        return convnet_for(images, net, num_classes=num_classes, seed=seed, device=device)

    # The compiled graph is traced from one network of the run's architecture (never stepped).
    template = feature_net if feature_net is not None else new_net(0) if compile else None
    embed = Embedder(template, compile=compile)

    if on_step is not None:
        on_step(0, syn.detach())
    with measure_peak_memory(device) as peak, Stopwatch(device) as watch:
        for step in range(steps):
            model = feature_net if feature_net is not None else new_net(draw_seed(generator))
            augment = sample_dsa(dsa_strategy, generator, image_size=image_size)
            idx = sampler.sample(generator).to(device)
            with torch.no_grad():
                embed_real = embed(model, augment(images[idx]))
            embed_syn = embed(model, augment(decode_images(syn, factor)))
            terms = dm_class_terms(embed_real, labels[idx], embed_syn, decoded_labels, num_classes)
            loss = terms.sum()  # Eq. 4, recorded whatever the image step
            objective = loss if weights is None else (terms * weights).sum()
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            history.losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step + 1, syn.detach())
            if log_every and (step + 1) % log_every == 0:
                log.info("DM step %d/%d: loss %.4f", step + 1, steps, history.losses[-1])
    history.seconds, history.cpu_seconds = watch.seconds, watch.cpu_seconds
    history.peak_memory_bytes, history.peak_memory_kind = peak.bytes, peak.kind
    if factor > 1:
        history.extra["factor"] = float(factor)
        history.extra["stored-images"] = float(len(syn_labels))
    out_images, out_labels = decode(syn.detach().cpu(), syn_labels, factor)
    return out_images, out_labels, history
