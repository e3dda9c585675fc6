"""Post-training quantization: quantizer error bounds, DGQ groups, EDA-DM selection and FBR."""

from __future__ import annotations

import copy

import pytest
import torch

from fedmatch.diffusion.unet import UNetSpec, build_unet
from fedmatch.quant.calibrate import (
    CalibBatch,
    calibrate,
    export_stats,
    load_stats,
    merge_stats,
    trajectory_batches,
)
from fedmatch.quant.dgq import GroupActQuantizer, kmeans_groups
from fedmatch.quant.edadm import allocate, select_samples, tdac_weights
from fedmatch.quant.qmodules import (
    QuantSpec,
    model_size_bytes,
    parse_bits,
    quant_layers,
    quantize_unet,
    set_quant_state,
)
from fedmatch.quant.quantizers import ActQuantizer, LogQuantizer, WeightQuantizer, uniform_params
from fedmatch.quant.reconstruct import (
    ReconSettings,
    block_error,
    reconstruct_block,
    reconstruction_blocks,
)
from tests.flower_harness import make_config

TINY = UNetSpec(channels=(8, 16))
TINY_XATTN = UNetSpec(channels=(8, 16), cross_attention=True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("bits", [4, 8])
def test_weight_quantizer_per_channel_error_at_most_half_a_step(bits):
    g = torch.Generator().manual_seed(0)
    # channels with very different magnitudes: per-channel scales must follow each
    w = torch.randn(6, 4, 3, 3, generator=g) * torch.logspace(-3, 1, 6).view(-1, 1, 1, 1)
    q = WeightQuantizer(w, bits)
    err = (q(w) - w).abs().flatten(1).amax(dim=1)
    step = w.abs().flatten(1).amax(dim=1) / (2 ** (bits - 1) - 1)
    assert torch.all(err <= step / 2 + 1e-7)
    assert torch.all(err > 0)  # the grid is coarse enough to round something
    ints = q.integer_weight(w)
    assert ints.dtype == torch.int8 and int(ints.abs().max()) <= 2 ** (bits - 1)
    # at most 2^bits distinct values per channel
    assert all(len(torch.unique(q(w)[c])) <= 2**bits for c in range(6))


def test_weight_quantizer_mse_init_is_no_worse_than_minmax():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 32, generator=g)
    w[0, 0] = 12.0  # one outlier weight: min-max wastes the grid on it
    errs = {}
    for init in ("minmax", "mse"):
        q = WeightQuantizer(w, 4, init)
        errs[init] = (q(w) - w).pow(2).sum(dim=1)
    assert torch.all(errs["mse"] <= errs["minmax"] + 1e-6)
    assert float(errs["mse"][0]) < float(errs["minmax"][0])


@pytest.mark.parametrize("bits", [4, 8])
def test_activation_quantizer_per_timestep_error_bound(bits):
    g = torch.Generator().manual_seed(2)
    q = ActQuantizer(bits, per_timestep=True)
    q.calibrating = True
    data = {
        999: torch.randn(4, 3, 5, 5, generator=g) * 5 + 2,
        0: torch.rand(4, 3, 5, 5, generator=g),
    }
    for t, x in data.items():
        q.timestep = t
        q(x)
    q.freeze()
    for t, x in data.items():
        q.timestep = t
        scale, _ = uniform_params(x.min(), x.max(), bits, symmetric=False)
        err = (q(x) - x).abs().max()
        assert float(err) <= float(scale) / 2 + 1e-6
    # the two timesteps keep their own ranges: t=0's grid is much finer than t=999's
    q.timestep = 0
    fine, _ = q.params()
    q.timestep = 999
    coarse, _ = q.params()
    assert float(fine) < float(coarse) / 10
    # a shared range (EDA-DM's choice) is coarser at t=0
    shared = ActQuantizer(bits, per_timestep=False)
    shared.calibrating = True
    for t, x in data.items():
        shared.timestep = t
        shared(x)
    shared.freeze()
    shared.timestep = 0
    q.timestep = 0
    x0 = data[0]
    assert float((shared(x0) - x0).abs().mean()) > float((q(x0) - x0).abs().mean())


def test_zero_is_exact_on_the_activation_grid():
    q = ActQuantizer(4, per_timestep=False)
    q.calibrating = True
    q(torch.tensor([0.3, 1.7, 5.1]))  # all positive: the range is widened to include 0
    q.freeze()
    assert float(q(torch.zeros(3)).abs().max()) == 0.0


def test_log_quantizer_keeps_relative_precision_of_large_probabilities():
    g = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(2, 4, 16, 10, generator=g) * 3, dim=-1)
    q = LogQuantizer(4)(p)
    m = p.max()
    big = p >= m * 2.0**-14
    # rounding the exponent: relative error of at most 2^0.5 − 1 on representable values
    rel = ((q[big] - p[big]).abs() / p[big]).max()
    assert float(rel) <= 2**0.5 - 1 + 1e-6
    assert float(q.max()) == pytest.approx(float(m))
    assert torch.all(q[~big] <= m * 2.0**-14)
    # codes are powers of two times the max: at most 2^bits values (incl. zero)
    assert len(torch.unique(q)) <= 2**4


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_log_quantizer_per_sample_levels_are_powers_of_two_of_each_max(bits):
    g = torch.Generator().manual_seed(7)
    # three "prompts" whose attention peaks differ: 0.9, 0.3, 0.05 times a softmax
    p = torch.softmax(torch.randn(3, 2, 12, 6, generator=g) * 4, dim=-1)
    p = p * torch.tensor([0.9, 0.3, 0.05]).view(3, 1, 1, 1)
    lq = LogQuantizer(bits, per_sample=True)
    q = lq(p)
    top = 2**bits - 2
    for b in range(3):
        m = p[b].max()
        assert float(q[b].max()) == float(m)  # each sample keeps its own max exactly
        kept = q[b] > 0
        # every kept level is m · 2^-e with an integer e in 0..2^b-2 ...
        e = -torch.log2(q[b][kept] / m)
        assert torch.allclose(e, e.round(), atol=1e-5) and float(e.max()) <= top
        # ... within a factor sqrt(2) of the probability it stands for
        ratio = q[b][kept] / p[b][kept]
        assert float(ratio.max()) <= 2**0.5 + 1e-6 and float(ratio.min()) >= 2**-0.5 - 1e-6
        # flushed values are below half a level under the smallest one
        assert torch.all(p[b][~kept] < m * 2.0 ** (-top - 0.5) + 1e-12)
        assert len(torch.unique(q[b])) <= 2**bits
    # a batch-wide max (DGQ's) puts the 0.05-sample's peak ~4 levels below the grid's top,
    # so at few bits it flushes more of that sample's probabilities to zero
    shared = LogQuantizer(bits)(p)
    kept_shared, kept_own = int((shared[2] > 0).sum()), int((q[2] > 0).sum())
    assert kept_shared < kept_own if bits == 3 else kept_shared <= kept_own


def test_group_quantizer_keeps_outlier_channels_exact_to_their_groups_precision():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 16, 6, 6, generator=g) * 0.1
    x[:, 3] = x[:, 3] * 400 + 30  # a channel-wise outlier
    gq = GroupActQuantizer(bits=4, groups=4, per_timestep=False)
    gq.calibrating = True
    gq(x)
    gq.freeze()
    assert gq.axis == "channel"
    # the outlier channel is alone in its group
    assert int((gq.assign == gq.assign[3]).sum()) == 1
    err = (gq(x) - x).abs()
    scale, _ = gq.index_params(x)
    assert torch.all(err <= scale / 2 + 1e-5)  # every element within half its group's step
    # the normal channels keep a grid >100x finer than one shared per-tensor range gives
    pt = ActQuantizer(4, per_timestep=False)
    pt.calibrating = True
    pt(x)
    pt.freeze()
    normal = [c for c in range(16) if c != 3]
    pt_scale, _ = pt.params()
    assert float(scale.flatten()[normal].max()) < float(pt_scale) / 100
    assert float(err[:, normal].mean()) < float((pt(x) - x).abs()[:, normal].mean()) / 5


def test_group_quantizer_picks_the_pixel_axis_for_pixel_outliers():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 16, 6, 6, generator=g) * 0.1
    x[:, :, 2, 4] += 50  # one outlier position across all channels
    gq = GroupActQuantizer(bits=4, groups=4, per_timestep=False)
    gq.calibrating = True
    gq(x)
    gq.freeze()
    assert gq.axis == "pixel"
    assert int((gq.assign == gq.assign[2 * 6 + 4]).sum()) == 1
    scale, _ = gq.index_params(x)
    assert torch.all((gq(x) - x).abs() <= scale / 2 + 1e-5)


def test_kmeans_groups_are_deterministic_and_separate_clusters():
    lo = torch.tensor([-1.0, -1.1, -0.9, -10.0, -1.0, -10.5])
    hi = torch.tensor([1.0, 1.1, 0.9, 10.0, 1.0, 10.5])
    a = kmeans_groups(lo, hi, 2)
    assert torch.equal(a, kmeans_groups(lo, hi, 2))
    assert a[3] == a[5] and a[0] == a[1] == a[2] == a[4] and a[0] != a[3]


def test_parse_bits_and_spec_validation():
    assert parse_bits("W4A8") == (4, 8) and parse_bits("w8a8") == (8, 8)
    with pytest.raises(ValueError, match="quant-bits='4x8'"):
        parse_bits("4x8")
    with pytest.raises(ValueError, match="quant-method='foo'"):
        QuantSpec(method="foo").validate()
    with pytest.raises(ValueError, match="quant-act-bits=1"):
        QuantSpec(act_bits=1).validate()


def _unet_and_batches(steps: int = 4, n: int = 8, spec: UNetSpec = TINY):
    unet = build_unet(spec, 0).eval()
    labels = torch.arange(n) % 10
    batches, feats = trajectory_batches(
        unet,
        labels,
        steps=steps,
        generator=torch.Generator().manual_seed(0),
        feature_hook="mid_block",
    )
    return unet, batches, feats


@pytest.mark.parametrize("spec", [TINY, TINY_XATTN], ids=["plain", "xattn"])
@pytest.mark.parametrize("method", ["naive", "dgq"])
def test_quantize_unet_w8a8_is_close_to_float_and_w4a4_further(method, spec):
    unet, batches, _ = _unet_and_batches(spec=spec)
    x, t, y = batches[1].x, batches[1].t, batches[1].labels
    with torch.no_grad():
        ref = unet(x, torch.full((len(y),), t), class_labels=y).sample
    errs = {}
    for w, a in ((8, 8), (4, 4)):
        q = quantize_unet(copy.deepcopy(unet), QuantSpec(w, a, method))
        calibrate(q, batches)
        with torch.no_grad():
            out = q(x, torch.full((len(y),), t), class_labels=y).sample
        errs[(w, a)] = float((out - ref).pow(2).mean() / ref.pow(2).mean())
        # all layers wrapped; with quantization off the float model comes back exactly
        set_quant_state(q, weights=False, acts=False)
        with torch.no_grad():
            same = q(x, torch.full((len(y),), t), class_labels=y).sample
        # (the cross-attention processor computes the float attention explicitly, not by SDPA)
        assert torch.allclose(same, ref, atol=1e-5)
        if w == 4:  # first and last conv stay 8-bit, also inside CrossAttentionUNet
            eight = [n.rpartition(".")[2] for n, lay in quant_layers(q) if lay.wq.bits == 8]
            assert eight == ["conv_in", "conv_out"]
    assert errs[(8, 8)] < 5e-3
    assert errs[(4, 4)] > 10 * errs[(8, 8)]


def test_model_size_counts_packed_weights():
    unet = build_unet(TINY, 0)
    fp32 = sum(p.numel() for p in unet.parameters()) * 4
    q = quantize_unet(copy.deepcopy(unet), QuantSpec(4, 8))
    size = model_size_bytes(q)
    assert size["fp32"] == fp32
    assert size["quantized"] < fp32 / 3  # 4-bit weights (first/last 8-bit) + fp32 rest


@pytest.mark.parametrize("unet_spec", [TINY, TINY_XATTN], ids=["plain", "xattn"])
def test_federated_stats_merge_equals_pooled_calibration(unet_spec):
    unet, batches, _ = _unet_and_batches(spec=unet_spec)
    half = [CalibBatch(b.x[:4], b.t, b.labels[:4]) for b in batches]
    other = [CalibBatch(b.x[4:], b.t, b.labels[4:]) for b in batches]
    for method in ("naive", "dgq"):
        spec = QuantSpec(4, 8, method)
        pooled = calibrate(quantize_unet(copy.deepcopy(unet), spec), batches)
        clients = []
        for part in (half, other):
            q = quantize_unet(copy.deepcopy(unet), spec)
            calibrate(q, part)
            clients.append(export_stats(q))
        merged = load_stats(quantize_unet(copy.deepcopy(unet), spec), merge_stats(clients))
        if unet_spec.cross_attention:
            # q/k/v ranges travel; DGQ's log2 probabilities need none, naive's uniform ones do
            keys = clients[0]
            assert any(".attn2.processor.k|" in k for k in keys)
            assert any(".attn2.processor.probs|" in k for k in keys) == (method == "naive")
        x, t, y = batches[2].x, batches[2].t, batches[2].labels
        with torch.no_grad():
            a = pooled(x, torch.full((len(y),), t), class_labels=y).sample
            b = merged(x, torch.full((len(y),), t), class_labels=y).sample
        assert torch.equal(a, b), method
        # a single client's ranges are not the pooled ones
        assert any(not torch.equal(clients[0][k], v) for k, v in merge_stats(clients).items())


def test_tdac_weights_and_allocation():
    g = torch.Generator().manual_seed(6)
    base = torch.randn(4, 8, 4, 4, generator=g)
    # steps 0-2 nearly identical (dense), step 3 far and different in direction (diverse)
    feats = [base + 0.01 * torch.randn(base.shape, generator=g) for _ in range(3)]
    feats.append(-base * 3)
    w = tdac_weights(feats, lam=1.2, quantile=0.5)
    assert w.shape == (4,)
    assert float(w[3]) > float(w[:3].max())  # diversity dominates with λ = 1.2
    assert float(w[:3].min()) > 0  # the dense steps get weight from density
    counts = allocate(w, 10)
    assert int(counts.sum()) == 10 and int(counts[3]) == int(counts.max())
    assert allocate(torch.tensor([1.0, 1.0, 1.0]), 10).tolist() in ([4, 3, 3], [3, 4, 3], [3, 3, 4])


def test_select_samples_takes_counts_per_step_from_the_trajectory():
    _, batches, feats = _unet_and_batches(steps=4, n=8)
    assert len(feats) == 4 and feats[0].dim() == 4
    picked = select_samples(batches, torch.tensor([0, 2, 5, 20]), torch.Generator().manual_seed(0))
    assert [len(b.labels) for b in picked] == [2, 5, 8]
    assert [b.t for b in picked] == [batches[1].t, batches[2].t, batches[3].t]
    for b in picked:
        src = next(s for s in batches if s.t == b.t)
        assert all(any(torch.equal(xi, s) for s in src.x) for xi in b.x)


def test_block_reconstruction_lowers_the_blocks_output_error():
    unet, batches, _ = _unet_and_batches(steps=4, n=16)
    q = quantize_unet(copy.deepcopy(unet), QuantSpec(3, 8, "edadm"))
    calibrate(q, batches)
    name, block = next((n, b) for n, b in reconstruction_blocks(q) if "resnets" in n)
    before = block_error(q, block, batches)
    r = reconstruct_block(
        q, block, batches, ReconSettings(iters=150, batch_size=16), torch.Generator().manual_seed(0)
    )
    assert r["before"] == pytest.approx(before)
    assert r["after"] < 0.8 * r["before"], (name, r)
    # the rounding is hard afterwards: every weight is on its channel's grid
    for layer in (m for m in block.modules() if hasattr(m, "alpha") and m.alpha is not None):
        w = layer.quantized_weight() / layer.wq.scale
        assert torch.allclose(w, w.round(), atol=1e-4)


@pytest.mark.parametrize(
    "method,source", [("naive", "local"), ("edadm", "local"), ("dgq", "trajectory")]
)
def test_client_calibration_and_server_merge(method, source):
    from fedmatch.factories.quant import TDAC_KEY, client_calibration, server_quantize

    cfg = make_config(
        unet_channels="8,16",
        teacher_ddim_steps=3,
        quant_method=method,
        quant_bits="W4A8",
        quant_groups=2,
        quant_calibration_source=source,
        quant_calibration_samples=9,
        quant_recon_iters=2,
    )
    teacher = build_unet(TINY, 0).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(20, 3, 28, 28, generator=g) * 2 - 1
    labels = torch.randint(0, 10, (20,), generator=g)
    clients = [client_calibration(cfg, teacher, images[i::2], labels[i::2], seed=i) for i in (0, 1)]
    for stats, metrics in clients:
        assert metrics["calibration-samples"] == 9
        assert (TDAC_KEY in stats) == (method == "edadm")
    quantized, info = server_quantize(cfg, teacher, [s for s, _ in clients], [10.0, 10.0], 0)
    assert (method == "edadm") == bool(info)
    x = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        out = quantized(x, torch.tensor([999, 999]), class_labels=torch.tensor([1, 2])).sample
    assert torch.isfinite(out).all()


# ----------------------------------------------------------------- DGQ cross-attention


def test_cross_attention_processor_without_quantization_equals_diffusers():
    from fedmatch.quant.attention import QuantCrossAttnProcessor, cross_attention_modules

    unet = build_unet(TINY_XATTN, 0).eval()
    modules = cross_attention_modules(unet)
    assert len(modules) == 4 and all(n.endswith(".attn2") for n, _ in modules)
    g = torch.Generator().manual_seed(0)
    for _, attn in modules:
        hidden = torch.randn(3, 64, attn.to_q.in_features, generator=g)
        context = torch.randn(3, 2, attn.to_k.in_features, generator=g)
        with torch.no_grad():
            ref = attn(hidden, encoder_hidden_states=context)  # diffusers' SDPA processor
            for dgq in (True, False):
                processor = QuantCrossAttnProcessor(8, dgq=dgq)
                for _, q in processor.calibrated():
                    q.enabled = False
                processor.probs.enabled = False
                attn.set_processor(processor)
                out = attn(hidden, encoder_hidden_states=context)
                assert torch.allclose(out, ref, atol=1e-6), float((out - ref).abs().max())


def test_dgq_attention_keeps_the_bos_column_exact_and_a_max_per_sample():
    from fedmatch.quant.attention import QuantCrossAttnProcessor

    g = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 2, 16, 3, generator=g)
    logits[1, ..., 0] += 3.0  # sample 1 attends to BOS more: its other columns peak lower
    probs = logits.softmax(dim=-1)
    q = QuantCrossAttnProcessor(4, dgq=True).quantize_probs(probs)
    assert torch.equal(q[..., 0], probs[..., 0])  # t2i_start_peak: BOS in full precision
    rest, q_rest = probs[..., 1:], q[..., 1:]
    maxima = rest.flatten(1).amax(dim=1)
    assert torch.equal(q_rest.flatten(1).amax(dim=1), maxima)  # each sample's own scale
    assert float(maxima[1]) < 0.8 * float(maxima[0])
    for b in range(2):
        e = -torch.log2(q_rest[b][q_rest[b] > 0] / maxima[b])
        assert torch.allclose(e, e.round(), atol=1e-5)
    # the naive baseline quantizes every column uniformly (after calibration)
    naive = QuantCrossAttnProcessor(4, per_timestep=False, dgq=False)
    naive.probs.calibrating = True
    naive.quantize_probs(probs)
    naive.probs.freeze()
    assert not torch.equal(naive.quantize_probs(probs)[..., 0], probs[..., 0])


def test_dgq_cross_attention_scale_differs_between_classes_in_one_batch():
    from fedmatch.quant.quantizers import LogQuantizer

    unet, batches, _ = _unet_and_batches(spec=TINY_XATTN)
    q = calibrate(quantize_unet(copy.deepcopy(unet), QuantSpec(8, 8, "dgq")), batches)
    log_quantizers = [m for m in q.modules() if isinstance(m, LogQuantizer)]
    assert len(log_quantizers) == 4 and all(m.per_sample for m in log_quantizers)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = (
        q.mid_block.attentions[0]
        .transformer_blocks[0]
        .attn2.processor.probs.register_forward_hook(
            lambda m, args, out: seen.append((args[0], out))
        )
    )
    x = batches[1].x[:1].repeat(2, 1, 1, 1)  # one x_t, two classes
    with torch.no_grad():
        q(x, torch.full((2,), batches[1].t), class_labels=torch.tensor([3, 7]))
    handle.remove()
    ((p, out),) = seen
    per_sample = p.flatten(1).amax(dim=1)
    assert float((per_sample[0] - per_sample[1]).abs()) > 1e-4  # the prompts' maxima differ
    assert torch.equal(out.flatten(1).amax(dim=1), per_sample)  # and each keeps its own


@pytest.mark.parametrize("method", ["naive", "dgq"])
def test_client_calibration_of_a_cross_attention_teacher(method):
    from fedmatch.factories.diffusion import unet_spec
    from fedmatch.factories.quant import client_calibration, server_quantize
    from fedmatch.quant.attention import QuantCrossAttnProcessor

    cfg = make_config(
        unet_channels="8,16",
        unet_cross_attention=True,
        teacher_ddim_steps=3,
        quant_method=method,
        quant_bits="W8A8",
        quant_groups=2,
        quant_calibration_source="local",
        quant_calibration_samples=9,
    )
    teacher = build_unet(unet_spec(cfg), 0).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(20, 3, 28, 28, generator=g) * 2 - 1
    labels = torch.randint(0, 10, (20,), generator=g)
    stats = [
        client_calibration(cfg, teacher, images[i::2], labels[i::2], seed=i)[0] for i in (0, 1)
    ]
    assert all(any(".processor.v|" in k for k in s) for s in stats)
    quantized, _ = server_quantize(cfg, teacher, stats, [10.0, 10.0], 0)
    processors = [m for m in quantized.modules() if isinstance(m, QuantCrossAttnProcessor)]
    assert len(processors) == 4 and all(p.dgq == (method == "dgq") for p in processors)
    assert model_size_bytes(quantized)["activation_ranges"] > 0
    x = torch.randn(2, 3, 32, 32, generator=g)
    t, y = torch.tensor([499, 499]), torch.tensor([1, 2])
    with torch.no_grad():
        out = quantized(x, t, class_labels=y).sample
        ref = teacher(x, t, class_labels=y).sample
    assert float((out - ref).pow(2).mean() / ref.pow(2).mean()) < 5e-2


@pytest.mark.parametrize(
    ("method", "clipping", "expected"),
    [
        ("naive", "method", "minmax"),
        ("edadm", "method", "mse"),
        ("dgq", "method", "mse"),
        ("naive", "mse", "mse"),  # the shared clipping search alone
        ("edadm", "minmax", "minmax"),  # EDA-DM without it
        ("dgq", "minmax", "minmax"),
    ],
)
def test_weight_clipping_key_sets_the_weight_scales(method, clipping, expected):
    from fedmatch.factories.quant import quant_spec

    cfg = make_config(strategy="diffusion-ptq",
                      **{"quant.method": method, "quant.weight-clipping": clipping})  # fmt: skip
    spec = quant_spec(cfg)
    assert spec.weight_init == expected
    q = quantize_unet(build_unet(TINY, 0), QuantSpec(4, 8, method, weight_init=spec.weight_init))
    layers = list(quant_layers(q))
    assert layers
    other = "mse" if expected == "minmax" else "minmax"
    differs = False
    for _, lay in layers:  # every wrapped layer carries the scales of the chosen search
        ref = WeightQuantizer(lay.module.weight, lay.wq.bits, init=expected).scale
        assert torch.equal(lay.wq.scale, ref)
        alt = WeightQuantizer(lay.module.weight, lay.wq.bits, init=other).scale
        differs |= not torch.equal(lay.wq.scale, alt)
    assert differs  # the two searches give different scales on these weights


def test_mse_clipping_never_loses_to_minmax_per_channel():
    """The search includes ratio 1 (min-max), so its per-channel error is never larger, and on
    heavy-tailed weights it clips: a smaller scale and a smaller total error at 4 bits."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, 3, 3, generator=gen)
    w[:, 0, 0, 0] *= 8  # one outlier per channel
    errors, scales = {}, {}
    for init in ("minmax", "mse"):
        q = WeightQuantizer(w, 4, init=init)
        errors[init] = (q(w) - w).pow(2).flatten(1).sum(dim=1)
        scales[init] = q.scale.flatten()
    assert (errors["mse"] <= errors["minmax"] + 1e-6).all()
    assert errors["mse"].sum() < 0.9 * errors["minmax"].sum()  # measured: 0.85
    assert (scales["mse"] < scales["minmax"]).all()  # every channel clips its outlier
    with pytest.raises(Exception, match=r"quant\.weight-clipping.*'method', 'minmax' or 'mse'"):
        make_config(strategy="diffusion-ptq", **{"quant.weight-clipping": "percentile"})
