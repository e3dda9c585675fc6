"""Tests for fedmatch.models: shapes, norm options, FedBN key selection, determinism, learning."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from fedmatch.models.convnet import ConvNet
from fedmatch.models.registry import (
    MODEL_REGISTRY,
    build_model,
    norm_parameter_names,
    register_model,
)
from fedmatch.models.resnet import ResNet18

BATCH = 4


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(BATCH, 3, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("name", "kwargs", "feature_dim"),
    [
        ("convnet", {}, 128 * 3 * 3),  # 28 -> 14 -> 7 -> 3
        ("convnet", {"width": 32, "depth": 2}, 32 * 7 * 7),
        ("convnet", {"pooling": "none", "depth": 1, "width": 8}, 8 * 28 * 28),
        ("resnet18", {}, 512),
        ("resnet18", {"width": 16}, 128),
    ],
)
def test_output_and_embedding_shapes(
    images: torch.Tensor, name: str, kwargs: dict, feature_dim: int
) -> None:
    model = build_model(name, **kwargs)
    model.eval()
    with torch.no_grad():
        logits = model(images)
        features = model.embed(images)
    assert model.feature_dim == feature_dim
    assert logits.shape == (BATCH, 10)
    assert features.shape == (BATCH, feature_dim)
    # forward must be exactly the classifier applied to embed
    torch.testing.assert_close(model.classifier(features), logits)


@pytest.mark.parametrize("norm", ["instancenorm", "batchnorm", "groupnorm", "layernorm", "none"])
@pytest.mark.parametrize("act", ["relu", "leakyrelu", "sigmoid"])
@pytest.mark.parametrize("pooling", ["avgpool", "maxpool"])
def test_convnet_every_option_builds_and_runs(
    images: torch.Tensor, norm: str, act: str, pooling: str
) -> None:
    model = ConvNet(width=16, norm=norm, act=act, pooling=pooling)
    out = model(images)
    assert out.shape == (BATCH, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("norm", ["batchnorm", "instancenorm", "groupnorm", "none"])
def test_resnet18_every_norm_builds_and_runs(images: torch.Tensor, norm: str) -> None:
    model = ResNet18(width=8, norm=norm)
    out = model(images)
    assert out.shape == (BATCH, 10)
    out.sum().backward()


def test_convnet_instancenorm_is_per_channel_groupnorm() -> None:
    norms = [m for m in ConvNet(width=32).modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 3
    assert all(m.num_groups == m.num_channels == 32 and m.affine for m in norms)


def test_convnet_first_padding_is_the_reference_mnist_network() -> None:
    """first_padding=3: 28 -> 32 -> 16 -> 8 -> 4 (the reference code's MNIST ConvNet); the
    default pools 28 -> 14 -> 7 -> 3.  Same layers in the same order, so the same seed gives
    the same weights whatever the padding."""
    torch.manual_seed(0)
    padded = ConvNet(in_channels=1, first_padding=3)
    torch.manual_seed(0)
    plain = ConvNet(in_channels=1)
    assert padded.feature_shape == (128, 4, 4) and plain.feature_shape == (128, 3, 3)
    assert padded.features[0].padding == (3, 3) and padded.features[4].padding == (1, 1)
    assert torch.equal(padded.features[0].weight, plain.features[0].weight)
    assert padded.embed(torch.randn(2, 1, 28, 28)).shape == (2, 128 * 16)
    with pytest.raises(ValueError, match="first_padding must be >= 0, got -1"):
        ConvNet(first_padding=-1)


def test_convnet_single_channel_and_other_sizes() -> None:
    model = ConvNet(in_channels=1, num_classes=7, width=8, image_size=32)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    assert model.feature_dim == 8 * 4 * 4


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (ConvNet(depth=3, norm="instancenorm"), 6),  # 3 GroupNorms x (weight, bias)
        (ConvNet(depth=3, norm="groupnorm"), 6),
        (ConvNet(depth=3, norm="layernorm"), 6),
        (ConvNet(depth=3, norm="batchnorm"), 15),  # + running_mean/var, num_batches_tracked
        (ConvNet(depth=3, norm="none"), 0),
        # stem + 8 blocks x 2 + 3 projection shortcuts = 20 BatchNorms x 5 keys
        (ResNet18(norm="batchnorm"), 100),
        (ResNet18(norm="instancenorm"), 40),
    ],
)
def test_norm_parameter_names_counts(model: nn.Module, expected: int) -> None:
    names = norm_parameter_names(model)
    assert len(names) == expected
    assert names <= set(model.state_dict())


def test_norm_parameter_names_exact_keys() -> None:
    model = ConvNet(depth=2, width=8, norm="batchnorm")
    norm_keys = {
        f"features.{i}.{k}"
        for i in (1, 5)
        for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }
    assert norm_parameter_names(model) == norm_keys
    # nothing from convs or the classifier leaks in
    other = set(model.state_dict()) - norm_keys
    assert other == {
        "features.0.weight",
        "features.0.bias",
        "features.4.weight",
        "features.4.bias",
        "classifier.weight",
        "classifier.bias",
    }


def test_norm_parameter_names_on_nested_and_plain_norms() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Sequential(nn.InstanceNorm2d(3)))
    assert norm_parameter_names(model) == {"1.weight", "1.bias"}  # InstanceNorm2d: no state


@pytest.mark.parametrize("name", ["convnet", "resnet18"])
def test_same_seed_same_initial_weights(name: str) -> None:
    torch.manual_seed(123)
    a = build_model(name, width=8)
    torch.manual_seed(123)
    b = build_model(name, width=8)
    torch.manual_seed(124)
    c = build_model(name, width=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


def test_convnet_overfits_a_tiny_batch() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 3, 28, 28)
    y = torch.randint(0, 10, (16,))
    model = ConvNet(width=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    start = loss_fn(model(x), y).item()
    for _ in range(100):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    final = loss_fn(model(x), y).item()
    assert final < 0.1 * start, (start, final)
    assert (model(x).argmax(1) == y).all()


def test_unknown_model_name_lists_allowed() -> None:
    # Sorted names of every registered model (more are added as methods need them).
    with pytest.raises(ValueError, match=r"'vgg11'.*allowed: convnet, .*resnet18"):
        build_model("vgg11")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"norm": "weirdnorm"}, r"'weirdnorm'.*instancenorm"),
        ({"act": "gelu"}, r"'gelu'.*relu"),
        ({"pooling": "lp"}, r"'lp'.*avgpool"),
        ({"depth": 6}, "too small"),
        ({"width": 6, "norm": "groupnorm"}, "divisible"),
    ],
)
def test_convnet_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ConvNet(**kwargs)


def test_register_model_adds_and_rejects_duplicates() -> None:
    name = "tiny-test-model"
    try:

        @register_model(name)
        def _tiny(num_classes: int = 10) -> nn.Module:
            return nn.Linear(3 * 28 * 28, num_classes)

        assert MODEL_REGISTRY[name] is _tiny
        assert isinstance(build_model(name, num_classes=3), nn.Linear)
        with pytest.raises(ValueError, match="already registered"):
            register_model(name)(_tiny)
    finally:
        MODEL_REGISTRY.pop(name, None)


def test_registry_builders_expose_their_signature() -> None:
    assert set(MODEL_REGISTRY) >= {"convnet", "resnet18"}
    params = inspect.signature(MODEL_REGISTRY["convnet"]).parameters
    assert {"width", "depth", "norm", "image_size"} <= set(params)
