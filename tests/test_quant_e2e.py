"""Federated calibration (``diffusion-ptq``, message ``train.calibrate``) through `flwr run`.

One `flwr run`, two cells on the same two SuperNodes: EDA-DM at W4A8 (TDAC weights from the
clients, block reconstruction on the server; FID of the merged and the personal models), then
DGQ at W8A8 from teacher trajectories, without server-side evaluation (FID is the same code
path as in the first cell; skipping it saves the FID reference features and two scores).
Afterwards the quantized models are rebuilt from the statistics the clients sent and compared
with the float teacher.  The teacher and FID settings match ``tests/test_generators_e2e.py``,
so in a full test session the cached tiny teacher and FID feature network are reused (run
alone, the first cell trains both first: ~5 s).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedmatch.cells import CellSpec, read_status, write_cells
from fedmatch.config import RunConfig
from fedmatch.factories.diffusion import load_teacher, teacher_cache_path, unet_spec
from fedmatch.factories.quant import server_quantize
from fedmatch.localrun import PrivateFlower
from fedmatch.quant.calibrate import trajectory_batches
from tests.flower_harness import read_jsonl

pytestmark = pytest.mark.e2e

DOMAINS = ("mnist", "optdigits")


def _relative_error(model, teacher, batches) -> float:
    """||ε_q − ε||² / ||ε||² of the noise predictions over ``batches``."""
    num = den = 0.0
    with torch.no_grad():
        for b in batches:
            t = torch.full((len(b.labels),), b.t, dtype=torch.long)
            ref = teacher(b.x, t, class_labels=b.labels).sample
            out = model(b.x, t, class_labels=b.labels).sample
            num += float((out - ref).pow(2).sum())
            den += float(ref.pow(2).sum())
    return num / den


def test_federated_calibration_through_flwr_run(
    flower: PrivateFlower, tmp_path: Path, data_cache: Path
):
    runs = tmp_path / "runs"
    base = {
        "strategy": "diffusion-ptq",
        "domains": ",".join(DOMAINS),
        "train-subset": 64,
        "diffusion.unet-channels": "8,16",
        "diffusion.teacher-rounds": 2,
        "diffusion.teacher-steps": 3,
        "diffusion.teacher-ddim-steps": 3,
        "batch-size": 8,
        "num-server-rounds": 1,
        "quant.calibration-samples": 12,
        "quant.recon-iters": 3,
        "diffusion.fid-samples": 10,
        "diffusion.fid-feature-steps": 20,
        "diffusion.grid-per-class": 2,
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
                    "quant.method": "edadm",
                    "quant.bits": "W4A8",
                    "quant.eval-personal": True,
                },
            ),
            CellSpec(
                "dgq",
                {
                    **base,
                    "run-name": "dgq",
                    "quant.method": "dgq",
                    "quant.groups": 2,
                    "quant.calibration-source": "trajectory",
                    "server-eval": False,
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

        if name == "edadm":
            # Float teacher at round 0, the merged quantized model at round 1, per domain.
            for round_ in (0, 1):
                fid = values("fid", round_)
                assert set(fid) == {("server", d) for d in (*DOMAINS, "all")}, name
                assert all(v > 0 for v in fid.values())
            assert values("fid", 0) != values("fid", 1)
            assert (runs / name / "samples" / "round-001.png").stat().st_size > 0
        else:  # server-eval = false
            assert not [r for r in rows if r["metric"].startswith("fid")]
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
    assert recon["recon-blocks"] > 0
    assert 0 < recon["recon-error-after"] < recon["recon-error-before"]
    personal = {(r["client"], r["domain"]) for r in rows if r["metric"] == "fid-personal"}
    assert {d for _, d in personal} == set(DOMAINS)
    assert any(
        k.endswith("|channel|lo")
        for k in torch.load(runs / "dgq" / "calibration-stats-round-001.pt", weights_only=True)[0]
    )

    # The statistics the clients sent make sound quantized models: rebuilt from them (without
    # the server's reconstruction), the noise prediction on the teacher's own DDIM trajectory
    # stays close to the float teacher's, more so with more bits, and DGQ's per-index ranges
    # merged from both clients beat either client's alone.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        errors = {}
        for name in ("edadm", "dgq"):
            cfg = RunConfig.from_flower(
                json.loads((runs / name / "config.json").read_text())["run_config"]
            )
            cfg = cfg.replace({"quant.recon-iters": 0})
            teacher = load_teacher(
                teacher_cache_path(cfg, cfg.table("diffusion").teacher_rounds, 2), unet_spec(cfg)
            )
            stats = torch.load(runs / name / "calibration-stats-round-001.pt", weights_only=True)
            batches, _ = trajectory_batches(
                teacher,
                torch.arange(10),
                steps=cfg.table("diffusion").teacher_ddim_steps,
                generator=torch.Generator().manual_seed(0),
            )

            def error(bits, some_stats, cfg=cfg, teacher=teacher, batches=batches):
                c = cfg.replace({"quant.bits": bits})
                model, _ = server_quantize(c, teacher, some_stats, [1.0] * len(some_stats), 0)
                return _relative_error(model, teacher, batches)

            errors[name] = {"merged": error(cfg.table("quant").bits, stats)}
            if name == "edadm":
                errors[name]["W8A8"] = error("W8A8", stats)
            else:
                errors[name]["single"] = [error(cfg.table("quant").bits, [s]) for s in stats]
    finally:
        torch.set_num_threads(threads)
    assert errors["edadm"]["W8A8"] < 5e-3, errors
    assert errors["edadm"]["W8A8"] < errors["edadm"]["merged"] < 0.05, errors
    assert errors["dgq"]["merged"] < 0.05, errors
    assert errors["dgq"]["merged"] < min(errors["dgq"]["single"]), errors
