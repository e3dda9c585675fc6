"""Real int8 kernels: a calibrated W8A8 layer and its torch int8 counterpart agree."""

from __future__ import annotations

import copy

import pytest
import torch

from fedmatch.diffusion.unet import UNetSpec, build_unet
from fedmatch.quant.calibrate import calibrate, trajectory_batches
from fedmatch.quant.int8 import (
    Int8DropIn,
    Int8Unsupported,
    capture_inputs,
    int8_layer,
    layer_latency,
    quantize_input,
    to_int8_unet,
)
from fedmatch.quant.qmodules import QuantSpec, quant_layers, quantize_unet, set_quant_state

TINY = UNetSpec(channels=(8, 16))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _calibrated(method: str, weight_bits: int = 8, act_bits: int = 8):
    unet = build_unet(TINY, 0).eval()
    labels = torch.arange(8) % 10
    batches, _ = trajectory_batches(
        unet, labels, steps=3, generator=torch.Generator().manual_seed(0), feature_hook=None
    )
    q = quantize_unet(copy.deepcopy(unet), QuantSpec(weight_bits, act_bits, method))
    calibrate(q, batches)
    return q, batches


def test_int8_kernels_reproduce_the_fake_quant_layers():
    q, batches = _calibrated("naive")
    b = batches[1]
    captured = capture_inputs(q, b.x, b.t, b.labels)
    layers = dict(quant_layers(q))
    assert set(captured) == set(layers)
    for name, (inp, out) in captured.items():
        layer = layers[name]
        int8 = int8_layer(layer, (float(out.min()), float(out.max())))
        with torch.no_grad():
            real = int8(quantize_input(layer, inp)).dequantize()
        # fake-quant output = the exact integer product in float; the int8 kernel adds the
        # requantization of its output (uniform rounding: mean a quarter step) and, where
        # torch rounds x * (1 / s) and fake-quant x / s to different integers, a rare
        # one-step input difference
        err = (real - out).abs() / int8.scale
        assert float(err.mean()) < 0.3, name
        assert float(err.max()) <= 1.0, name
        # and the kernel is really int8
        assert int8.weight().dtype == torch.qint8


def test_only_w8a8_per_tensor_layers_map_onto_int8_kernels():
    q4, _ = _calibrated("naive", weight_bits=4)
    layer = next(layer for name, layer in quant_layers(q4) if name not in ("conv_in", "conv_out"))
    with pytest.raises(Int8Unsupported, match="W4A8"):
        int8_layer(layer, (-1.0, 1.0))
    dgq, batches = _calibrated("dgq")
    timings, skipped = layer_latency(dgq, batches[0].x, batches[0].t, batches[0].labels, 2)
    # DGQ's grouped activations (4-D inputs) have no int8 layout; the 2-D time MLP does
    assert skipped and all(t.kind == "linear" for t in timings)
    assert set(skipped).isdisjoint(t.name for t in timings)


def test_layer_latency_times_every_w8a8_layer():
    q, batches = _calibrated("naive")
    b = batches[0]
    timings, skipped = layer_latency(q, b.x, b.t, b.labels, repeats=2)
    assert not skipped
    assert {t.name for t in timings} == {name for name, _ in quant_layers(q)}
    assert all(t.float_ms > 0 and t.int8_ms > 0 and t.int8_qdq_ms >= 0 for t in timings)
    assert {t.kind for t in timings} == {"conv", "linear"}


def test_the_int8_unet_adds_only_output_requantization_error():
    q, batches = _calibrated("naive")
    int8_unet, kept = to_int8_unet(q, batches)
    assert not kept
    assert sum(isinstance(m, Int8DropIn) for m in int8_unet.modules()) == len(dict(quant_layers(q)))
    b = batches[2]
    steps = torch.full((len(b.labels),), b.t)
    with torch.no_grad():
        fake = q(b.x, steps, class_labels=b.labels).sample
        real = int8_unet(b.x, steps, class_labels=b.labels).sample
        set_quant_state(q, weights=False, acts=False)
        exact = q(b.x, steps, class_labels=b.labels).sample

    def rel(a, ref) -> float:
        return float((a - ref).pow(2).mean() / ref.pow(2).mean())

    # W8A8 fake-quant is ~1e-3 from float here; the kernels' per-layer output rounding
    # (35 layers) adds about as much again, not more
    assert 0 < rel(real, fake) < 3 * rel(fake, exact)
    assert rel(real, exact) < 1e-2
