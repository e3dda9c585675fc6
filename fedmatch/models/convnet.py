"""The ConvNet used throughout the dataset-distillation literature.

Follows ``ConvNet`` in the Dataset Condensation / DSA / Distribution Matching code
(Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021; Zhao & Bilen,
"Dataset Condensation with Distribution Matching", WACV 2023;
https://github.com/VICO-UoE/DatasetCondensation ``networks.py``): ``depth`` blocks of
conv3x3 -> norm -> activation -> 2x2 pooling, then one linear classifier on the flattened
features. FedLGD and related federated distillation methods use it as the default backbone.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "NORMS", "POOLINGS", "ConvNet", "make_norm2d"]

NORMS: tuple[str, ...] = ("instancenorm", "batchnorm", "groupnorm", "layernorm", "none")
ACTIVATIONS: tuple[str, ...] = ("relu", "leakyrelu", "sigmoid")
POOLINGS: tuple[str, ...] = ("avgpool", "maxpool", "none")

# The DC/DM code's "groupnorm" option uses four groups.
GROUPNORM_GROUPS = 4


def make_norm2d(norm: str, channels: int, spatial: tuple[int, int] | None = None) -> nn.Module:
    """Build the normalisation layer named ``norm`` for a ``channels``-channel feature map.

    "instancenorm" is ``GroupNorm(C, C, affine=True)`` exactly as in the DC/DM code: numerically
    instance norm, but with affine parameters and no running statistics, so the model behaves
    identically in train and eval mode. "layernorm" needs the ``spatial`` size because, as in
    DC, it normalises over the whole (C, H, W) map.
    """
    if norm == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "batchnorm":
        return nn.BatchNorm2d(channels, affine=True)
    if norm == "groupnorm":
        if channels % GROUPNORM_GROUPS:
            raise ValueError(
                f"norm='groupnorm' needs a channel count divisible by {GROUPNORM_GROUPS}, "
                f"got {channels}"
            )
        return nn.GroupNorm(GROUPNORM_GROUPS, channels, affine=True)
    if norm == "layernorm":
        if spatial is None:
            raise ValueError("norm='layernorm' needs the feature-map size")
        return nn.LayerNorm([channels, *spatial], elementwise_affine=True)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; allowed: {', '.join(NORMS)}")


def _make_activation(act: str) -> nn.Module:
    if act == "relu":
        return nn.ReLU(inplace=True)
    if act == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.01)
    if act == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown act {act!r}; allowed: {', '.join(ACTIVATIONS)}")


def _make_pooling(pooling: str) -> nn.Module | None:
    if pooling == "avgpool":
        return nn.AvgPool2d(kernel_size=2, stride=2)
    if pooling == "maxpool":
        return nn.MaxPool2d(kernel_size=2, stride=2)
    if pooling == "none":
        return None
    raise ValueError(f"unknown pooling {pooling!r}; allowed: {', '.join(POOLINGS)}")


class ConvNet(nn.Module):
    """DC/DM ConvNet: ``depth`` x [conv3x3(pad 1) -> norm -> act -> pool2] -> Linear.

    With the defaults a 3x28x28 input gives 128x3x3 features (28 -> 14 -> 7 -> 3).

    The feature size is computed from the real ``image_size``.  ``first_padding=3`` is the
    reference code's MNIST network (it treats 28x28 inputs as 32x32 and pads the first conv by
    3): 28 -> 32 -> 16 -> 8 -> 4, 128x4x4 features, where the default padding of 1 pools
    28 -> 14 -> 7 -> 3 and the last pooling drops the 7th row and column.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        width: int = 128,
        depth: int = 3,
        norm: str = "instancenorm",
        act: str = "relu",
        pooling: str = "avgpool",
        image_size: int | tuple[int, int] = 28,
        first_padding: int = 1,
    ) -> None:
        super().__init__()
        if first_padding < 0:
            raise ValueError(f"first_padding must be >= 0, got {first_padding}")
        if depth < 1 or width < 1 or in_channels < 1 or num_classes < 1:
            raise ValueError(
                "in_channels, num_classes, width and depth must be positive, got "
                f"{in_channels}, {num_classes}, {width}, {depth}"
            )
        height, wide = (image_size, image_size) if isinstance(image_size, int) else image_size
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(depth):
            padding = first_padding if i == 0 else 1
            layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=padding))
            height, wide = height + 2 * padding - 2, wide + 2 * padding - 2
            # Like the DC code, "none" adds no layer at all (not even an Identity).
            if norm != "none":
                layers.append(make_norm2d(norm, width, (height, wide)))
            layers.append(_make_activation(act))
            pool = _make_pooling(pooling)
            if pool is not None:
                layers.append(pool)
                height, wide = height // 2, wide // 2
            channels = width
        if height < 1 or wide < 1:
            raise ValueError(
                f"image_size={image_size!r} is too small for depth={depth} with pooling"
            )
        self.features = nn.Sequential(*layers)
        self.feature_dim: int = width * height * wide
        self.feature_shape: tuple[int, int, int] = (width, height, wide)
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features before the classifier, shape (N, feature_dim)."""
        return torch.flatten(self.features(x), start_dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
