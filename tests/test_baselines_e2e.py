"""End-to-end: SCAFFOLD, FedNova, FedDyn, MOON and VHL (and FedAvg to compare bytes with) through
the real `flwr run` simulation, as the cells of one run (run-config key ``cells-file``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedmatch.baselines import fednova
from fedmatch.cells import CellSpec, read_status, write_cells
from fedmatch.localrun import PrivateFlower
from tests.flower_harness import read_jsonl

pytestmark = pytest.mark.e2e

STRATEGIES = ("fedavg", "scaffold", "fednova", "feddyn", "moon", "vhl")
# FedNova runs on mixed-domain clients (iid), the others one domain per client.
PARTITIONING = {"fednova": "iid"}
# Per-round server rows each strategy must write.
SERVER_METRIC = {
    "scaffold": "scaffold-control-norm",
    "fednova": "fednova-tau-eff",
    "feddyn": "feddyn-h-norm",
}


def _per_client_bytes(rows: list[dict], metric: str) -> dict[tuple[int, str], float]:
    return {(r["round"], r["client"]): r["value"] for r in rows if r["metric"] == metric}


def test_every_baseline_learns_and_writes_its_own_metrics(
    flower: PrivateFlower, tmp_path: Path, data_cache: Path
):
    runs = tmp_path / "runs"
    base = {
        "domains": "mnist,optdigits,font-digits",
        "train-subset": 200,
        "model-width": 16,
        "lr": 0.05,
        "num-server-rounds": 2,
        "seed": 5,
        "runs-dir": str(runs),
        "cache-dir": str(data_cache),
    }
    cells_file = tmp_path / "cells.json"
    write_cells(
        cells_file,
        [
            CellSpec(
                name,
                {
                    **base,
                    "strategy": name,
                    "run-name": name,
                    "partitioning": PARTITIONING.get(name, "domain"),
                },
            )
            for name in STRATEGIES
        ]
        # The FedLGD protocol: SCAFFOLD on each client's local virtual data (5 DM images
        # per class, distilled in the client's first round).  Eq. 4's class-mean step (also
        # what the default 'larger' step is at IPC 5): 'per-image' steps each image half as
        # far there, and 10 steps then leave the set too close to its start for 2 rounds to
        # rise above chance (this test is about SCAFFOLD on virtual data, not about DM's step).
        + [
            CellSpec(
                "scaffold-virtual",
                {
                    **base,
                    "strategy": "scaffold",
                    "run-name": "scaffold-virtual",
                    "train-data": "distilled",
                    "distill.ipc": 5,
                    "distill.steps": 10,
                    "distill.image-step": "class-mean",
                },
            )
        ],
    )
    result = flower.run({"cells-file": str(cells_file)}, timeout=900)
    output = result.stdout + result.stderr
    status = read_status(cells_file)
    expected = dict.fromkeys([*STRATEGIES, "scaffold-virtual"], "done")
    assert {n: s.status for n, s in status.items()} == expected, output[-4000:] + "".join(
        s.error for s in status.values()
    )

    rows = {name: read_jsonl(runs / name / "metrics.jsonl") for name in STRATEGIES}
    for name in STRATEGIES:
        summary = json.loads((runs / name / "summary.json").read_text())
        assert summary["final_round"] == 2, name
        # Ten classes: chance is 0.1.
        assert summary["mean_accuracy"] > 0.1, (name, summary["mean_accuracy"])
        if name in SERVER_METRIC:
            values = [r["value"] for r in rows[name] if r["metric"] == SERVER_METRIC[name]]
            assert len(values) == 2 and all(v > 0 for v in values), name

    fedavg_down = _per_client_bytes(rows["fedavg"], "bytes-down")
    fedavg_up = _per_client_bytes(rows["fedavg"], "bytes-up")
    assert len(fedavg_up) == 6  # 3 clients x 2 rounds
    for name in ("fednova", "feddyn", "moon", "vhl"):
        assert _per_client_bytes(rows[name], "bytes-down") == fedavg_down, name
        assert _per_client_bytes(rows[name], "bytes-up") == fedavg_up, name
    # SCAFFOLD: the control variate down and Δc_i up beside the model, ~2x FedAvg each way.
    for metric, fedavg in (("bytes-down", fedavg_down), ("bytes-up", fedavg_up)):
        scaffold = _per_client_bytes(rows["scaffold"], metric)
        assert scaffold.keys() == fedavg.keys()
        assert all(1.9 < scaffold[k] / fedavg[k] <= 2.0 for k in fedavg), metric
    # The clients' control variates were kept, per round, in the run directory.
    for partition in range(3):
        folder = runs / "scaffold" / "clients" / f"partition-{partition}" / "scaffold-control"
        assert (folder / "round-2.pt").exists(), folder

    # MOON: no previous local model in round 1, the contrastive loss from round 2 on.
    moon = [r for r in rows["moon"] if r["metric"] == "moon-loss"]
    assert sorted(r["round"] for r in moon) == [2, 2, 2]
    assert all(0 < r["value"] < 5 for r in moon)
    # VHL: every client trained on the virtual data and aligned to it in both rounds.
    for metric in ("vhl-virtual-loss", "vhl-align-loss"):
        values = [r for r in rows["vhl"] if r["metric"] == metric]
        assert len(values) == 6 and all(r["value"] > 0 for r in values), metric
    # FedNova's τ_eff is Σ p_i‖a_i‖₁ of the clients' local steps (default momentum 0.9).
    for server_round in (1, 2):
        of_round = [r for r in rows["fednova"] if r["round"] == server_round]
        steps = {r["client"]: r["value"] for r in of_round if r["metric"] == "train-steps"}
        sizes: dict = {}
        for r in of_round:
            if r["metric"] == "num-examples":
                # The first is the training reply's (evaluation replies count test examples).
                sizes.setdefault(r["client"], r["value"])
        expected = sum(sizes[c] * fednova.momentum_norm(int(steps[c]), 0.9) for c in steps) / sum(
            sizes.values()
        )
        tau = [r["value"] for r in of_round if r["metric"] == "fednova-tau-eff"]
        assert tau == [pytest.approx(expected)]

    # Local virtual data: every training reply counts the client's 5 images per class.
    virtual = read_jsonl(runs / "scaffold-virtual" / "metrics.jsonl")
    trained = [r for r in virtual if r["metric"] == "train-steps"]
    assert len(trained) == 6
    for r in trained:
        sizes = [
            v["value"]
            for v in virtual
            if v["metric"] == "num-examples"
            and (v["round"], v["client"]) == (r["round"], r["client"])
        ]
        assert sizes[0] == 50, sizes  # the first is the training reply's; 10 classes each
    summary = json.loads((runs / "scaffold-virtual" / "summary.json").read_text())
    assert summary["mean_accuracy"] > 0.1
