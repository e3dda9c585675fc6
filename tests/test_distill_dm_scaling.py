"""DM's image step (issue 29): the per-image step against Eq. 4's class-mean step, and its key."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fedmatch.config import ConfigError, RunConfig
from fedmatch.distill.common import fresh_convnet
from fedmatch.distill.dm import REFERENCE_IPC, class_weights, distill_dm, dm_loss
from fedmatch.params import DistillParams
from tests.flower_harness import make_config, with_values
from tests.test_distill import TINY_NET, toy_digits

# Tiny tensors: on a busy machine, thread barriers would cost more than the arithmetic.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _image_gradients(syn: torch.Tensor, syn_labels: torch.Tensor, weights) -> torch.Tensor:
    """∂L/∂S of DM's loss in one fixed random ConvNet, against the toy digits' real images."""
    images, labels = toy_digits(n_per_class=8)
    net = fresh_convnet(TINY_NET, in_channels=3, num_classes=3, image_size=12, seed=3, device="cpu")
    syn = syn.clone().requires_grad_(True)
    loss = dm_loss(net.embed(images), labels, net.embed(syn), syn_labels, 3, weights)
    (grad,) = torch.autograd.grad(loss, [syn])
    return grad


def test_per_image_gradient_is_ipc_times_the_class_mean_gradient():
    # Three classes of 1, 3 and 6 images: every image's gradient scales with its own class.
    syn_labels = torch.tensor([0, 1, 1, 1, 2, 2, 2, 2, 2, 2])
    syn = torch.randn(10, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(syn_labels, minlength=3).float()
    class_mean = _image_gradients(syn, syn_labels, None)
    per_image_loss = _image_gradients(syn, syn_labels, counts)  # Σ_c n_c ||·||²
    scale = counts[syn_labels].view(-1, 1, 1, 1)
    torch.testing.assert_close(per_image_loss, scale * class_mean, rtol=1e-5, atol=1e-7)
    # The key's weights are the same loss divided by REFERENCE_IPC (the step of IPC 10).
    weights = class_weights("per-image", syn_labels, 3)
    assert weights is not None
    torch.testing.assert_close(weights, counts / REFERENCE_IPC)
    keyed = _image_gradients(syn, syn_labels, weights)
    torch.testing.assert_close(keyed, scale / REFERENCE_IPC * class_mean, rtol=1e-5, atol=1e-7)
    assert class_weights("class-mean", syn_labels, 3) is None
    with pytest.raises(ValueError, match="image_step must be one of"):
        class_weights("per-pixel", syn_labels, 3)  # type: ignore[arg-type]


def _distil(ipc: int, image_step: str, lr: float = 1.0, steps: int = 5, on_step=None):
    images, labels = toy_digits(n_per_class=20)
    return distill_dm(
        images,
        labels,
        ipc,
        steps,
        lr=lr,
        batch_real=16,
        init="stats",
        net=TINY_NET,
        generator=torch.Generator().manual_seed(0),
        image_step=image_step,  # type: ignore[arg-type]
        on_step=on_step,
    )


def test_per_image_step_at_ipc_10_is_dm_bit_for_bit():
    # The weights are exactly 1: runs, caches and results at IPC 10 do not change.
    per_image, _, history = _distil(REFERENCE_IPC, "per-image")
    class_mean, _, old_history = _distil(REFERENCE_IPC, "class-mean")
    assert torch.equal(per_image, class_mean)
    assert history.losses == old_history.losses


@pytest.mark.parametrize(
    ("ipc", "same_as"), [(1, "class-mean"), (5, "class-mean"), (12, "per-image")]
)
def test_larger_step_is_eq_4_up_to_ipc_10_and_per_image_from_10(ipc, same_as):
    # Weights max(1, n_c/10): exactly 1 (Eq. 4) at n_c <= 10, exactly n_c/10 at n_c >= 10.
    larger, _, history = _distil(ipc, "larger")
    other, _, other_history = _distil(ipc, same_as)
    assert torch.equal(larger, other)
    assert history.losses == other_history.losses


def test_larger_weights_are_the_larger_of_the_two_steps_class_by_class():
    syn_labels = torch.tensor([0] * 3 + [1] * 10 + [2] * 25)
    weights = class_weights("larger", syn_labels, 4)
    assert weights is not None
    assert weights.tolist() == [1.0, 1.0, 2.5, 1.0]  # class 3 is absent: its term is 0
    per_image = class_weights("per-image", syn_labels, 4)
    assert per_image is not None
    assert torch.equal(weights, torch.maximum(per_image, torch.ones(4)))


def test_per_image_step_is_the_class_mean_step_at_lr_times_ipc_over_10():
    # SGD's momentum buffer is linear in the gradient: weighting the loss = scaling the lr.
    per_image, _, history = _distil(4, "per-image")
    scaled, _, scaled_history = _distil(4, "class-mean", lr=4 / REFERENCE_IPC)
    torch.testing.assert_close(per_image, scaled, rtol=1e-4, atol=1e-5)
    # The recorded loss is Eq. 4 in both (not the weighted objective).
    assert history.losses == pytest.approx(scaled_history.losses, rel=1e-4)


def test_a_continued_set_leaves_the_callers_tensor_as_it_was():
    # distill_dm(start=...) steps a copy: FedLGD's refresh, and a benchmark that compares the
    # refreshed set with the one it continued, keep the set they passed in.
    images, labels = toy_digits(n_per_class=20)
    start, start_labels, _ = _distil(2, "per-image", steps=1)
    before = start.clone()
    net = fresh_convnet(TINY_NET, in_channels=3, num_classes=3, image_size=12, seed=1, device="cpu")
    refreshed, _, _ = distill_dm(
        images,
        labels,
        2,
        2,
        batch_real=16,
        net=TINY_NET,
        generator=torch.Generator().manual_seed(1),
        start=(start, start_labels),
        feature_net=net,
    )
    assert torch.equal(start, before)
    assert not torch.equal(refreshed, before)


def _movement(ipc: int, image_step: str) -> float:
    """‖S − S_0‖ / ‖S_0‖ after 5 steps (from the same kind of start at every IPC)."""
    start: dict[int, torch.Tensor] = {}

    def keep_start(k: int, stored: torch.Tensor) -> None:
        if k == 0:
            start[0] = stored.clone()

    out, _, _ = _distil(ipc, image_step, on_step=keep_start)
    return float((out - start[0]).norm() / start[0].norm())


def test_a_set_at_ipc_50_moves_as_far_per_step_as_one_at_ipc_10():
    per_image = _movement(50, "per-image") / _movement(10, "per-image")
    class_mean = _movement(50, "class-mean") / _movement(10, "class-mean")
    # Per-image: the same relative movement at both sizes (measured 0.9-1.15 over seeds).
    assert 0.7 < per_image < 1.4, per_image
    # Eq. 4's class means: each image's step is 10/50 as large, and so is the movement.
    assert class_mean < 0.4, class_mean


def test_image_step_key_defaults_to_larger_and_refuses_other_values():
    assert RunConfig().params(DistillParams).image_step == "larger"
    for value in ("class-mean", "per-image"):
        cfg = RunConfig.from_flower({"distill.image-step": value})
        assert cfg.params(DistillParams).image_step == value
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flower({"distill.image-step": "per-pixel"})
    message = str(err.value)
    assert "'distill.image-step' = 'per-pixel'" in message
    assert "'per-image'" in message and "'class-mean'" in message and "'larger'" in message


@pytest.mark.parametrize(
    ("image_step", "compile", "padding"),
    [("per-image", False, 1), ("class-mean", True, 3), ("larger", False, 3)],
)
def test_every_dm_run_takes_the_keys(monkeypatch, image_step, compile, padding):
    """The distiller workload (FedDM, the warm-up of FedLGD and its baselines) and FedLGD's
    refreshes both hand ``distill.image-step``, ``-compile`` and ``-net-padding`` to DM (the
    distillation itself runs eagerly here: tests/test_distill_compile.py covers compiling)."""
    from types import SimpleNamespace

    import clients.fedlgd as fedlgd_client
    import fedmatch.factories.distill as factory

    seen: list[tuple[str, bool, int]] = []

    def spy(*args, **kwargs):
        seen.append((kwargs["image_step"], kwargs["compile"], kwargs["net"]["first_padding"]))
        return distill_dm(*args, **{**kwargs, "compile": False})

    monkeypatch.setattr(factory, "distill_dm", spy)
    monkeypatch.setattr(fedlgd_client, "distill_dm", spy)
    cfg = make_config(model_width=8, model_depth=2, ipc=1, distill_steps=1, distill_batch_real=4)
    cfg = with_values(
        cfg,
        **{
            "distill.image_step": image_step,
            "distill.compile": compile,
            "distill.net_padding": padding,
        },
    )
    images, labels = toy_digits(n_per_class=4)
    syn, syn_labels, _ = factory.distill_from_config(
        cfg, images, labels, seed=0, device=torch.device("cpu")
    )
    data = SimpleNamespace(train=SimpleNamespace(tensors=(images, labels)), domain="toy")
    model = fresh_convnet(
        {"width": 8, "depth": 2, "norm": "instancenorm", "first_padding": padding},
        in_channels=3,
        num_classes=10,
        image_size=12,
        seed=0,
        device="cpu",
    )
    fedlgd_client._refresh(cfg, data, model, (syn, syn_labels), 0, 2, torch.device("cpu"))
    assert seen == [(image_step, compile, padding)] * 2


def test_virtual_cache_never_serves_a_set_of_the_other_image_step(tmp_path):
    from clients.distiller import virtual_cache_file

    cfg = make_config(cache_dir=str(tmp_path))
    cpu = torch.device("cpu")
    files = {
        value: virtual_cache_file(with_values(cfg, **{"distill.image_step": value}), 0, 5, cpu)
        for value in ("per-image", "class-mean", "larger")
    }
    assert len(set(files.values())) == 3
    assert virtual_cache_file(cfg, 0, 5, cpu) == virtual_cache_file(with_values(cfg), 0, 5, cpu)


def test_net_padding_builds_the_reference_network_and_keys_the_cache(tmp_path):
    from clients.distiller import virtual_cache_file
    from fedmatch.factories.distill import distill_net

    cfg = make_config(cache_dir=str(tmp_path))
    padded = with_values(cfg, **{"distill.net_padding": 3})
    assert distill_net(cfg)["first_padding"] == 1
    net = fresh_convnet(
        distill_net(padded), in_channels=3, num_classes=10, image_size=28, seed=0, device="cpu"
    )
    # DM's MNIST network: 28 -> 32 -> 16 -> 8 -> 4 (the default pools to 3x3).
    assert net.embed(torch.zeros(1, 3, 28, 28)).shape[1] == cfg.model_width * 4 * 4
    cpu = torch.device("cpu")
    assert virtual_cache_file(padded, 0, 5, cpu) != virtual_cache_file(cfg, 0, 5, cpu)
    with pytest.raises(ConfigError, match="net-padding"):
        with_values(cfg, **{"distill.net_padding": -1})


def test_ipc_scaling_benchmark_scores_every_option_and_resumes(tmp_path, capsys, monkeypatch):
    """benchmarks/dm_ipc_scaling.py on a tiny grid: the options are what they say they are."""
    import json

    bench = _load_bench(monkeypatch)
    out = tmp_path / "grid.json"
    argv = [
        "--domains", "mnist", "--ipc", "1", "--steps", "2", "--snapshots", "1",
        "--batch-real", "4", "--width", "8", "--eval-width", "8", "--eval-epochs", "1",
        "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--resume",
    ]  # fmt: skip
    bench.main(argv)
    rows = {(r["variant"], r["steps"]): r for r in json.loads(out.read_text())["rows"]}
    # Every option at steps 1 and 2, except "proportional": 2 steps × IPC 1/10 -> 1 step.
    assert set(rows) == {(v, k) for v in bench.VARIANTS for k in (1, 2)} - {("proportional", 2)}
    assert rows[("lr-scaled", 2)]["lr"] == pytest.approx(0.1)
    assert rows[("per-image-lr1", 2)]["lr"] == REFERENCE_IPC
    for k in (1, 2):
        # One start and one random stream: only the step differs.  At IPC 1 the per-image
        # step is lr × 1/10, and the per-image loss at lr 1 is DM's own step.
        per_image, scaled = rows[("per-image", k)], rows[("lr-scaled", k)]
        assert per_image["movement"] == pytest.approx(scaled["movement"], rel=1e-3)
        plain, lr1 = rows[("class-mean", k)], rows[("per-image-lr1", k)]
        assert lr1["movement"] == pytest.approx(plain["movement"], rel=1e-3)
        assert per_image["movement"] < 0.5 * plain["movement"]
        # At IPC 1 the larger step is Eq. 4's, bit for bit.
        assert rows[("larger", k)]["movement"] == plain["movement"]
        assert rows[("larger", k)]["accuracies"] == plain["accuracies"]
    assert rows[("proportional", 1)]["movement"] == pytest.approx(
        rows[("class-mean", 1)]["movement"], rel=1e-6
    )
    # A second call finds every set in --out and distils nothing.
    before = out.read_text()
    capsys.readouterr()
    bench.main(argv)
    assert out.read_text() == before
    assert "| mnist | 1 | per-image | 1 | 2 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown 'steps-x5'"):
        bench.main([*argv, "--variants", "steps-x5"])


def test_ipc_scaling_benchmark_refreshes_each_finished_set(tmp_path, monkeypatch):
    """--refresh-steps: FedLGD's refresh on a proxy global model, one row per finished set."""
    import json

    bench = _load_bench(monkeypatch)
    out = tmp_path / "grid.json"
    argv = [
        "--domains", "mnist", "--ipc", "1", "--steps", "2", "--variants", "per-image",
        "--refresh-steps", "2", "--batch-real", "4", "--width", "8", "--eval-width", "8",
        "--eval-epochs", "1", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
        "--resume",
    ]  # fmt: skip
    bench.main(argv)
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"per-image", "per-image +refresh"}
    refreshed = rows["per-image +refresh"]
    assert (refreshed["steps"], refreshed["refresh_steps"]) == (2, 2)
    assert refreshed["image_step"] == "per-image" and refreshed["movement"] > 0
    before = out.read_text()
    bench.main(argv)  # both rows are in --out: nothing runs again
    assert out.read_text() == before
    # --compile: rows of their own in the same file, both distillations compiled (run eagerly
    # here; tests/test_distill_compile.py covers compiling).
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["compile"])
        return distill_dm(*args, **{**kwargs, "compile": False})

    monkeypatch.setattr(bench, "distill_dm", spy)
    bench.main([*argv, "--compile"])
    assert seen == [True, True]
    rows = {r["variant"] for r in json.loads(out.read_text())["rows"]}
    assert rows == {"per-image", "per-image +refresh", "per-image compiled",
                    "per-image compiled +refresh"}  # fmt: skip


def _load_bench(monkeypatch: pytest.MonkeyPatch) -> Any:
    """benchmarks/dm_ipc_scaling.py as a module (benchmarks/ is not a package)."""
    import importlib.util
    import sys

    from fedmatch.localrun import REPO

    spec = importlib.util.spec_from_file_location(
        "dm_ipc_scaling", REPO / "benchmarks" / "dm_ipc_scaling.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    # Registered first: its dataclass looks its module up while it is defined.
    monkeypatch.setitem(sys.modules, spec.name, bench)
    spec.loader.exec_module(bench)
    return bench


def test_smaller_real_batches_estimate_the_full_gradient_without_bias():
    # The speed lever of issue 29: Eq. 4's gradient in S is linear in the real class means, so a
    # batch of b real images per class gives the full-data gradient in expectation. Exactly: the
    # gradients of the 4 batches of a partition of each class's 8 images into 2s average to it.
    images, labels = toy_digits(n_per_class=8)
    net = fresh_convnet(TINY_NET, in_channels=3, num_classes=3, image_size=12, seed=3, device="cpu")
    syn_labels = torch.tensor([0, 0, 1, 1, 2, 2])
    syn = torch.randn(6, 3, 12, 12, generator=torch.Generator().manual_seed(1), requires_grad=True)
    embed_real = net.embed(images).detach()

    def grad(rows: torch.Tensor) -> torch.Tensor:
        loss = dm_loss(embed_real[rows], labels[rows], net.embed(syn), syn_labels, 3)
        return torch.autograd.grad(loss, [syn])[0]

    by_class = [torch.nonzero(labels == c).flatten() for c in range(3)]
    order = [idx[torch.randperm(8, generator=torch.Generator().manual_seed(c))]
             for c, idx in enumerate(by_class)]  # fmt: skip
    batches = [torch.cat([idx[2 * k : 2 * k + 2] for idx in order]) for k in range(4)]
    full = grad(torch.arange(len(labels)))
    torch.testing.assert_close(torch.stack([grad(b) for b in batches]).mean(0), full)
    assert not torch.allclose(grad(batches[0]), full, atol=1e-4)  # one batch alone is noisy
