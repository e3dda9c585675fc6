"""A small class-conditional diffusers UNet built from a config (no downloads).

Two architectures, both conditioned on the digit label through the time embedding
(``num_class_embeds``): the default ``UNet2DModel`` (ResNet blocks, optional mid-block
self-attention), and, with ``unet-cross-attention``, :class:`CrossAttentionUNet`: a
``UNet2DConditionModel`` whose lowest-resolution level and mid block cross-attend to a class
"prompt", the token sequence [BOS, label] from a learned table.  That is the tiny form of a
text-to-image UNet that DGQ's attention quantization needs (``../shared/notes/diffusion.md``
§C, "Tiny form (ours)"): the label plays the prompt's role.  Both are called the same way,
``unet(x_t, t, class_labels=y).sample``, expose ``.config`` and ``.mid_block``, and name their
first and last convolutions ``conv_in`` / ``conv_out``.

The digits are 28x28; a UNet whose every level halves the resolution wants a side divisible
by 2^(levels-1), so 28 px allows at most 3 levels (28 -> 14 -> 7) and a 4th crashes on 7 -> 4
-> 8 (``../shared/notes/diffusion.md`` §E).  Everything in ``fedmatch.diffusion`` therefore
works on images edge-padded to 32x32 (:func:`pad_images`), which allows up to 4 levels, and
crops back to 28x28 (:func:`crop_images`) only for what leaves it (FID, sample grids).
Edge padding, not a constant, because several domains have non-black backgrounds.

``norm_num_groups`` (GroupNorm) must divide every channel count; diffusers' default 32 does
not divide the tiny widths used here, so the spec defaults to 8 and :meth:`UNetSpec.validate`
names the offending width.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel, UNet2DModel
from torch import nn

from fedmatch.data.types import IMAGE_SHAPE, NUM_CLASSES

IMAGE_SIZE = IMAGE_SHAPE[1]  # 28
UNET_SIZE = 32
_PAD = (UNET_SIZE - IMAGE_SIZE) // 2
MAX_LEVELS = 4  # 32 -> 16 -> 8 -> 4
# Channels per attention head in the cross-attention UNet: a cross-attention level of width c
# has c / 16 heads (SD's heads are 40-160 wide; 16 keeps a head per 16 channels of a tiny UNet).
ATTENTION_HEAD_DIM = 16
BOS = 0  # row of the prompt table that starts every prompt; label y is row y + 1


@dataclass(frozen=True)
class UNetSpec:
    """What :func:`build_unet` builds: widths per level, blocks per level, attention.

    ``cross_attention`` selects :class:`CrossAttentionUNet` (the mid block then always has
    self- and cross-attention, so ``attention`` adds nothing to it).

    ``domains`` > 1 conditions on (class, domain): the class embedding has one row per pair,
    index ``domain · num_classes + class`` (:func:`condition_labels`), so the one embedding
    table that carries the class (time embedding, and the cross-attention prompt) also
    carries the domain, and no sampler or loss needs another argument.
    """

    channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    attention: bool = False
    norm_groups: int = 8
    in_channels: int = IMAGE_SHAPE[0]
    num_classes: int = NUM_CLASSES
    cross_attention: bool = False
    domains: int = 1
    # "joint": one learned row per (class, domain); "added": a class row plus a domain row,
    # so every client's data trains the class rows (:class:`AddedDomainEmbedding`).
    domain_embedding: str = "joint"
    # One more embedding row, the null condition of classifier-free guidance (Ho & Salimans,
    # 2021): trained on the examples whose condition is dropped, queried for the guided output.
    guidance: bool = False

    @property
    def num_conditions(self) -> int:
        """Conditions a sample can ask for: classes × domains."""
        return self.num_classes * self.domains

    @property
    def num_embeddings(self) -> int:
        """Rows of the class embedding: the conditions, plus the null row with ``guidance``."""
        return self.num_conditions + int(self.guidance)

    @property
    def null_label(self) -> int | None:
        """The label of the null condition (the last row), or None without ``guidance``."""
        return self.num_conditions if self.guidance else None

    def validate(self) -> UNetSpec:
        if not 1 <= len(self.channels) <= MAX_LEVELS:
            raise ValueError(
                f"unet-channels={','.join(map(str, self.channels))!r}: {len(self.channels)} "
                f"levels; allowed 1..{MAX_LEVELS} on {UNET_SIZE}x{UNET_SIZE} (padded) images"
            )
        bad = [c for c in self.channels if c <= 0 or c % self.norm_groups]
        if bad:
            raise ValueError(
                f"unet-channels={','.join(map(str, self.channels))!r}: width(s) {bad} are not "
                f"positive multiples of the {self.norm_groups} GroupNorm groups"
            )
        if self.layers_per_block < 1:
            raise ValueError(f"unet-layers-per-block={self.layers_per_block}: must be >= 1")
        if self.domains < 1:
            raise ValueError(f"domains={self.domains}: a UNet conditions on >= 1 domain")
        if self.domain_embedding not in ("joint", "added"):
            raise ValueError(f"domain_embedding={self.domain_embedding!r}: 'joint' or 'added'")
        if self.cross_attention:
            width = self.channels[-1]
            if width % ATTENTION_HEAD_DIM:
                raise ValueError(
                    f"unet-channels={','.join(map(str, self.channels))!r} with "
                    f"unet-cross-attention=true: the cross-attention level's width {width} is "
                    f"not a multiple of the {ATTENTION_HEAD_DIM} channels per attention head"
                )
        return self

    def to_dict(self) -> dict[str, object]:
        """The spec as saved with a teacher and hashed into its cache key.

        ``cross_attention`` and ``guidance`` appear only when true and ``domains`` only when
        > 1, so that the default spec's dict (and with it every teacher cached before the keys
        existed) is unchanged, while a cross-attention, guided or domain-conditioned teacher
        never matches a plain one.
        """
        out = {**asdict(self), "channels": list(self.channels)}
        if not self.cross_attention:
            del out["cross_attention"]
        if not self.guidance:
            del out["guidance"]
        if self.domains == 1:
            del out["domains"]
        if self.domains == 1 or self.domain_embedding == "joint":
            del out["domain_embedding"]
        return out


def parse_channels(value: str) -> tuple[int, ...]:
    """``"16,32"`` -> ``(16, 32)``; a clear error naming the value otherwise."""
    try:
        channels = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise ValueError(
            f"unet-channels={value!r}: expected comma-separated integers such as '32,64'"
        ) from None
    UNetSpec(channels=channels).validate()
    return channels


def _shared_config(spec: UNetSpec) -> dict[str, object]:
    """The keys both UNet variants take from ``spec`` alike."""
    return {
        "sample_size": UNET_SIZE,
        "in_channels": spec.in_channels,
        "out_channels": spec.in_channels,
        "block_out_channels": list(spec.channels),
        "layers_per_block": spec.layers_per_block,
    }


def unet_config(spec: UNetSpec) -> dict[str, object]:
    """The ``UNet2DModel`` config of ``spec`` (plain ResNet blocks, optional mid attention)."""
    spec.validate()
    if spec.cross_attention:
        return cross_attention_config(spec)
    levels = len(spec.channels)
    return {
        **_shared_config(spec),
        "down_block_types": ["DownBlock2D"] * levels,
        "up_block_types": ["UpBlock2D"] * levels,
        "norm_num_groups": spec.norm_groups,
        "add_attention": spec.attention,
        "attention_head_dim": spec.channels[-1] if spec.attention else None,
        "num_class_embeds": spec.num_embeddings,
    }


def cross_attention_config(spec: UNetSpec) -> dict[str, object]:
    """The ``UNet2DConditionModel`` config of a cross-attention ``spec``.

    Cross-attention (``CrossAttnDownBlock2D`` / ``CrossAttnUpBlock2D``) at the lowest-resolution
    level only, where attention over the H×W positions is cheapest, plus the mid block
    (``UNetMidBlock2DCrossAttn``); with one level, only the mid block, since self-attention
    over all 32×32 positions would cost 1024² scores per head.  ``cross_attention_dim`` is the
    last width.  diffusers' ``attention_head_dim`` is, for this model, the number of heads
    per level (its documented naming issue), here width / :data:`ATTENTION_HEAD_DIM`.
    """
    levels = len(spec.channels)
    attend = levels >= 2  # the last level cross-attends (mid block: always)
    return {
        **_shared_config(spec),
        "down_block_types": ["DownBlock2D"] * (levels - 1)
        + ["CrossAttnDownBlock2D" if attend else "DownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D" if attend else "UpBlock2D"]
        + ["UpBlock2D"] * (levels - 1),
        "norm_num_groups": spec.norm_groups,
        "cross_attention_dim": spec.channels[-1],
        "attention_head_dim": [max(1, c // ATTENTION_HEAD_DIM) for c in spec.channels],
        "num_class_embeds": spec.num_embeddings,  # the label also enters the time embedding
    }


class CrossAttentionUNet(nn.Module):
    """``UNet2DConditionModel`` cross-attending to the class prompt [BOS, label].

    ``tokens`` is a learned (classes + 1) × ``cross_attention_dim`` table; the prompt of label
    y is the rows (BOS, y + 1), a two-token ``encoder_hidden_states`` (the BOS token is what
    every prompt shares, as a text encoder's start token; DGQ keeps its attention column in
    full precision).  Callable as ``UNet2DModel``: ``unet(x, t, class_labels=y).sample``.
    """

    def __init__(self, config: dict[str, Any], num_classes: int) -> None:
        super().__init__()
        self.unet = UNet2DConditionModel(**config)
        self.tokens = nn.Embedding(num_classes + 1, int(config["cross_attention_dim"]))

    @property
    def config(self) -> Any:
        return self.unet.config

    @property
    def mid_block(self) -> nn.Module:
        return self.unet.mid_block

    def prompt(self, class_labels: torch.Tensor) -> torch.Tensor:
        """(N,) labels -> the (N, 2, cross_attention_dim) sequence [BOS, label]."""
        ids = torch.stack([torch.full_like(class_labels, BOS), class_labels + 1], dim=1)
        return self.tokens(ids)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        class_labels: torch.Tensor,
        return_dict: bool = True,
    ) -> Any:
        return self.unet(
            sample,
            timestep,
            self.prompt(class_labels),
            class_labels=class_labels,
            return_dict=return_dict,
        )


# What build_unet returns; every caller uses only their shared interface (module docstring).
DiffusionUNet = UNet2DModel | CrossAttentionUNet


class AddedDomainEmbedding(nn.Module):
    """Embedding of condition ``domain · 10 + class`` as class row + domain row.

    A joint table gives each (class, domain) its own row, trained only by that domain's client;
    here the class rows see every client's data and a domain row shifts them, the additive
    form of a class embedding plus a second (domain) embedding.

    With ``guidance`` the label ``num_classes · domains`` (:attr:`UNetSpec.null_label`) is the
    null condition of classifier-free guidance: a row of its own, no class and no domain, so
    the guided direction (conditional − null) carries both.
    """

    def __init__(self, num_classes: int, domains: int, dim: int, guidance: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.null_label = num_classes * domains if guidance else None
        self.classes = nn.Embedding(num_classes, dim)
        self.domains = nn.Embedding(domains, dim)
        if guidance:
            self.null = nn.Parameter(torch.zeros(dim))

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.null_label is None:
            return self.classes(labels % self.num_classes) + self.domains(
                labels // self.num_classes
            )
        is_null = labels == self.null_label
        safe = torch.where(is_null, torch.zeros_like(labels), labels)
        out = self.classes(safe % self.num_classes) + self.domains(safe // self.num_classes)
        return torch.where(is_null.unsqueeze(-1), self.null.to(out.dtype), out)


def build_unet(spec: UNetSpec, seed: int) -> DiffusionUNet:
    """A randomly initialised UNet whose weights depend only on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.cross_attention:
            return CrossAttentionUNet(unet_config(spec), spec.num_embeddings)
        unet = UNet2DModel(**unet_config(spec))
        if spec.domains > 1 and spec.domain_embedding == "added":
            # UNet2DModel adds class_embedding(class_labels) to the time embedding.
            dim = unet.class_embedding.embedding_dim
            unet.class_embedding = AddedDomainEmbedding(
                spec.num_classes, spec.domains, dim, guidance=spec.guidance
            )
        return unet


def unet_output(
    unet: DiffusionUNet, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """The network output (here a v-prediction) for noisy ``x_t`` at integer timesteps ``t``."""
    return unet(x_t, t, class_labels=labels).sample


def condition_labels(
    classes: torch.Tensor, domains: torch.Tensor | int, num_domains: int
) -> torch.Tensor:
    """The class-embedding index of (class, domain): ``domain · 10 + class``; with one domain
    (an unconditioned UNet) the class itself, whatever ``domains`` says."""
    if num_domains == 1:
        return classes
    return classes + NUM_CLASSES * torch.as_tensor(domains, dtype=classes.dtype)


def split_condition(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`condition_labels`: (classes, domains)."""
    return labels % NUM_CLASSES, labels // NUM_CLASSES


def pad_images(x: torch.Tensor) -> torch.Tensor:
    """(N, C, 28, 28) -> (N, C, 32, 32) by edge replication."""
    if x.shape[-1] == UNET_SIZE:
        return x
    return F.pad(x, (_PAD, _PAD, _PAD, _PAD), mode="replicate")


def crop_images(x: torch.Tensor) -> torch.Tensor:
    """(N, C, 32, 32) -> the central (N, C, 28, 28)."""
    if x.shape[-1] == IMAGE_SIZE:
        return x
    return x[..., _PAD : _PAD + IMAGE_SIZE, _PAD : _PAD + IMAGE_SIZE]
