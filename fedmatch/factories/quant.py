"""From a run config to the federated calibration workload (``train.calibrate``), no Flower.

Client side (:func:`client_calibration`): quantize a copy of the teacher, build the client's
calibration set and observe it; return only **statistics**: every activation quantizer's
per-timestep min/max (per channel and per pixel for DGQ), plus, for EDA-DM, the client's TDAC
weights over the sampling steps.  No image, latent or label leaves the client.

- ``quant-calibration-source = local``: the client's own images noised to the timesteps of the
  teacher's sampler (``teacher-sampler``; its domain);
- ``trajectory``: the teacher's sampler trajectories for labels drawn from the client's label
  distribution (data-free but client-specific).

Either way N = ``quant-calibration-samples`` inputs are spread over the T = ``teacher-ddim-steps``
timesteps: uniformly (naive, DGQ) or by TDAC (EDA-DM), whose features come from a 16-sample
teacher trajectory with the client's labels.

Server side (:func:`server_quantize`): merge the clients' statistics (element-wise min/max, which
equals min-max calibration on the pooled calibration sets), install them in a quantized copy of
the teacher (DGQ's k-means groups are formed here, on the merged per-index ranges) and, for
EDA-DM, run block reconstruction on data-free teacher trajectories allocated by the examples-
weighted mean of the clients' TDAC weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from fedmatch.config import RunConfig
from fedmatch.factories.diffusion import unet_spec
from fedmatch.params import DiffusionParams
from fedmatch.quant.calibrate import (
    CalibBatch,
    export_stats,
    load_stats,
    local_batches,
    merge_stats,
    observe,
    trajectory_batches,
    with_null_condition,
)
from fedmatch.quant.edadm import allocate, select_samples, tdac_weights, uniform_counts
from fedmatch.quant.qmodules import QuantSpec, parse_bits, quantize_unet
from fedmatch.quant.reconstruct import ReconSettings, reconstruct

CALIBRATE_ACTION = "train.calibrate"
TDAC_KEY = "tdac-weights"
_TDAC_FEATURE_SAMPLES = 16
FEATURE_HOOK = "mid_block"


def weight_init(method: str, clipping: str) -> str:
    """The weight scales' initialisation: ``clipping``, or for ``"method"`` each paper's
    (EDA-DM and DGQ start from the MSE clipping search, the naive baseline from min-max)."""
    if clipping != "method":
        return clipping
    return "minmax" if method == "naive" else "mse"


def quant_spec(cfg: RunConfig) -> QuantSpec:
    quant = cfg.table("quant")
    w, a = parse_bits(quant.bits)
    return QuantSpec(
        weight_bits=w,
        act_bits=a,
        method=quant.method,
        groups=quant.groups,
        per_timestep=quant.per_timestep,
        weight_init=weight_init(quant.method, quant.weight_clipping),
    ).validate()


def _labels_like(labels: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    return labels[torch.randint(0, len(labels), (n,), generator=generator)]


def step_counts(
    cfg: RunConfig, teacher: nn.Module, labels: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Calibration samples per sampling step, and the TDAC weights (EDA-DM only)."""
    steps, total = (
        cfg.params(DiffusionParams).teacher_ddim_steps,
        cfg.table("quant").calibration_samples,
    )
    if cfg.table("quant").method != "edadm":
        return uniform_counts(steps, total), None
    probe = _labels_like(labels, _TDAC_FEATURE_SAMPLES, generator)
    _, features = trajectory_batches(
        teacher,
        probe,
        steps=steps,
        generator=generator,
        feature_hook=FEATURE_HOOK,
        guidance_scale=cfg.params(DiffusionParams).guidance_scale,
        null_label=unet_spec(cfg).null_label,
        solver=cfg.params(DiffusionParams).teacher_sampler,
    )
    weights = tdac_weights(features, lam=cfg.table("quant").tdac_lambda)
    return allocate(weights, total), weights


def calibration_batches(
    cfg: RunConfig,
    teacher: nn.Module,
    images: torch.Tensor | None,
    labels: torch.Tensor,
    counts: torch.Tensor,
    generator: torch.Generator,
    source: str | None = None,
) -> list[CalibBatch]:
    """``counts[t]`` calibration inputs at step t from ``source`` (default: the run config's)."""
    source = source or cfg.table("quant").calibration_source
    per_step = max(1, int(counts.max()))
    if source == "local":
        if images is None:
            raise ValueError("quant-calibration-source='local' needs the client's images")
        pool = local_batches(
            images,
            labels,
            steps=cfg.params(DiffusionParams).teacher_ddim_steps,
            per_step=per_step,
            generator=generator,
            solver=cfg.params(DiffusionParams).teacher_sampler,
        )
    else:
        pool, _ = trajectory_batches(
            teacher,
            _labels_like(labels, per_step, generator),
            steps=cfg.params(DiffusionParams).teacher_ddim_steps,
            generator=generator,
            guidance_scale=cfg.params(DiffusionParams).guidance_scale,
            null_label=unet_spec(cfg).null_label,
            solver=cfg.params(DiffusionParams).teacher_sampler,
        )
    batches = select_samples(pool, counts, generator)
    null_label = unet_spec(cfg).null_label
    if cfg.params(DiffusionParams).guidance_scale > 0 and null_label is not None:
        return with_null_condition(batches, null_label)
    return batches


def client_calibration(
    cfg: RunConfig,
    teacher: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    seed: int,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One client's calibration statistics (and TDAC weights) and its metrics."""
    generator = torch.Generator().manual_seed(seed)
    teacher = teacher.eval()
    counts, weights = step_counts(cfg, teacher, labels, generator)
    batches = calibration_batches(cfg, teacher, images, labels, counts, generator)
    quantized = quantize_unet(copy.deepcopy(teacher), quant_spec(cfg))
    observe(quantized, batches)
    stats = export_stats(quantized)
    if weights is not None:
        stats[TDAC_KEY] = weights.float()
    metrics = {
        "calibration-samples": float(sum(len(b.labels) for b in batches)),
        "calibration-steps": float(len(batches)),
        "stat-tensors": float(len(stats)),
    }
    return stats, metrics


def server_quantize(
    cfg: RunConfig,
    teacher: nn.Module,
    client_stats: Sequence[dict[str, torch.Tensor]],
    weights: Sequence[float],
    seed: int,
) -> tuple[nn.Module, dict[str, float]]:
    """The one quantized model from the clients' statistics (+ EDA-DM's FBR on the server)."""
    ranges = [{k: v for k, v in s.items() if k != TDAC_KEY} for s in client_stats]
    quantized = load_stats(
        quantize_unet(copy.deepcopy(teacher).eval(), quant_spec(cfg)), merge_stats(ranges)
    )
    info: dict[str, float] = {}
    tdac = [s[TDAC_KEY] for s in client_stats if TDAC_KEY in s]
    if cfg.table("quant").method == "edadm" and cfg.table("quant").recon_iters > 0:
        generator = torch.Generator().manual_seed(seed)
        if tdac:
            w = sum(wi * t for wi, t in zip(weights, tdac, strict=True)) / sum(weights)
            counts = allocate(w, cfg.table("quant").calibration_samples)
        else:
            counts = uniform_counts(
                cfg.params(DiffusionParams).teacher_ddim_steps,
                cfg.table("quant").calibration_samples,
            )
        labels = torch.arange(10)
        batches = calibration_batches(
            cfg, teacher, None, labels, counts, generator, source="trajectory"
        )
        report = reconstruct(
            quantized,
            batches,
            ReconSettings(iters=cfg.table("quant").recon_iters, batch_size=32),
            generator,
        )
        before = sum(r["before"] for r in report)
        after = sum(r["after"] for r in report)
        info = {"recon-blocks": float(len(report)), "recon-error-before": before}
        info["recon-error-after"] = after
        info["recon-error-ratio"] = after / before if before > 0 else math.nan
    return quantized, info
