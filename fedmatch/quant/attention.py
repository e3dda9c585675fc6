"""DGQ's cross-attention quantization as a diffusers attention processor (Ryu et al., ICLR 2025).

diffusers' default processor fuses the attention into one scaled-dot-product kernel, which
leaves no attention probabilities to quantize.  :class:`QuantCrossAttnProcessor` computes them
explicitly (``../shared/notes/diffusion.md`` §C, "Cross-attention"):

    P = softmax(q_a(Q) q_a(K)ᵀ / √d),    O = q_P(P) q_a(V),

where Q, K, V (split into heads) are the inputs of the two matmuls that an integer kernel
would see, quantized by uniform per-timestep activation quantizers q_a (the projections'
inputs are already quantized by their :class:`~fedmatch.quant.qmodules.QuantLayer`), and

- **DGQ** (``dgq=True``): q_P is the log2 quantizer (DGQ's ``T2ILogQuantizer``) with a dynamic,
  prompt-specific scale m (``t2i_real_time``), and the start token's key and probability column
  stay in full precision (``t2i_start_peak``); m is the max over the remaining columns.
  Improvement on DGQ (ours): DGQ takes m = max over the whole tensor, shared by every prompt of
  a batch; here a batch mixes classes (= prompts), so m is taken **per sample**, over its heads,
  queries and non-BOS keys.  That is DGQ's prompt-specific scale at batch size 1, and it makes
  each sample's output independent of what else is in its batch.
- **other methods** (the naive baseline): q_P is a uniform per-timestep activation quantizer
  calibrated like every other (min-max), at the activation bit-width, BOS not special.

Calibration observes the float attention: while its quantizers are calibrating the processor
only records Q, K, V (and P for the uniform q_P) and quantizes nothing, as every activation
quantizer passes its input through while observing.  The log quantizer needs no statistics, so
the federated path (:mod:`fedmatch.quant.calibrate`) sends only q_a's (and the uniform q_P's)
per-timestep ranges.  The processor is set on cross-attention modules only (``attn2`` of the
transformer blocks); self-attention keeps diffusers' processor with quantized projections.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from fedmatch.quant.quantizers import ActQuantizer, LogQuantizer


class QuantCrossAttnProcessor(nn.Module):
    """Explicit cross-attention with fake-quantized Q, K, V and probabilities (DGQ §C)."""

    def __init__(self, bits: int, per_timestep: bool = True, dgq: bool = True) -> None:
        super().__init__()
        self.dgq = dgq
        self.q = ActQuantizer(bits, per_timestep)
        self.k = ActQuantizer(bits, per_timestep)
        self.v = ActQuantizer(bits, per_timestep)
        self.probs: nn.Module = (
            LogQuantizer(bits, per_sample=True) if dgq else ActQuantizer(bits, per_timestep)
        )

    def calibrated(self) -> list[tuple[str, ActQuantizer]]:
        """The quantizers that calibration observes (the log quantizer needs none)."""
        out = [("q", self.q), ("k", self.k), ("v", self.v)]
        if isinstance(self.probs, ActQuantizer):
            out.append(("probs", self.probs))
        return out

    @property
    def calibrating(self) -> bool:
        return self.q.calibrating  # observe()/freeze() switch all of them together

    def quantize_keys(self, key: torch.Tensor) -> torch.Tensor:
        """(B, heads, tokens, d); DGQ keeps the start token's key in full precision."""
        if not self.dgq:
            return self.k(key)
        return torch.cat([key[:, :, :1], self.k(key[:, :, 1:])], dim=2)

    def quantize_probs(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, heads, queries, tokens); DGQ: BOS column exact, log2 per sample on the rest."""
        if self.calibrating:
            return self.probs(probs) if isinstance(self.probs, ActQuantizer) else probs
        if not self.dgq:
            return self.probs(probs)
        return torch.cat([probs[..., :1], self.probs(probs[..., 1:])], dim=-1)

    def forward(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        # diffusers' AttnProcessor for the configuration this UNet's transformer blocks use
        if attention_mask is not None or attn.spatial_norm is not None:
            raise NotImplementedError("QuantCrossAttnProcessor: no attention mask / spatial norm")
        if attn.group_norm is not None or attn.norm_q is not None or attn.norm_k is not None:
            raise NotImplementedError("QuantCrossAttnProcessor: no group norm / q-k norm")
        if encoder_hidden_states is None:
            raise ValueError("QuantCrossAttnProcessor is for cross-attention (attn2) only")
        residual = hidden_states
        four_d = hidden_states.ndim == 4
        if four_d:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.to_q(hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        query, key = self.q(heads(query)), self.quantize_keys(heads(key))
        value = self.v(heads(value))
        scores = (query @ key.transpose(-1, -2)) * attn.scale
        probs = self.quantize_probs(scores.float().softmax(dim=-1).to(query.dtype))
        out = (probs @ value).transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
        if four_d:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def cross_attention_modules(unet: nn.Module) -> list[tuple[str, Attention]]:
    """Every cross-attention module of ``unet`` (the transformer blocks' ``attn2``)."""
    return [
        (name, m)
        for name, m in unet.named_modules()
        if isinstance(m, Attention) and m.is_cross_attention
    ]


__all__ = ["QuantCrossAttnProcessor", "cross_attention_modules"]
