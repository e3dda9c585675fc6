"""FedKA leave-one-domain-out through the real `flwr run` simulation engine (tiny configs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedmatch.localrun import PrivateFlower
from tests.flower_harness import read_jsonl

pytestmark = pytest.mark.e2e

TARGET = "photo-mnist"


def fedka_config(runs: Path, cache: Path, name: str, **overrides) -> dict[str, object]:
    config: dict[str, object] = {
        "strategy": "fedka",
        "domains": f"mnist,optdigits,font-digits,{TARGET}",
        "target-domain": TARGET,
        "train-subset": 200,
        "model-width": 16,
        "lr": 0.05,
        "num-server-rounds": 2,
        "fedka.target-samples": 64,
        "fedka.target-batch-size": 16,
        "fedka.finetune-steps": 8,
        # Plurality: 2 rounds of tiny models rarely agree unanimously, and every round
        # must have pseudo-labels to fine-tune on (the default 1.0 is tested in test_align).
        "fedka.vote-threshold": 0.0,
        "fraction-evaluate": 0.0,
        "runs-dir": str(runs),
        "cache-dir": str(cache),
        "run-name": name,
        "seed": 7,
    }
    config.update(overrides)
    return config


def test_fedka_leave_one_domain_out_runs_and_records_target_metrics(
    flower: PrivateFlower, tmp_path, data_cache
):
    result = flower.run(fedka_config(tmp_path, data_cache, "fedka"), num_supernodes=3)
    run_dir = tmp_path / "fedka"
    output = result.stdout + result.stderr
    assert (run_dir / "summary.json").exists(), output[-5000:]
    for name in (
        "model.pt",
        "model-finetuned.pt",
        "model-averaged.pt",
        "checkpoint.pt",
        "metrics.jsonl",
    ):
        assert (run_dir / name).exists(), name

    rows = read_jsonl(run_dir / "metrics.jsonl")
    # The clients hold the three source domains; the target is the server's alone.
    trained = {r["domain"] for r in rows if r["metric"] == "train-loss"}
    assert trained == {"mnist", "optdigits", "font-digits"}
    for metric in (
        "target-accuracy-averaged",
        "target-accuracy-finetuned",
        "pseudo-label-accuracy",
        "pseudo-label-coverage",
        "group-effect",
    ):
        found = [r for r in rows if r["metric"] == metric]
        assert {r["round"] for r in found} == {1, 2}, metric
        assert all(r["client"] == "server" and r["domain"] == TARGET for r in found), metric
    assert {r["client"] for r in rows if r["metric"] == "target-accuracy"} == {0, 1, 2}
    assert all(r["value"] > 0 for r in rows if r["metric"] == "train-mmd")
    # The server sends target features besides the model: more down than up.
    down = sum(r["value"] for r in rows if r["metric"] == "bytes-down")
    up = sum(r["value"] for r in rows if r["metric"] == "bytes-up")
    assert down > up + 2 * 3 * 64 * 16 * 3 * 3 * 4  # 64 features of 144 floats per message
    # The server's evaluation includes the held-out target's test split.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert TARGET in summary["server_accuracy_per_domain"]
    finetuned = torch.load(run_dir / "model-finetuned.pt", weights_only=True)
    averaged = torch.load(run_dir / "model-averaged.pt", weights_only=True)
    assert finetuned.keys() == averaged.keys()
    assert any(not torch.equal(finetuned[k], averaged[k]) for k in averaged)
    # The fine-tuned broadcast (default): the global model is the fine-tuned one.
    global_model = torch.load(run_dir / "model.pt", weights_only=True)
    assert all(torch.equal(finetuned[k], global_model[k]) for k in global_model)
