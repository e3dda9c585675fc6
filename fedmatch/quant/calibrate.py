"""Calibration data, min-max calibration and mergeable calibration statistics.

Calibration inputs are UNet inputs (x_t, t, y) at the sampler's timesteps, from one of two
sources:

- ``trajectory``: the float model's own DDIM trajectories from noise (data-free; the source
  EDA-DM and Q-Diffusion use), optionally re-weighted over timesteps by EDA-DM's TDAC
  (:mod:`fedmatch.quant.edadm`);
- ``local``: a client's own images noised to x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε at the same
  timesteps (Ho et al., Eq. 4): the client's domain, without leaving the client.

Calibration only *observes* every activation quantizer's input; the statistics are per-layer,
per-timestep minima and maxima (per index for DGQ's groups; also of the cross-attention
Q, K, V, :mod:`fedmatch.quant.attention`), which :func:`export_stats` flattens into named
tensors, :func:`merge_stats` combines across clients (element-wise min of minima, max of
maxima: exactly the statistics of the pooled calibration set) and :func:`load_stats`
installs before the quantizers are frozen.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fedmatch.diffusion.teacher import (
    Solver,
    add_noise,
    alphas_cumprod,
    guided_output,
    sampler_scheduler,
)
from fedmatch.diffusion.unet import pad_images
from fedmatch.quant.dgq import GroupActQuantizer
from fedmatch.quant.qmodules import act_quantizers, set_timestep
from fedmatch.quant.quantizers import ActQuantizer, RangeObserver


@dataclass
class CalibBatch:
    """UNet inputs at one timestep: x_t (N, C, 32, 32), the integer t, labels (N,)."""

    x: torch.Tensor
    t: int
    labels: torch.Tensor


@torch.no_grad()
def trajectory_batches(
    unet: nn.Module,
    labels: torch.Tensor,
    *,
    steps: int,
    generator: torch.Generator,
    feature_hook: str | None = None,
    guidance_scale: float = 0.0,
    null_label: int | None = None,
    solver: Solver = "ddim",
) -> tuple[list[CalibBatch], list[torch.Tensor]]:
    """The sampler's trajectory of ``labels`` from noise (``solver``: the teacher's sampler,
    DDIM or DPM-Solver++(2M), ``steps`` evaluations): one :class:`CalibBatch` per step.

    ``feature_hook`` names a submodule (e.g. ``"mid_block"``) whose input is returned per step
    (EDA-DM's TDAC measures density and diversity on it).  With ``guidance_scale`` > 0 the
    trajectory is the classifier-free-guided one the quantized teacher will follow (the null
    condition's inputs are added by :func:`with_null_condition`).
    """
    scheduler = sampler_scheduler(steps, solver)
    x = torch.randn((len(labels), unet.config.in_channels, 32, 32), generator=generator)
    features: list[torch.Tensor] = []
    handle = None
    if feature_hook:
        handle = unet.get_submodule(feature_hook).register_forward_pre_hook(
            lambda m, args: features.append(args[0].detach().clone())
        )
    batches = []
    try:
        for t in scheduler.timesteps:
            tt = torch.full((len(labels),), int(t), dtype=torch.long)
            batches.append(CalibBatch(x.clone(), int(t), labels.clone()))
            v = guided_output(unet, x, tt, labels, guidance_scale, null_label)
            x = scheduler.step(v, int(t), x).prev_sample
    finally:
        if handle is not None:
            handle.remove()
    return batches, features


def local_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    per_step: int,
    generator: torch.Generator,
    solver: Solver = "ddim",
) -> list[CalibBatch]:
    """A client's own images (28x28 in [-1, 1]) noised to every timestep of the teacher's
    sampler (``solver``, ``steps`` evaluations; Ho et al., Eq. 4)."""
    ac = alphas_cumprod()
    out = []
    for t in sampler_scheduler(steps, solver).timesteps:
        index = torch.randint(0, len(labels), (per_step,), generator=generator)
        x0 = pad_images(images[index])
        noise = torch.randn(x0.shape, generator=generator)
        tt = torch.full((per_step,), int(t), dtype=torch.long)
        out.append(CalibBatch(add_noise(x0, noise, tt, ac), int(t), labels[index]))
    return out


def with_null_condition(batches: Sequence[CalibBatch], null_label: int) -> list[CalibBatch]:
    """Each batch twice, the second time with the null condition: what a classifier-free-guided
    sampler feeds the UNet at every step (``guided_output``'s doubled batch), so that the
    activation ranges cover the unconditional pass too."""
    return [
        CalibBatch(
            torch.cat([b.x, b.x]),
            b.t,
            torch.cat([b.labels, torch.full_like(b.labels, null_label)]),
        )
        for b in batches
    ]


def _quantizers(unet: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    # layer inputs and cross-attention Q/K/V (DGQ's log2 probabilities need no statistics)
    return act_quantizers(unet)


@torch.no_grad()
def observe(unet: nn.Module, batches: Sequence[CalibBatch], batch_size: int = 256) -> None:
    """Run ``batches`` through the quantized UNet with every activation quantizer observing."""
    for _, q in _quantizers(unet):
        q.calibrating = True
    for b in batches:
        for x, y in zip(b.x.split(batch_size), b.labels.split(batch_size), strict=True):
            set_timestep(unet, b.t)
            unet(x, torch.full((len(y),), b.t, dtype=torch.long), class_labels=y)


def freeze(unet: nn.Module) -> None:
    for _, q in _quantizers(unet):
        q.freeze()


def calibrate(unet: nn.Module, batches: Sequence[CalibBatch]) -> nn.Module:
    """Min-max calibration: observe ``batches``, then fix every range (and DGQ's groups)."""
    observe(unet, batches)
    freeze(unet)
    return unet


# ---------------------------------------------------------------- mergeable statistics


def export_stats(unet: nn.Module) -> dict[str, torch.Tensor]:
    """Every observed range as ``{layer}|{t}|{axis}|lo`` / ``...|hi`` tensors."""
    out: dict[str, torch.Tensor] = {}
    for name, q in _quantizers(unet):
        if isinstance(q, GroupActQuantizer):
            for t, per_axis in q.stats.items():
                for axis, (lo, hi) in per_axis.items():
                    out[f"{name}|{t}|{axis}|lo"] = lo.clone()
                    out[f"{name}|{t}|{axis}|hi"] = hi.clone()
        else:
            for t, obs in q.observers.items():
                out[f"{name}|{t}|tensor|lo"] = obs.lo.clone()
                out[f"{name}|{t}|tensor|hi"] = obs.hi.clone()
    return out


def merge_stats(stats: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise min of minima and max of maxima (= the pooled calibration set's ranges)."""
    merged: dict[str, torch.Tensor] = {}
    for s in stats:
        for key, value in s.items():
            if key not in merged:
                merged[key] = value.clone()
            elif key.endswith("|lo"):
                merged[key] = torch.minimum(merged[key], value)
            else:
                merged[key] = torch.maximum(merged[key], value)
    return merged


def load_stats(unet: nn.Module, stats: dict[str, torch.Tensor]) -> nn.Module:
    """Install ``stats`` as the observers' state and freeze (DGQ groups chosen here)."""
    quantizers = dict(_quantizers(unet))
    for q in quantizers.values():
        if isinstance(q, GroupActQuantizer):
            q.stats = {}
        elif isinstance(q, ActQuantizer):
            q.observers = {}
    for key, value in stats.items():
        name, t, axis, end = key.split("|")
        q = quantizers[name]
        t = int(t)
        if isinstance(q, GroupActQuantizer):
            lo_hi = q.stats.setdefault(t, {}).get(axis, (None, None))
            lo_hi = (value, lo_hi[1]) if end == "lo" else (lo_hi[0], value)
            q.stats[t][axis] = lo_hi
        else:
            obs = q.observers.setdefault(t, RangeObserver())
            if end == "lo":
                obs.lo = value
            else:
                obs.hi = value
    freeze(unet)
    return unet
