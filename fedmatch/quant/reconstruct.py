"""EDA-DM's fine-grained block reconstruction (FBR), on the BRECQ/AdaRound base.

As ``qdiff/block_recon.py`` runs it (``../shared/notes/diffusion.md`` §D): for each block in
turn, the weights' rounding (AdaRound, Nagel et al., ICML 2020) and the activation step sizes
are learned jointly with Adam and a cosine learning rate to minimise

    L = ||B_q(x) − B(x)||² + add_loss · Σ_{l ∈ block, l ≠ last} ||l_q(x) − l(x)||²       (FBR)

where B is the float block, B_q the quantized one and the sum runs over the block's inner
quantized layers' outputs (the last layer's output *is* the block output).  AdaRound's weight
is W_q = s · clamp(⌊W/s⌋ + h(V), qmin, qmax) with h(V) = clamp(σ(V)(ζ − γ) + γ, 0, 1),
ζ = 1.1, γ = −0.1 (AdaRound Eq. 22–23), V initialised so that h(V) = frac(W/s); after the
iterations the rounding is hardened to h = 1[V ≥ 0].  The activation step sizes are learned as
a multiplier of the calibrated step (1 at the start; LSQ-style, Esser et al., ICLR 2020).

EDA-DM switches AdaRound's rounding regulariser off (``round_loss='none'``); with that, the
soft rounding need not approach 0/1 and hardening can undo the gains, so (ours) the
regulariser λ Σ (1 − |2h − 1|^β) with β annealed 20 → 2 after a 20 % warm-up (AdaRound Eq. 24)
is on by default (``round_weight``; 0 = EDA-DM's setting).

Blocks here are the UNet's ``ResnetBlock2D``s (conv1, time projection, conv2, shortcut), the
down/up-samplers and the time-embedding MLP; block inputs are the float model's (no QDrop).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedmatch.quant.calibrate import CalibBatch
from fedmatch.quant.qmodules import QuantLayer, quant_layers, set_quant_state, set_timestep

log = logging.getLogger("fedmatch.quant")


@dataclass(frozen=True)
class ReconSettings:
    iters: int = 200
    batch_size: int = 32
    lr_round: float = 1e-2
    lr_act: float = 1e-3
    add_loss: float = 0.8  # EDA-DM: 0.8 CIFAR/ImageNet/COCO, 1.0 LSUN
    round_weight: float = 0.01  # AdaRound regulariser λ (0 = EDA-DM's round_loss='none')
    learn_act: bool = True


def reconstruction_blocks(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """The UNet's blocks to reconstruct, in forward order, each with quantized layers inside."""
    kinds = ("ResnetBlock2D", "Downsample2D", "Upsample2D", "TimestepEmbedding")
    out = []
    for name, m in unet.named_modules():
        if type(m).__name__ in kinds and any(isinstance(c, QuantLayer) for c in m.modules()):
            out.append((name, m))
    return out


class _Capture:
    """Records a module's inputs (args, kwargs) and output on each forward."""

    def __init__(self, module: nn.Module, inputs: bool, detach: bool = True) -> None:
        self.detach = detach
        self.args: list[tuple] = []
        self.outputs: list[torch.Tensor] = []
        self.handles = [module.register_forward_hook(self._out)]
        if inputs:
            self.handles.append(module.register_forward_pre_hook(self._in, with_kwargs=True))

    def _in(self, module, args, kwargs):
        self.args.append(
            (
                tuple(a.detach() if torch.is_tensor(a) else a for a in args),
                {k: v.detach() if torch.is_tensor(v) else v for k, v in kwargs.items()},
            )
        )

    def _out(self, module, args, output):
        self.outputs.append(output.detach() if self.detach else output)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _inner_layers(block: nn.Module) -> list[QuantLayer]:
    layers = [m for m in block.modules() if isinstance(m, QuantLayer)]
    return layers[:-1]  # the last layer's output is (up to the residual) the block output


@torch.no_grad()
def _float_targets(unet: nn.Module, block: nn.Module, batches: Sequence[CalibBatch]):
    """Float inputs, outputs and inner-layer outputs of ``block`` on ``batches``."""
    set_quant_state(unet, weights=False, acts=False)
    cap = _Capture(block, inputs=True)
    inner = [_Capture(m, inputs=False) for m in _inner_layers(block)]
    ts = []
    try:
        for b in batches:
            set_timestep(unet, b.t)
            unet(b.x, torch.full((len(b.labels),), b.t, dtype=torch.long), class_labels=b.labels)
            ts.append(b.t)
    finally:
        cap.remove()
        for c in inner:
            c.remove()
        set_quant_state(unet, weights=True, acts=True)
    return cap.args, cap.outputs, [c.outputs for c in inner], ts


def block_error(unet: nn.Module, block: nn.Module, batches: Sequence[CalibBatch]) -> float:
    """Mean squared error of the quantized block's output vs the float block (float inputs)."""
    args, outs, _, ts = _float_targets(unet, block, batches)
    return _block_error(unet, block, args, outs, ts)


def _block_error(unet: nn.Module, block: nn.Module, args, outs, ts) -> float:
    """:func:`block_error` on float inputs and outputs already captured by ``_float_targets``."""
    total = count = 0.0
    with torch.no_grad():
        for (a, kw), y, t in zip(args, outs, ts, strict=True):
            set_timestep(unet, t)
            total += float(F.mse_loss(block(*a, **kw), y, reduction="sum"))
            count += y.numel()
    return total / count


def _round_reg(layers: Sequence[QuantLayer], beta: float) -> torch.Tensor:
    return sum((1 - (2 * layer.rounding() - 1).abs().pow(beta)).sum() for layer in layers)


def reconstruct_block(
    unet: nn.Module,
    block: nn.Module,
    batches: Sequence[CalibBatch],
    settings: ReconSettings,
    generator: torch.Generator,
) -> dict[str, float]:
    """Learn ``block``'s rounding and activation scales by FBR; returns errors before/after."""
    # The float model's block inputs and outputs do not depend on the block's quantization
    # state: one float pass serves the training targets and both errors.
    args, outs, inner_outs, ts = _float_targets(unet, block, batches)
    layers = [m for m in block.modules() if isinstance(m, QuantLayer)]
    inner = _inner_layers(block)
    before = _block_error(unet, block, args, outs, ts)
    for layer in layers:
        layer.module.requires_grad_(False)
    round_params, act_params = [], []
    for layer in layers:
        layer.init_adaround()
        round_params.append(layer.alpha)
        if settings.learn_act and layer.aq.learned_scale is None:
            glo, _ = layer.aq.current_range()
            layer.aq.learned_scale = nn.Parameter(torch.ones_like(glo))
        if settings.learn_act:
            act_params.append(layer.aq.learned_scale)
    groups = [{"params": round_params, "lr": settings.lr_round}]
    if act_params:
        groups.append({"params": act_params, "lr": settings.lr_act})
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.iters)
    caps = [_Capture(m, inputs=False, detach=False) for m in inner]
    warmup = int(0.2 * settings.iters)
    try:
        for it in range(settings.iters):
            i = int(torch.randint(0, len(args), (1,), generator=generator))
            (a, kw), y, t = args[i], outs[i], ts[i]
            n = y.shape[0]
            index = torch.randperm(n, generator=generator)[: settings.batch_size]
            a = tuple(v[index] if torch.is_tensor(v) and v.shape[:1] == (n,) else v for v in a)
            kw = {
                k: v[index] if torch.is_tensor(v) and v.shape[:1] == (n,) else v
                for k, v in kw.items()
            }
            for c in caps:
                c.outputs.clear()
            set_timestep(unet, t)
            loss = F.mse_loss(block(*a, **kw), y[index])
            for c, target in zip(caps, inner_outs, strict=True):
                loss = loss + settings.add_loss * F.mse_loss(c.outputs[0], target[i][index])
            if settings.round_weight and it >= warmup:
                progress = (it - warmup) / max(1, settings.iters - warmup)
                beta = 2 + 0.5 * (20 - 2) * (1 + math.cos(math.pi * progress))
                loss = loss + settings.round_weight * _round_reg(layers, beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    finally:
        for c in caps:
            c.remove()
    for layer in layers:
        layer.soft = False
        layer.alpha.requires_grad_(False)
        if layer.aq.learned_scale is not None:
            layer.aq.learned_scale.requires_grad_(False)
    after = _block_error(unet, block, args, outs, ts)
    return {"before": before, "after": after}


def reconstruct(
    unet: nn.Module,
    batches: Sequence[CalibBatch],
    settings: ReconSettings,
    generator: torch.Generator,
) -> list[dict[str, float]]:
    """FBR over every block of ``unet`` in forward order (the model's float params frozen)."""
    for p in unet.parameters():
        p.requires_grad_(False)
    report = []
    for name, block in reconstruction_blocks(unet):
        r = reconstruct_block(unet, block, batches, settings, generator)
        log.info("FBR %s: block MSE %.3g -> %.3g", name, r["before"], r["after"])
        report.append({"block": name, **r})
    return report


__all__ = ["ReconSettings", "block_error", "quant_layers", "reconstruct", "reconstruct_block"]
