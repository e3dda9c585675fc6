"""The diffusion workloads through the real `flwr run` simulation engine.

One `flwr run` with three cells on the same two SuperNodes: ``dmd2`` (no cached teacher, so
it trains a tiny teacher federatedly first, then two rounds of a one-step generator),
``disback`` with the same teacher config (which must reuse the cached teacher), and
``diffusion-teacher`` with another teacher config (trains and caches a second teacher).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedmatch.cells import CellSpec, read_status, write_cells
from fedmatch.localrun import PrivateFlower
from tests.flower_harness import read_jsonl

pytestmark = pytest.mark.e2e

DOMAINS = ("mnist", "optdigits")


def test_teacher_then_one_step_generator_and_disback_through_flwr_run(
    flower: PrivateFlower, tmp_path: Path, data_cache: Path
):
    runs = tmp_path / "runs"
    base = {
        "domains": ",".join(DOMAINS),
        "train-subset": 64,
        "diffusion.unet-channels": "8,16",
        "diffusion.teacher-rounds": 2,
        "diffusion.teacher-steps": 3,
        "batch-size": 8,
        "generator.steps": 2,
        "generator.critic-steps": 2,
        "num-server-rounds": 2,
        "diffusion.fid-samples": 20,
        "diffusion.fid-feature-steps": 20,
        "diffusion.grid-per-class": 2,
        "disback.nodes": 2,
        "disback.degradation-steps": 4,
        "seed": 1,
        "runs-dir": str(runs),
        "cache-dir": str(data_cache),
    }
    # The dmd2 cell must train its teacher: drop a teacher that a test run earlier in the
    # session cached (test_quant_e2e shares this config to reuse this test's teacher).
    for cached in (data_cache / "diffusion").glob("teacher-*.pt"):
        cached.unlink()
    cells_file = tmp_path / "cells.json"
    write_cells(
        cells_file,
        [
            CellSpec("dmd2", {**base, "strategy": "dmd2", "run-name": "dmd2"}),
            CellSpec("disback", {**base, "strategy": "disback", "run-name": "disback"}),
            # Another teacher config: the teacher strategy trains and caches a second one,
            # conditioned on (class, domain) with classifier-free guidance (a null row trained
            # on dropped conditions, guided sampling), its samples read per domain.
            CellSpec(
                "teacher",
                {
                    **base,
                    "strategy": "diffusion-teacher",
                    "run-name": "teacher",
                    "diffusion.teacher-steps": 4,
                    "diffusion.teacher-ddim-steps": 2,
                    "diffusion.domain-conditioning": True,
                    "diffusion.teacher-cond-dropout": 0.2,
                    "diffusion.guidance-scale": 2.0,
                    "diffusion.teacher-lr-final": 1e-4,
                    "diffusion.eval-every": 2,
                    "diffusion.accuracy-epochs": 1,
                },
            ),
        ],
    )
    result = flower.run({"cells-file": str(cells_file)}, num_supernodes=2, timeout=600)
    output = (result.stdout + result.stderr)[-5000:]
    status = read_status(cells_file)
    assert {name: s.status for name, s in status.items()} == {
        "dmd2": "done",
        "disback": "done",
        "teacher": "done",
    }, output

    # -- dmd2: the teacher was trained federatedly (round 0) and cached for later runs.
    rows = read_jsonl(runs / "dmd2" / "metrics.jsonl")

    def values(metric: str, round_: int) -> dict:
        return {
            (r["client"], r["domain"]): r["value"]
            for r in rows
            if r["metric"] == metric and r["round"] == round_
        }

    assert values("teacher-rounds", 0) == {("server", "all"): 2.0}
    assert list((data_cache / "diffusion").glob("teacher-*.pt"))
    for round_ in (1, 2):
        # Every client ran TTUR: 2 generator updates with 2 critic updates each, on GAN too.
        assert set(values("generator-steps", round_).values()) == {2.0}
        assert set(values("critic-steps", round_).values()) == {4.0}
        assert len(values("gan-critic-loss", round_)) == 2
        assert all(v > 0 for v in values("fake-score-loss", round_).values())
        # The frozen teacher travels down beside the bundle; the bundle comes back.
        down, up = values("bytes-down", round_), values("bytes-up", round_)
        assert len(up) == 2 and all(down[k] > up[k] > 0 for k in up)
    # FID-digits of the one-step generator per domain and pooled, before and after training.
    for round_ in (0, 1, 2):
        fid = values("fid", round_)
        assert set(fid) == {("server", d) for d in (*DOMAINS, "all")}
        assert all(v > 0 for v in fid.values())
        assert (runs / "dmd2" / "samples" / f"round-{round_:03d}.png").stat().st_size > 100
    summary = json.loads((runs / "dmd2" / "summary.json").read_text())
    assert summary["final_round"] == 2 and set(summary["final_fid_per_domain"]) >= set(DOMAINS)

    # -- disback: the cached teacher is reused; the target walks back to the teacher (node 0).
    rows = read_jsonl(runs / "disback" / "metrics.jsonl")
    assert not values("teacher-rounds", 0)
    assert values("disback-degradation-loss-last", 0)[("server", "all")] > 0
    assert values("disback-target-node", 1) == {("server", "all"): 1.0}
    assert values("disback-target-node", 2) == {("server", "all"): 0.0}
    assert (runs / "disback" / "samples" / "round-002.png").exists()

    # -- diffusion-teacher: two FedAvg rounds of the domain-conditioned denoiser, FID of its
    # DDIM samples and their class accuracy per domain, cached.
    rows = read_jsonl(runs / "teacher" / "metrics.jsonl")
    assert set(values("teacher-steps", 1).values()) == {4.0}
    # The server's cosine schedule reached the clients: teacher-lr in round 1, the final in 2.
    assert set(values("teacher-lr", 1).values()) == {1e-3}
    assert set(values("teacher-lr", 2).values()) == {1e-4}
    assert len(values("teacher-loss", 2)) == 2
    losses = [sum(values("teacher-loss", r).values()) for r in (1, 2)]
    assert losses[1] < losses[0], losses  # the teacher learns
    real, samples = values("real-accuracy", 2), values("sample-accuracy", 2)
    assert set(real) == set(samples) == {("server", d) for d in DOMAINS}
    # The scorer reads real digits (its classifiers' test accuracy) far above the samples of
    # a teacher trained for 8 steps, which are noise to it.
    assert all(real[k] > 0.8 and samples[k] < real[k] - 0.3 for k in real), (real, samples)
    summary = json.loads((runs / "teacher" / "summary.json").read_text())
    assert set(summary["final_sample_accuracy_per_domain"]) == set(DOMAINS)
    # The cached teacher has the null row it was trained with (2 domains x 10 classes + null).
    saved = [
        torch.load(p, weights_only=True) for p in (data_cache / "diffusion").glob("teacher-*.pt")
    ]
    guided = [s for s in saved if s["spec"].get("guidance")]
    assert len(guided) == 1 and "class_embedding.null" in guided[0]["state"]
    assert set(values("fid", 2)) == {("server", d) for d in (*DOMAINS, "all")}
    # Each FID beside its real floor (as many real training images), far below the samples'.
    floor, fid = values("fid-floor", 2), values("fid", 2)
    assert set(floor) == set(fid) and all(0 < floor[k] < fid[k] for k in fid), (floor, fid)
    assert set(summary["final_fid_floor_per_domain"]) == {*DOMAINS, "all"}
    assert values("fid", 0) and not values("fid", 1)  # eval-every = 2: before round 1, last
    assert len(list((data_cache / "diffusion").glob("teacher-*.pt"))) == 2
