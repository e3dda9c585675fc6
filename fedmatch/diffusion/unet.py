"""A small class-conditional diffusers ``UNet2DModel`` built from a config (no downloads).

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

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from fedmatch.data.types import IMAGE_SHAPE, NUM_CLASSES

IMAGE_SIZE = IMAGE_SHAPE[1]  # 28
UNET_SIZE = 32
_PAD = (UNET_SIZE - IMAGE_SIZE) // 2
MAX_LEVELS = 4  # 32 -> 16 -> 8 -> 4


@dataclass(frozen=True)
class UNetSpec:
    """What :func:`build_unet` builds: widths per level, blocks per level, mid attention."""

    channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    attention: bool = False
    norm_groups: int = 8
    in_channels: int = IMAGE_SHAPE[0]
    num_classes: int = NUM_CLASSES

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
        return self

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "channels": list(self.channels)}


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


def unet_config(spec: UNetSpec) -> dict[str, object]:
    """The ``UNet2DModel`` config of ``spec`` (plain ResNet blocks, optional mid attention)."""
    spec.validate()
    levels = len(spec.channels)
    return {
        "sample_size": UNET_SIZE,
        "in_channels": spec.in_channels,
        "out_channels": spec.in_channels,
        "block_out_channels": list(spec.channels),
        "layers_per_block": spec.layers_per_block,
        "down_block_types": ["DownBlock2D"] * levels,
        "up_block_types": ["UpBlock2D"] * levels,
        "norm_num_groups": spec.norm_groups,
        "add_attention": spec.attention,
        "attention_head_dim": spec.channels[-1] if spec.attention else None,
        "num_class_embeds": spec.num_classes,
    }


def build_unet(spec: UNetSpec, seed: int) -> UNet2DModel:
    """A randomly initialised UNet whose weights depend only on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(**unet_config(spec))


def unet_output(
    unet: UNet2DModel, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """The network output (here a v-prediction) for noisy ``x_t`` at integer timesteps ``t``."""
    return unet(x_t, t, class_labels=labels).sample


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
