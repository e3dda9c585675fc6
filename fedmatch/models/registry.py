"""Name -> model builder registry, plus the FedBN helper that finds normalisation state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from fedmatch.models.convnet import ConvNet
from fedmatch.models.fedka_cnn import FedKACNN
from fedmatch.models.resnet import ResNet18

__all__ = [
    "MODEL_REGISTRY",
    "NORM_LAYER_TYPES",
    "build_model",
    "norm_parameter_names",
    "register_model",
]

ModelBuilder = Callable[..., nn.Module]
_B = TypeVar("_B", bound=ModelBuilder)

MODEL_REGISTRY: dict[str, ModelBuilder] = {}

# Every layer whose parameters/statistics describe a client's feature distribution; FedBN
# (Li et al., ICLR 2021) keeps exactly these local. SyncBatchNorm subclasses _BatchNorm.
NORM_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    _BatchNorm,
    _InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def register_model(name: str) -> Callable[[_B], _B]:
    """Decorator registering ``builder(**kwargs) -> nn.Module`` under ``name``."""

    def decorator(builder: _B) -> _B:
        if name in MODEL_REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        MODEL_REGISTRY[name] = builder
        return builder

    return decorator


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the registered model ``name`` with the builder's keyword arguments."""
    try:
        builder = MODEL_REGISTRY[name]
    except KeyError:
        allowed = ", ".join(sorted(MODEL_REGISTRY))
        raise ValueError(f"unknown model {name!r}; allowed: {allowed}") from None
    return builder(**kwargs)


def norm_parameter_names(model: nn.Module) -> set[str]:
    """State-dict keys (weights, biases, running stats, ``num_batches_tracked``) of norm layers.

    Keys are read from each norm module's own ``state_dict`` so non-persistent buffers are
    excluded exactly as they are from ``model.state_dict()``.
    """
    model_keys = set(model.state_dict())
    names: set[str] = set()
    for prefix, module in model.named_modules():
        if isinstance(module, NORM_LAYER_TYPES):
            for key in module.state_dict():
                full = f"{prefix}.{key}" if prefix else key
                if full in model_keys:
                    names.add(full)
    return names


# The classes themselves are the builders, so inspect.signature(MODEL_REGISTRY[name]) shows
# which keyword arguments a config may pass.
register_model("convnet")(ConvNet)
register_model("resnet18")(ResNet18)
register_model("fedka-cnn")(FedKACNN)
