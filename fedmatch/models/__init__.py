"""Model zoo: the DC/DM ConvNet, a small-image ResNet-18 and FedKA's digit CNN, built by name."""

from __future__ import annotations

from fedmatch.models.convnet import ConvNet
from fedmatch.models.fedka_cnn import FedKACNN
from fedmatch.models.registry import (
    MODEL_REGISTRY,
    build_model,
    norm_parameter_names,
    register_model,
)
from fedmatch.models.resnet import ResNet18

__all__ = [
    "MODEL_REGISTRY",
    "ConvNet",
    "FedKACNN",
    "ResNet18",
    "build_model",
    "norm_parameter_names",
    "register_model",
]
