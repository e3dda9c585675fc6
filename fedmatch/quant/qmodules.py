"""Quantized Conv2d / Linear layers and :func:`quantize_unet`, which swaps them into a UNet.

Each :class:`QuantLayer` holds the original float module, a per-output-channel
:class:`~fedmatch.quant.quantizers.WeightQuantizer` (optionally with AdaRound's learnable
rounding, :mod:`fedmatch.quant.reconstruct`) and an activation quantizer on its **input**
(per-tensor :class:`~fedmatch.quant.quantizers.ActQuantizer` or DGQ's per-group
:class:`~fedmatch.quant.dgq.GroupActQuantizer`), so that the layer computes
conv(q_a(x), q_w(W)) as an integer kernel would, up to the float accumulation.

The UNet's current timestep is pushed to every activation quantizer by a forward pre-hook on
the UNet (:func:`set_timestep`), so time-aware ranges need no change to the sampler.  The first
(``conv_in``) and last (``conv_out``) layers stay at 8 bits, as in EDA-DM and Q-Diffusion.  The
class embedding and the cross-attention UNet's prompt table (lookup tables) are not quantized.

A UNet with cross-attention (``unet-cross-attention``) also gets a
:class:`~fedmatch.quant.attention.QuantCrossAttnProcessor` on every cross-attention module:
uniform q_a on Q, K, V and, for DGQ, log2 probabilities with a per-sample dynamic max and the
BOS column exact; for naive and EDA-DM, uniform calibrated probabilities at the activation
bit-width (the naive baseline).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedmatch.quant.attention import QuantCrossAttnProcessor, cross_attention_modules
from fedmatch.quant.dgq import GroupActQuantizer
from fedmatch.quant.quantizers import ActQuantizer, LogQuantizer, WeightQuantizer, fake_quant

METHODS = ("naive", "edadm", "dgq")
KEEP_8BIT = ("conv_in", "conv_out")  # by last name component (CrossAttentionUNet nests them)
_ZETA, _GAMMA = 1.1, -0.1  # AdaRound's stretched sigmoid (Nagel et al., ICML 2020, Eq. 23)


@dataclass(frozen=True)
class QuantSpec:
    """Bit-widths and method of one PTQ run (run-config keys ``quant-*``).

    ``method`` also picks the cross-attention probabilities' quantizer (if the UNet has
    cross-attention): log2 with a per-sample max for ``dgq``, uniform otherwise.
    """

    weight_bits: int = 8
    act_bits: int = 8
    method: str = "naive"
    groups: int = 8  # DGQ: activation groups per layer (1 = per-tensor)
    per_timestep: bool = True  # one activation range per sampling step (time-aware)
    weight_init: str = "minmax"  # "mse": per-channel clipping search (EDA-DM / DGQ)

    def validate(self) -> QuantSpec:
        if self.method not in METHODS:
            raise ValueError(f"quant-method={self.method!r}: allowed {', '.join(METHODS)}")
        for key, bits in (
            ("quant-weight-bits", self.weight_bits),
            ("quant-act-bits", self.act_bits),
        ):
            if not 2 <= bits <= 8:
                raise ValueError(f"{key}={bits}: allowed 2..8")
        if self.groups < 1:
            raise ValueError(f"quant-groups={self.groups}: must be >= 1")
        return self


def parse_bits(value: str) -> tuple[int, int]:
    """``"W4A8"`` -> (4, 8); a clear error naming the value otherwise."""
    v = value.strip().upper()
    try:
        w, a = v[1:].split("A")
        if not v.startswith("W"):
            raise ValueError
        return int(w), int(a)
    except ValueError:
        raise ValueError(
            f"quant-bits={value!r}: expected 'W<bits>A<bits>' such as 'W4A8'"
        ) from None


class QuantLayer(nn.Module):
    """Fake-quantized Conv2d or Linear: ``module(q_a(x))`` with weight ``q_w(W)``."""

    def __init__(self, module: nn.Conv2d | nn.Linear, weight_bits: int, act: nn.Module, init: str):
        super().__init__()
        self.module = module
        self.wq = WeightQuantizer(module.weight, weight_bits, init)
        self.aq = act
        self.quant_weight = True
        self.alpha: nn.Parameter | None = None  # AdaRound rounding logits (reconstruction)
        self.soft = False

    # -------------------------------------------------------------- AdaRound
    def init_adaround(self) -> None:
        """V such that h(V) equals the fractional part of W / s (rounding starts at nearest)."""
        w = self.module.weight.detach()
        frac = w / self.wq.scale - torch.floor(w / self.wq.scale)
        p = ((frac - _GAMMA) / (_ZETA - _GAMMA)).clamp(1e-4, 1 - 1e-4)
        self.alpha = nn.Parameter(torch.log(p / (1 - p)))
        self.soft = True

    def rounding(self) -> torch.Tensor:
        assert self.alpha is not None
        if self.soft:
            return (torch.sigmoid(self.alpha) * (_ZETA - _GAMMA) + _GAMMA).clamp(0, 1)
        return (self.alpha >= 0).float()

    def quantized_weight(self) -> torch.Tensor:
        w = self.module.weight
        if not self.quant_weight:
            return w
        if self.alpha is None:
            return self.wq(w)
        bits = self.wq.bits
        s = self.wq.scale
        q = torch.clamp(
            torch.floor(w.detach() / s) + self.rounding(), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        )
        return q * s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.aq(x)
        w = self.quantized_weight()
        m = self.module
        if isinstance(m, nn.Conv2d):
            return F.conv2d(x, w, m.bias, m.stride, m.padding, m.dilation, m.groups)
        return F.linear(x, w, m.bias)


def make_act_quantizer(spec: QuantSpec, bits: int, dims: int) -> nn.Module:
    """DGQ groups for 3-/4-D inputs (``dims``); per-tensor otherwise."""
    if spec.method == "dgq" and spec.groups > 1 and dims >= 3:
        return GroupActQuantizer(bits, spec.groups, spec.per_timestep)
    return ActQuantizer(bits, spec.per_timestep)


def _input_dims(unet: nn.Module) -> dict[str, int]:
    """Rank of every Conv2d/Linear input in one tiny forward (2-D: the time MLPs)."""
    dims: dict[str, int] = {}
    hooks = [
        m.register_forward_pre_hook(
            lambda mod, args, name=name: dims.__setitem__(name, args[0].dim())
        )
        for name, m in unet.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    cfg = unet.config
    x = torch.zeros(1, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    with torch.no_grad():
        unet(x, torch.tensor([0]), class_labels=torch.tensor([0]))
    for h in hooks:
        h.remove()
    return dims


def quantize_unet(unet: nn.Module, spec: QuantSpec) -> nn.Module:
    """Replace (in place) every Conv2d/Linear of ``unet`` by a :class:`QuantLayer`.

    Activation quantizers start in calibration mode; run :func:`fedmatch.quant.calibrate`
    next.  Returns ``unet`` (with the timestep pre-hook installed).
    """
    spec.validate()
    dims = _input_dims(unet)
    for name, dim in dims.items():
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name) if parent_name else unet
        module = getattr(parent, child)
        eight = name.rpartition(".")[2] in KEEP_8BIT
        w_bits = 8 if eight else spec.weight_bits
        a_bits = 8 if eight else spec.act_bits
        act = make_act_quantizer(spec, a_bits, dim)
        act.calibrating = True
        setattr(parent, child, QuantLayer(module, w_bits, act, spec.weight_init))
    for _, attn in cross_attention_modules(unet):
        processor = QuantCrossAttnProcessor(spec.act_bits, spec.per_timestep, spec.method == "dgq")
        for _, q in processor.calibrated():
            q.calibrating = True
        attn.set_processor(processor)
    unet.register_forward_pre_hook(_timestep_hook, with_kwargs=True)
    unet.quant_spec = spec
    return unet


def _timestep_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
    t = args[1] if len(args) > 1 else kwargs["timestep"]
    t = int(t.flatten()[0]) if torch.is_tensor(t) else int(t)
    set_timestep(module, t)


def quant_layers(unet: nn.Module) -> Iterator[tuple[str, QuantLayer]]:
    for name, m in unet.named_modules():
        if isinstance(m, QuantLayer):
            yield name, m


def act_quantizers(unet: nn.Module) -> Iterator[tuple[str, ActQuantizer | GroupActQuantizer]]:
    """Every calibrated activation quantizer, named as in the exported statistics.

    A :class:`QuantLayer`'s input quantizer under the layer's name; a cross-attention
    processor's ``q``/``k``/``v`` (and uniform ``probs``) as ``<attention>.processor.<part>``.
    """
    for name, m in unet.named_modules():
        if isinstance(m, QuantLayer):
            yield name, m.aq
        elif isinstance(m, QuantCrossAttnProcessor):
            for part, q in m.calibrated():
                yield f"{name}.{part}", q


def set_timestep(unet: nn.Module, t: int) -> None:
    for _, q in act_quantizers(unet):
        q.timestep = t


def set_quant_state(unet: nn.Module, *, weights: bool = True, acts: bool = True) -> None:
    """Switch weight and activation quantization on or off (off = the float model)."""
    for _, layer in quant_layers(unet):
        layer.quant_weight = weights
    for _, q in act_quantizers(unet):
        q.enabled = acts
    for m in unet.modules():
        if isinstance(m, LogQuantizer):
            m.enabled = acts


def model_size_bytes(unet: nn.Module) -> dict[str, int]:
    """Bytes of the packed integer model vs float32.

    Quantized layers: ``bits`` per weight (packed) + one fp32 scale per output channel; every
    other parameter (biases, norms, the class embedding) stays fp32.  AdaRound logits and the
    activation ranges are calibration state, not model weights (activation ranges add two
    fp32 numbers per layer and timestep, reported separately as ``activation_ranges``).
    """
    layers = dict(quant_layers(unet))
    skip = set()
    quantized = fp32 = ranges = 0
    for layer in layers.values():
        w = layer.module.weight
        quantized += (w.numel() * layer.wq.bits + 7) // 8 + layer.wq.scale.numel() * 4
        fp32 += w.numel() * 4
        skip |= {id(w), id(layer.wq.scale)}
        for extra in (layer.alpha, layer.aq.learned_scale):
            if extra is not None:
                skip.add(id(extra))
    for _, q in act_quantizers(unet):
        for lo, _ in q.ranges.values():
            ranges += 2 * lo.numel() * 4
    for p in unet.parameters():
        if id(p) not in skip:
            quantized += p.numel() * 4
            fp32 += p.numel() * 4
    return {"quantized": quantized, "fp32": fp32, "activation_ranges": ranges}


def fake_quant_weight_error(layer: QuantLayer) -> float:
    w = layer.module.weight.detach()
    return float((layer.quantized_weight().detach() - w).abs().max())


__all__ = [
    "KEEP_8BIT",
    "METHODS",
    "QuantLayer",
    "QuantSpec",
    "act_quantizers",
    "fake_quant",
    "model_size_bytes",
    "parse_bits",
    "quant_layers",
    "quantize_unet",
    "set_quant_state",
    "set_timestep",
]
