"""Federated calibration (``diffusion-ptq``, message ``train.calibrate``) through `flwr run`.

One `flwr run`, two cells on the same two SuperNodes: EDA-DM at W4A8 (TDAC weights from the
clients, block reconstruction on the server; personal quantization scored too), then DGQ at
W8A8.  The teacher and FID settings match ``tests/test_generators_e2e.py``, so in a full test
session the cached tiny teacher and FID feature network are reused (run alone, the first cell
trains the teacher federatedly first).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedmatch.cells import CellSpec, read_status, write_cells
from fedmatch.localrun import PrivateFlower
from tests.flower_harness import read_jsonl

pytestmark = pytest.mark.e2e

DOMAINS = ("mnist", "optdigits")


def test_federated_calibration_through_flwr_run(
    flower: PrivateFlower, tmp_path: Path, data_cache: Path
):
    runs = tmp_path / "runs"
    base = {
        "strategy": "diffusion-ptq",
        "domains": ",".join(DOMAINS),
        "train-subset": 64,
        "unet-channels": "8,16",
        "teacher-rounds": 2,
        "teacher-steps": 3,
        "teacher-ddim-steps": 3,
        "batch-size": 8,
        "num-server-rounds": 1,
        "quant-calibration-samples": 12,
        "quant-recon-iters": 3,
        "fid-samples": 20,
        "fid-feature-steps": 20,
        "grid-per-class": 2,
        "seed": 1,
        "runs-dir": str(runs),
        "cache-dir": str(data_cache),
    }
    cells_file = tmp_path / "cells.json"
    write_cells(
        cells_file,
        [
            CellSpec(
                "edadm",
                {
                    **base,
                    "run-name": "edadm",
                    "quant-method": "edadm",
                    "quant-bits": "W4A8",
                    "quant-eval-personal": True,
                },
            ),
            CellSpec(
                "dgq",
                {
                    **base,
                    "run-name": "dgq",
                    "quant-method": "dgq",
                    "quant-groups": 2,
                    "quant-calibration-source": "trajectory",
                },
            ),
        ],
    )
    result = flower.run({"cells-file": str(cells_file)}, num_supernodes=2, timeout=600)
    output = (result.stdout + result.stderr)[-5000:]
    status = read_status(cells_file)
    assert {name: s.status for name, s in status.items()} == {
        "edadm": "done",
        "dgq": "done",
    }, output

    for name in ("edadm", "dgq"):
        rows = read_jsonl(runs / name / "metrics.jsonl")

        def values(metric: str, round_: int, rows=rows) -> dict:
            return {
                (r["client"], r["domain"]): r["value"]
                for r in rows
                if r["metric"] == metric and r["round"] == round_
            }

        # Float teacher at round 0, the merged quantized model at round 1, per domain.
        for round_ in (0, 1):
            fid = values("fid", round_)
            assert set(fid) == {("server", d) for d in (*DOMAINS, "all")}, name
            assert all(v > 0 for v in fid.values())
        assert values("fid", 0) != values("fid", 1)
        # Both clients calibrated and sent statistics only (per-tensor ranges: far fewer
        # bytes than the UNet; DGQ's per-channel and per-pixel ranges per timestep: more).
        up, down = values("bytes-up", 1), values("bytes-down", 1)
        assert len(up) == 2 and all(up[k] > 0 for k in up)
        if name == "edadm":
            assert all(up[k] < down[k] / 4 for k in up)
        samples = values("calibration-samples", 1)
        assert len(samples) == 2 and set(samples.values()) == {12.0}
        fp32 = values("model-bytes", 0)[("server", "all")]
        packed = values("model-bytes", 1)[("server", "all")]
        assert packed < fp32 / 2
        stats = torch.load(runs / name / "calibration-stats-round-001.pt", weights_only=True)
        assert len(stats) == 2 and all(k.endswith(("|lo", "|hi", "weights")) for k in stats[0])

    rows = read_jsonl(runs / "edadm" / "metrics.jsonl")
    recon = {r["metric"]: r["value"] for r in rows if r["metric"].startswith("recon-")}
    assert recon["recon-blocks"] > 0 and recon["recon-error-before"] > 0
    personal = {(r["client"], r["domain"]) for r in rows if r["metric"] == "fid-personal"}
    assert {d for _, d in personal} == set(DOMAINS)
    assert any(
        k.endswith("|channel|lo")
        for k in torch.load(runs / "dgq" / "calibration-stats-round-001.pt", weights_only=True)[0]
    )
