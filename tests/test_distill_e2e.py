"""The distiller workload and strategy feddm through the real `flwr run` simulation engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.flower_harness import read_jsonl

pytestmark = pytest.mark.e2e

DOMAINS = ("mnist", "optdigits", "font-digits")
IPC = 2
STEPS = 15


def test_feddm_distils_once_trains_on_the_union_and_fine_tunes(flower, tmp_path, data_cache):
    config = {
        "strategy": "feddm",
        "domains": ",".join(DOMAINS),
        "train-subset": 200,
        "model-width": 16,
        "num-server-rounds": 2,
        "distill.ipc": IPC,
        "distill.steps": STEPS,
        "distill.batch-real": 16,
        "distill.eval-epochs": 40,
        "batch-size": 32,
        "lr": 0.05,
        "runs-dir": str(tmp_path),
        "cache-dir": str(data_cache),
        "run-name": "feddm",
        "seed": 3,
    }
    result = flower.run(config)
    run_dir = Path(tmp_path) / "feddm"
    output = result.stdout + result.stderr
    assert (run_dir / "summary.json").exists(), output[-5000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_round"] == 2
    rows = read_jsonl(run_dir / "metrics.jsonl")

    def values(metric: str, round_: int, client=None) -> dict:
        return {
            (r["client"], r["domain"]): r["value"]
            for r in rows
            if r["metric"] == metric
            and r["round"] == round_
            and (client is None or r["client"] == client)
        }

    # Round 1: every client distilled its 200 images to IPC images of each of 10 classes and
    # sent exactly that set (float32 images + int64 labels); nothing but config went down.
    assert set(values("distill-steps", 1).values()) == {STEPS}
    assert set(values("num-synthetic", 1).values()) == {10 * IPC}
    syn_bytes = 10 * IPC * (3 * 28 * 28 * 4 + 8)  # plus a small header per array
    assert all(syn_bytes <= v < syn_bytes + 1024 for v in values("bytes-up", 1).values())
    assert len(values("bytes-up", 1)) == 3
    assert set(values("bytes-down", 1).values()) == {0}
    assert all(v > 0 for v in values("distill-peak-memory-mb", 1).values())
    assert all(v > 0 for v in values("distill-final-loss", 1).values())
    # The server received the three sets and trained on their union.
    assert values("server-train-images", 1) == {("server", "all"): 3 * 10 * IPC}
    # The model trained on 60 synthetic images is evaluated per domain; chance is 0.1.
    round1 = values("test-accuracy", 1, client="server")
    assert {domain for _, domain in round1} == set(DOMAINS)
    assert sum(round1.values()) / len(round1) > 0.2, round1
    # Round 2 is FedAvg fine-tuning on the real local data.
    assert len(values("train-loss", 2)) == 3
    assert not values("distill-steps", 2)
    assert summary["mean_accuracy"] > 0.3
