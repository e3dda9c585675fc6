"""Post-training quantization of the diffusion UNet: fake-quant framework, EDA-DM and DGQ.

Plain PyTorch, no Flower: ``quantizers`` (uniform per-tensor / per-channel / per-timestep and
log2), ``dgq`` (outlier-aware group quantization), ``attention`` (DGQ's cross-attention
quantization as a diffusers attention processor), ``qmodules`` (quantized Conv2d / Linear and
:func:`quantize_unet`), ``calibrate`` (calibration data, min-max calibration, mergeable
statistics for federated calibration), ``edadm`` (TDAC sample selection) and ``reconstruct``
(fine-grained block reconstruction).
"""

from __future__ import annotations

from fedmatch.quant.attention import QuantCrossAttnProcessor
from fedmatch.quant.calibrate import (
    CalibBatch,
    calibrate,
    export_stats,
    load_stats,
    local_batches,
    merge_stats,
    observe,
    trajectory_batches,
)
from fedmatch.quant.dgq import GroupActQuantizer, kmeans_groups
from fedmatch.quant.edadm import allocate, select_samples, tdac_weights, uniform_counts
from fedmatch.quant.qmodules import (
    QuantLayer,
    QuantSpec,
    model_size_bytes,
    parse_bits,
    quantize_unet,
    set_quant_state,
    set_timestep,
)
from fedmatch.quant.quantizers import ActQuantizer, LogQuantizer, WeightQuantizer, fake_quant
from fedmatch.quant.reconstruct import ReconSettings, block_error, reconstruct, reconstruct_block

__all__ = [
    "ActQuantizer",
    "CalibBatch",
    "GroupActQuantizer",
    "LogQuantizer",
    "QuantCrossAttnProcessor",
    "QuantLayer",
    "QuantSpec",
    "ReconSettings",
    "WeightQuantizer",
    "allocate",
    "block_error",
    "calibrate",
    "export_stats",
    "fake_quant",
    "kmeans_groups",
    "load_stats",
    "local_batches",
    "merge_stats",
    "model_size_bytes",
    "observe",
    "parse_bits",
    "quantize_unet",
    "reconstruct",
    "reconstruct_block",
    "select_samples",
    "set_quant_state",
    "set_timestep",
    "tdac_weights",
    "trajectory_batches",
    "uniform_counts",
]
