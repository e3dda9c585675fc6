"""ResNet-18 for small images.

He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, in the
CIFAR-style variant used by the DC/DM code (https://github.com/VICO-UoE/DatasetCondensation
``networks.py``): a 3x3 stride-1 stem without max-pooling, because a 7x7/2 stem plus pooling
would shrink a 28x28 digit to 7x7 before the first residual stage.
"""

from __future__ import annotations

import torch
from torch import nn

from fedmatch.models.convnet import make_norm2d

__all__ = ["BasicBlock", "ResNet18"]


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = make_norm2d(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = make_norm2d(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                make_norm2d(norm, planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: BasicBlocks [2, 2, 2, 2] with widths ``width * (1, 2, 4, 8)``.

    ``norm`` is "batchnorm" (the paper's choice), "instancenorm" (``GroupNorm(C, C)`` as in the
    DC code), "groupnorm" (four groups) or "none". Global average pooling makes the model
    accept any input size; ``feature_dim`` is ``8 * width`` (512 by default).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        width: int = 64,
        norm: str = "batchnorm",
    ) -> None:
        super().__init__()
        if norm == "layernorm":
            # LayerNorm over (C, H, W) would tie the model to one input size.
            raise ValueError("ResNet18 does not support norm='layernorm'")
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = make_norm2d(norm, width)
        self.relu = nn.ReLU(inplace=True)
        in_planes = width
        stages: list[nn.Module] = []
        for i, num_blocks in enumerate((2, 2, 2, 2)):
            planes = width * 2**i
            blocks = []
            for j in range(num_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, norm))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim: int = in_planes
        self.classifier = nn.Linear(in_planes, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled features before the classifier, shape (N, feature_dim)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(self.pool(out), start_dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
