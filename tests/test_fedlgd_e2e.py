"""End-to-end: FedLGD through the real `flwr run` simulation (two clients, two rounds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmatch.localrun import PrivateFlower
from tests.flower_harness import read_jsonl

pytestmark = pytest.mark.e2e


def test_fedlgd_two_clients_two_rounds(flower: PrivateFlower, tmp_path: Path, data_cache: Path):
    runs = tmp_path / "runs"
    result = flower.run(
        {
            "strategy": "fedlgd",
            "domains": "mnist,optdigits",
            "train-subset": 300,
            "model-width": 16,
            "num-server-rounds": 2,
            "distill.ipc": 5,
            # 70 images are 3 batches: a few epochs make two rounds learn something.
            "local-epochs": 10,
            "lr": 0.05,
            "distill.steps": 20,
            # Round 1 and round 2 are both refresh rounds: round 2 refreshes the local data.
            "fedlgd.refresh-every": 1,
            "fedlgd.refresh-until": 1,
            "fedlgd.local-steps": 5,
            "fedlgd.server-steps": 20,
            "fedlgd.server-ipc": 2,
            "fedlgd.save-images": True,
            "seed": 2,
            "run-name": "fedlgd",
            "runs-dir": str(runs),
            "cache-dir": str(data_cache),
        },
        num_supernodes=2,
        timeout=600,
    )
    output = result.stdout + result.stderr
    run_dir = runs / "fedlgd"
    assert (run_dir / "summary.json").exists(), output[-5000:]
    rows = read_jsonl(run_dir / "metrics.jsonl")

    def values(metric: str, round_: int | None = None) -> list[float]:
        return [
            r["value"]
            for r in rows
            if r["metric"] == metric and (round_ is None or r["round"] == round_)
        ]

    # The server matched gradients in both rounds and lowered the distance each time.
    initial, final = values("fedlgd-gm-initial-distance"), values("fedlgd-gm-final-distance")
    assert len(initial) == len(final) == 2
    assert all(f < i for i, f in zip(initial, final, strict=True))
    # Round 2 refreshed both clients' local virtual data (DM in the global model's features).
    assert len(values("fedlgd-refresh-seconds", 2)) == 2
    assert values("fedlgd-refresh-seconds", 1) == []
    # Each client trained on 5 local + 2 global virtual images per class.
    assert values("num-examples", 1).count(70.0) == 2  # (the others: test-set sizes)
    # The global virtual images travel down with the model (100 more kB than FedAvg would).
    assert min(values("bytes-down", 1)) > 20 * 3 * 28 * 28 * 4
    accuracy = values("test-accuracy", 2)
    assert accuracy and sum(accuracy) / len(accuracy) > 0.2  # chance is 0.1
    pngs = sorted(p.name for p in (run_dir / "virtual-images").glob("*.png"))
    assert {"server-round-0.png", "server-round-1.png", "server-round-2.png"} <= set(pngs)
    assert {"partition-0-round-0.png", "partition-1-round-2.png"} <= set(pngs)
