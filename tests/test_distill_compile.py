"""torch.compile for DM (issue 29): one graph for every step's network, the same loss and steps."""

from __future__ import annotations

import logging

import pytest
import torch
import torch._dynamo

from fedmatch.distill.common import fresh_convnet
from fedmatch.distill.compiled import Embedder
from fedmatch.distill.dm import distill_dm
from tests.test_distill import TINY_NET, toy_digits

# Tiny tensors: on a busy machine, thread barriers would cost more than the arithmetic.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _net(seed: int, norm: str = "instancenorm") -> torch.nn.Module:
    spec = {**TINY_NET, "norm": norm}
    return fresh_convnet(spec, in_channels=3, num_classes=3, image_size=12, seed=seed, device="cpu")


def test_one_compiled_graph_embeds_every_network_of_the_architecture_like_eager():
    torch._dynamo.reset()
    images, _ = toy_digits(n_per_class=4)
    embedder = Embedder(_net(0), compile=True)
    assert embedder.compiled
    nets = [_net(seed) for seed in (11, 12, 13)]
    for net in nets:
        with torch.no_grad():
            compiled, eager = embedder(net, images), net.embed(images)
        # Each network's own embedding (not the template's): networks differ by far more.
        assert torch.allclose(compiled, eager, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(nets[0].embed(images), nets[1].embed(images), atol=1e-2)
    # The gradient through the compiled graph is the eager one.
    syn = images[:3].clone().requires_grad_(True)
    (grad_compiled,) = torch.autograd.grad(embedder(nets[2], syn).square().sum(), [syn])
    (grad_eager,) = torch.autograd.grad(nets[2].embed(syn).square().sum(), [syn])
    assert torch.allclose(grad_compiled, grad_eager, rtol=1e-4, atol=1e-5)
    # Traced once per (shape, autograd mode), not once per network: no recompilation.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2
    assert embedder.compiled


def test_compiled_dm_takes_the_same_steps_as_eager():
    images, labels = toy_digits(n_per_class=8)

    def run(steps: int, compile: bool):
        return distill_dm(
            images, labels, 2, steps, num_classes=3, batch_real=4, net=TINY_NET,
            generator=torch.Generator().manual_seed(5), compile=compile,
        )  # fmt: skip

    runs = {flag: run(3, flag) for flag in (False, True)}
    (eager, eager_labels, eager_hist), (comp, comp_labels, comp_hist) = runs[False], runs[True]
    assert torch.equal(eager_labels, comp_labels)
    assert comp_hist.losses == pytest.approx(eager_hist.losses, rel=1e-4)
    start = run(0, False)[0]
    moved = (eager - start).abs().max()
    assert moved > 1e-2  # the steps do move the images...
    assert (comp - eager).abs().max() < 1e-3 * moved  # ...and compiled ones move them alike
    again, _, again_hist = run(3, True)  # deterministic: the same compiled run, bit for bit
    assert torch.equal(again, comp) and again_hist.losses == comp_hist.losses


def test_networks_with_running_statistics_embed_eagerly(caplog):
    embedder = Embedder(_net(0, norm="batchnorm"), compile=True)
    assert not embedder.compiled
    images, _ = toy_digits(n_per_class=2)
    net = _net(3, norm="batchnorm")
    twin = _net(3, norm="batchnorm")
    assert torch.equal(embedder(net, images), twin.embed(images))
    # Running statistics are updated as in eager training mode.
    assert torch.equal(net.features[1].running_mean, twin.features[1].running_mean)


def test_a_failing_compilation_falls_back_to_eager_with_a_warning(caplog, monkeypatch):
    embedder = Embedder(_net(0), compile=True)

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(embedder, "_compiled", broken)
    images, _ = toy_digits(n_per_class=2)
    net = _net(4)
    with caplog.at_level(logging.WARNING, logger="fedmatch.distill.compiled"):
        out = embedder(net, images)
    assert torch.equal(out, net.embed(images))
    assert not embedder.compiled
    assert "torch.compile failed (RuntimeError: no C++ compiler found)" in caplog.text
