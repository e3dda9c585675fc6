"""Real int8 kernels for W8A8 layers: conversion and per-layer latency against float kernels.

The PTQ models of :mod:`fedmatch.quant.qmodules` are *fake-quant*: each layer rounds its input
and weight to the integer grid and then runs the float kernel, so their sampling latency says
nothing about deployment speed.  torch ships real int8 kernels for Conv2d and Linear on CPU
(the ``x86`` / ``fbgemm`` engines: quint8 activations × per-channel qint8 weights, int32
accumulation, requantized output), and a W8A8 layer with a per-tensor activation quantizer maps
onto them exactly: the same weight integers and scales (``WeightQuantizer.integer_weight``),
the same activation scale and zero point (``ActQuantizer.params`` at the current timestep).

:func:`int8_layer` builds that kernel for one calibrated :class:`QuantLayer`;
:func:`layer_latency` captures every layer's input in one UNet forward and times, per layer,
the float kernel (what the FP32 model runs), the int8 kernel on an already-quantized input,
and the int8 kernel with the quantize/dequantize a drop-in replacement between float ops
pays.  The rest of the UNet (GroupNorm, SiLU, up/down-sampling, the skip concatenations) has no
int8 kernel here and stays float in any case, so the per-layer sums are what int8 can change.
:func:`to_int8_unet` swaps the kernels into a copy of the whole UNet (:class:`Int8DropIn`), so
its end-to-end latency and its samples are measured, not projected.
DGQ's per-group activation quantizers have no int8 kernel in torch (one scale per input
channel group is not a quantized-tensor layout): their layers are skipped and counted.

torch 2.14 marks its quantized tensors deprecated (in favour of torchao) and warns on
creation; they still run, and this module is their only user.
"""

from __future__ import annotations

import copy
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.ao.nn.quantized as nnq
import torch.nn.functional as F
from torch import nn

from fedmatch.quant.calibrate import CalibBatch
from fedmatch.quant.qmodules import QuantLayer, quant_layers, set_timestep
from fedmatch.quant.quantizers import ActQuantizer


class Int8Unsupported(ValueError):
    """The layer has no exact int8-kernel counterpart (bit-widths or quantizer layout)."""


def _cpu_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: trust torch's default engine
    return "avx512_vnni" in flags or "avx_vnni" in flags


def int8_engine() -> str:
    """The quantized engine the int8 kernels run on, chosen so that they compute exactly.

    torch's ``x86``/``fbgemm`` engines multiply uint8 x int8 with ``vpmaddubsw`` on CPUs
    without VNNI, which saturates pairs of products at int16 and returns outputs many steps
    off (measured here: a mean of 8.6 output steps on one AVX2 machine).  There the kernels
    run on ``qnnpack``, which accumulates in int32 exactly; with VNNI, on torch's default.
    The engine is process-wide in torch, so this sets it.
    """
    engines = torch.backends.quantized.supported_engines
    if platform.machine() in ("x86_64", "AMD64") and not _cpu_has_vnni() and "qnnpack" in engines:
        torch.backends.quantized.engine = "qnnpack"
    return torch.backends.quantized.engine


def int8_layer(layer: QuantLayer, output_range: tuple[float, float]) -> nn.Module:
    """The torch int8 module computing ``layer`` (W8A8, per-tensor activations).

    ``output_range``: the float output's [min, max] over calibration data; the kernel
    requantizes its int32 accumulator to quint8 with it (8 bits, asymmetric, as the input).
    """
    int8_engine()  # weights are packed for, and run on, the engine in effect
    if layer.wq.bits != 8 or layer.aq.bits != 8:
        raise Int8Unsupported(
            f"W{layer.wq.bits}A{layer.aq.bits}: torch's int8 kernels need 8-bit weights and "
            "activations"
        )
    if type(layer.aq) is not ActQuantizer:
        raise Int8Unsupported(
            f"{type(layer.aq).__name__}: torch's int8 kernels take one activation scale per tensor"
        )
    m = layer.module
    scale = layer.wq.scale.detach().flatten().double()
    qweight = torch.quantize_per_channel(
        layer.quantized_weight().detach(),
        scale,
        torch.zeros_like(scale, dtype=torch.long),
        axis=0,
        dtype=torch.qint8,
    )
    bias = None if m.bias is None else m.bias.detach().float()
    if isinstance(m, nn.Conv2d):
        q: nn.Module = nnq.Conv2d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            dilation=m.dilation,
            groups=m.groups,
            bias=m.bias is not None,
        )
    elif isinstance(m, nn.Linear):
        q = nnq.Linear(m.in_features, m.out_features, bias_=m.bias is not None)
    else:  # pragma: no cover - QuantLayer only wraps these two
        raise Int8Unsupported(type(m).__name__)
    q.set_weight_bias(qweight, bias)
    q.scale, q.zero_point = _output_qparams(*output_range)
    return q


def quantize_input(layer: QuantLayer, x: torch.Tensor) -> torch.Tensor:
    """``x`` as the quint8 tensor the int8 kernel reads (the layer's range, current timestep)."""
    scale, zero = layer.aq.params()
    return torch.quantize_per_tensor(x, float(scale), int(zero), torch.quint8)


@dataclass(frozen=True)
class LayerTiming:
    """Median milliseconds of one layer's kernels on its captured input."""

    name: str
    kind: str  # "conv" | "linear"
    input_shape: tuple[int, ...]
    float_ms: float
    int8_ms: float  # kernel only, input already quint8
    int8_qdq_ms: float  # quantize input + kernel + dequantize output


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first calls pack weights and allocate
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def capture_inputs(
    unet: nn.Module, x: torch.Tensor, t: int, labels: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every QuantLayer's float input and float output in one forward at timestep ``t``."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [
        layer.register_forward_hook(
            lambda mod, args, out, name=name: seen.__setitem__(
                name, (args[0].detach(), out.detach())
            )
        )
        for name, layer in quant_layers(unet)
    ]
    try:
        with torch.no_grad():
            set_timestep(unet, t)
            unet(x, torch.full((x.shape[0],), t), class_labels=labels)
    finally:
        for h in hooks:
            h.remove()
    return seen


def layer_latency(
    unet: nn.Module, x: torch.Tensor, t: int, labels: torch.Tensor, repeats: int = 20
) -> tuple[list[LayerTiming], list[str]]:
    """Per-layer float vs int8 kernel time of a calibrated W8A8 UNet on input ``x``.

    Returns the timings and the names of the layers without an int8 counterpart.
    """
    captured = capture_inputs(unet, x, t, labels)
    layers = dict(quant_layers(unet))
    timings, skipped = [], []
    with torch.no_grad():
        for name, (inp, out) in captured.items():
            layer = layers[name]
            try:
                q = int8_layer(layer, (float(out.min()), float(out.max())))
            except Int8Unsupported:
                skipped.append(name)
                continue
            m = layer.module
            w = m.weight.detach()
            if isinstance(m, nn.Conv2d):

                def run_float(m=m, w=w, inp=inp):
                    return F.conv2d(inp, w, m.bias, m.stride, m.padding, m.dilation, m.groups)

                kind = "conv"
            else:

                def run_float(m=m, w=w, inp=inp):
                    return F.linear(inp, w, m.bias)

                kind = "linear"
            qx = quantize_input(layer, inp)
            timings.append(
                LayerTiming(
                    name=name,
                    kind=kind,
                    input_shape=tuple(inp.shape),
                    float_ms=_median_ms(run_float, repeats),
                    int8_ms=_median_ms(lambda q=q, qx=qx: q(qx), repeats),
                    int8_qdq_ms=_median_ms(
                        lambda q=q, lay=layer, inp=inp: q(quantize_input(lay, inp)).dequantize(),
                        repeats,
                    ),
                )
            )
    return timings, skipped


def _output_qparams(lo: float, hi: float) -> tuple[float, int]:
    """quint8 scale and zero point of the range [lo, hi] (0 on the grid, as the inputs)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255
    return scale, round(-lo / scale)


class Int8DropIn(nn.Module):
    """A QuantLayer's drop-in on real int8 kernels: quantize the float input with the layer's
    range at the current timestep, run the int8 kernel, dequantize for the float ops after it.

    The kernel requantizes its output to quint8; ``output_qparams`` holds one (scale, zero
    point) per calibrated timestep, for the reason the input ranges are per timestep (the
    activations' range drifts with t), and the nearest one serves an unseen timestep.
    """

    def __init__(
        self, layer: QuantLayer, kernel: nn.Module, output_qparams: dict[int, tuple[float, int]]
    ) -> None:
        super().__init__()
        self.layer = layer  # keeps the activation quantizer (ranges, timestep) and the weights
        self.kernel = kernel
        self.output_qparams = output_qparams

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.layer.aq.timestep
        key = min(self.output_qparams, key=lambda k: abs(k - t))
        self.kernel.scale, self.kernel.zero_point = self.output_qparams[key]
        return self.kernel(quantize_input(self.layer, x)).dequantize()


def output_ranges(
    unet: nn.Module, batches: Sequence[CalibBatch]
) -> dict[str, dict[int, tuple[float, float]]]:
    """Each QuantLayer's float-output [min, max] per timestep of the calibration batches."""
    ranges: dict[str, dict[int, tuple[float, float]]] = {}
    for b in batches:
        for name, (_, out) in capture_inputs(unet, b.x, b.t, b.labels).items():
            per_t = ranges.setdefault(name, {})
            lo, hi = per_t.get(b.t, (float("inf"), float("-inf")))
            per_t[b.t] = (min(lo, float(out.min())), max(hi, float(out.max())))
    return ranges


def to_int8_unet(unet: nn.Module, batches: Sequence[CalibBatch]) -> tuple[nn.Module, list[str]]:
    """A copy of the calibrated fake-quant ``unet`` whose W8A8 per-tensor layers run on int8
    kernels (:class:`Int8DropIn`); the other layers stay fake-quant.  Returns the copy and the
    names of the layers left fake-quant.

    The copy differs from the fake-quant model only by the kernels' 8-bit requantization of
    every layer's output (at most half an output step per layer, ``tests/test_quant_int8.py``).
    """
    ranges = output_ranges(unet, batches)
    out = copy.deepcopy(unet)
    kept = []
    for name, layer in list(quant_layers(out)):
        per_t = ranges[name]
        lo = min(r[0] for r in per_t.values())
        hi = max(r[1] for r in per_t.values())
        try:
            kernel = int8_layer(layer, (lo, hi))
        except Int8Unsupported:
            kept.append(name)
            continue
        qparams = {t: _output_qparams(*r) for t, r in per_t.items()}
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, child, Int8DropIn(layer, kernel, qparams))
    return out, kept


def unet_forward_ms(
    unet: nn.Module, x: torch.Tensor, t: int, labels: torch.Tensor, repeats: int = 10
) -> float:
    """Median milliseconds of one whole UNet forward (float or fake-quant, as ``unet`` is)."""
    steps = torch.full((x.shape[0],), t)
    with torch.no_grad():
        return _median_ms(lambda: unet(x, steps, class_labels=labels), repeats)


__all__ = [
    "Int8DropIn",
    "Int8Unsupported",
    "LayerTiming",
    "capture_inputs",
    "int8_engine",
    "int8_layer",
    "layer_latency",
    "output_ranges",
    "quantize_input",
    "to_int8_unet",
    "unet_forward_ms",
]
