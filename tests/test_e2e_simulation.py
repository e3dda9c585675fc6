"""End-to-end: the real `flwr run` simulation engine (Ray backend) with tiny configs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fedmatch import failpoints
from fedmatch.localrun import (
    PrivateFlower,
    cmdline,
    is_alive,
    local_superlinks,
    process_environ,
    process_tree,
    stop_tree,
    toml_value,
)
from tests.flower_harness import read_jsonl

pytestmark = pytest.mark.e2e

DOMAINS = "mnist,optdigits,font-digits"


def tiny(runs_dir: Path, cache_dir: Path, **overrides) -> dict[str, object]:
    config: dict[str, object] = {
        "domains": DOMAINS,
        "train-subset": 300,
        "model-width": 16,
        "batch-size": 32,
        "lr": 0.05,
        "num-server-rounds": 3,
        "runs-dir": str(runs_dir),
        "cache-dir": str(cache_dir),
        "seed": 7,
    }
    config.update(overrides)
    return config


def finished(result, run_dir: Path) -> dict:
    output = result.stdout + result.stderr
    assert (run_dir / "summary.json").exists(), output[-5000:]
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def fedavg_run(flower: PrivateFlower, tmp_path_factory, data_cache) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    result = flower.run(tiny(runs, data_cache, **{"run-name": "fedavg"}))
    finished(result, runs / "fedavg")
    return runs / "fedavg"


def test_fedavg_learns_and_writes_the_run_directory(fedavg_run: Path):
    for name in ("config.json", "metrics.jsonl", "summary.json", "model.pt", "checkpoint.pt"):
        assert (fedavg_run / name).exists(), name
    summary = json.loads((fedavg_run / "summary.json").read_text())
    assert summary["final_round"] == 3
    assert set(summary["client_accuracy_per_domain"]) == set(DOMAINS.split(","))
    # Ten classes: chance is 0.1.  Three rounds on 300 images per client clear it widely.
    assert summary["mean_accuracy"] > 0.3
    assert min(summary["server_accuracy_per_domain"].values()) > 0.15

    rows = read_jsonl(fedavg_run / "metrics.jsonl")
    clients = {r["client"] for r in rows if r["metric"] == "train-loss"}
    assert clients == {0, 1, 2}
    for metric in ("bytes-down", "bytes-up", "train-loss", "test-accuracy", "train-seconds"):
        rounds = {r["round"] for r in rows if r["metric"] == metric and r["client"] != "server"}
        assert rounds == {1, 2, 3}, metric
    # The server also evaluates the initial model (round 0) on every domain.
    assert sum(1 for r in rows if r["round"] == 0 and r["metric"] == "test-accuracy") == 3
    assert sum(1 for r in rows if r["metric"] == "round-seconds") == 3
    # The uploaded model has the model's size.
    state = torch.load(fedavg_run / "model.pt", weights_only=True)
    up = [r["value"] for r in rows if r["metric"] == "bytes-up"]
    assert min(up) >= sum(t.numel() * 4 for t in state.values())

    # Training loss falls over the rounds.
    def mean_loss(r: int) -> float:
        losses = [x["value"] for x in rows if x["metric"] == "train-loss" and x["round"] == r]
        return sum(losses) / len(losses)

    assert mean_loss(3) < mean_loss(1)


def test_fedbn_keeps_norm_layers_local_and_fedprox_runs(flower, tmp_path, data_cache, fedavg_run):
    result = flower.run(tiny(tmp_path, data_cache, strategy="fedbn", **{"run-name": "bn"}))
    summary = finished(result, tmp_path / "bn")
    assert summary["mean_accuracy"] > 0.3
    assert summary["server_accuracy_per_domain"] == {}  # global model is incomplete
    bn_up = summary["bytes_up_total"]
    avg_up = json.loads((fedavg_run / "summary.json").read_text())["bytes_up_total"]
    assert 0 < bn_up < avg_up
    # Each client keeps its normalisation layers in a per-round state file.
    assert sorted(p.name for p in (tmp_path / "bn" / "clients").iterdir()) == [
        "partition-0",
        "partition-1",
        "partition-2",
    ]

    result = flower.run(
        tiny(
            tmp_path,
            data_cache,
            strategy="fedprox",
            **{"fedprox.proximal-mu": 0.1, "run-name": "px"},
        )
    )
    summary = finished(result, tmp_path / "px")
    assert summary["mean_accuracy"] > 0.3
    saved = json.loads((tmp_path / "px" / "config.json").read_text())["run_config"]
    assert saved["fedprox.proximal-mu"] == 0.1


def test_bad_config_stops_the_run_before_any_client_starts(flower, tmp_path, data_cache):
    result = flower.run(
        tiny(
            tmp_path,
            data_cache,
            strategy="fedfoo",
            partitioning="dirichlet",
            alpha=0,
            **{"num-server-rounds": -1, "run-name": "bad"},
        ),
        timeout=200,
    )
    output = result.stdout + result.stderr
    assert "run-config key 'strategy' = 'fedfoo'" in output
    # Every allowed strategy is listed (more are appended as methods are added).
    assert "allowed: 'fedavg', 'fedprox', 'fedbn'" in output
    assert "run-config key 'num-server-rounds' = -1" in output
    assert "run-config key 'alpha' = 0" in output
    assert not (tmp_path / "bad").exists()
    assert "client 0:" not in output and "aggregate_train" not in output
    # A split the federation cannot serve (5 domains, 3 SuperNodes) is refused by the same
    # ServerApp check through `flwr run` in tests/test_cells_e2e.py and test_bench_e2e.py.

    # A model the config cannot build is refused before the run directory exists, so the
    # name stays free for the corrected run.
    result = flower.run(
        tiny(
            tmp_path, data_cache, **{"model-norm": "groupnorm", "model-width": 6, "run-name": "gn"}
        ),
        timeout=200,
    )
    output = result.stdout + result.stderr
    assert "groupnorm" in output and "divisible by 4" in output
    assert not (tmp_path / "gn").exists()


def _simulation_processes(flower: PrivateFlower) -> list[int]:
    found = []
    for link in local_superlinks(flower.home):
        found += [p for p in process_tree(link) if "flwr-simulation" in cmdline(p)]
    return found


def _run_processes(flower: PrivateFlower, before: set[int]) -> set[int]:
    """Live processes of this Flower home started after ``before`` was taken, other than the
    SuperLink and its SuperExec: those of a run (its simulation, Ray and Ray's workers)."""
    service = ("flower-superlink", "flower-superexec")
    return {
        p
        for p in _flower_processes(flower) - before
        if is_alive(p) and not any(name in cmdline(p) for name in service)
    }


def _kill_leftovers(flower: PrivateFlower, before: set[int]) -> None:
    """What a killed simulation left (its Ray processes), so it cannot slow later tests."""
    for pid in _run_processes(flower, before):
        stop_tree(pid, timeout=5)


def _flower_processes(flower: PrivateFlower) -> set[int]:
    pids = (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    return {p for p in pids if process_environ(p).get("FLWR_HOME") == str(flower.home)}


def _crash_mid_write(flower, config: dict, point: str, fraction: float, run_dir: Path) -> None:
    """Resume ``config`` with the failpoint ``point`` armed and wait for the kill it makes."""
    armed = Path(flower.env[failpoints.ENV])
    armed.write_text(f"{point} {fraction}")
    before = _flower_processes(flower)
    proc = flower.popen({**config, "resume": True})
    deadline = time.monotonic() + 300
    try:
        # The kill: the failpoint consumed its file and the simulation process is gone.
        while armed.exists() or _simulation_processes(flower):
            if proc.poll() is not None and armed.exists():
                pytest.fail(f"the run ended before {point} fired:\n{proc.stdout.read()[-5000:]}")
            assert time.monotonic() < deadline, f"{point} never fired"
            time.sleep(0.1)
    finally:
        armed.unlink(missing_ok=True)
        proc.kill()  # `flwr run` would follow the dead run's log until the SuperLink notices
        proc.wait()
        _kill_leftovers(flower, before)
    assert not (run_dir / "summary.json").exists(), f"the run ended before {point} fired"


def test_ctrl_c_and_kills_mid_write_resume_to_the_same_final_metrics(
    flower, tmp_path, data_cache, fedavg_run
):
    """Ctrl-C through `fedmatch run`, then kill -9 in the middle of a metrics append and in the
    middle of a checkpoint write, each followed by resume: the final metrics are the
    uninterrupted run's.  The kills cut their write at random byte offsets (seeded: the
    fractions are in the assertion messages)."""
    rng = random.Random(29)
    config = tiny(tmp_path, data_cache, **{"run-name": "fedavg"})
    run_dir = tmp_path / "fedavg"
    command = [
        sys.executable,
        "-m",
        "fedmatch.cli",
        "run",
        str(flower.app),
        "--run-config",
        " ".join(f"{k}={toml_value(v)}" for k, v in config.items()),
        "--federation-config",
        "num-supernodes=3 client-resources-num-cpus=1 client-resources-num-gpus=0",
    ]
    before = _flower_processes(flower)
    # Its own session, as a terminal's foreground job: Ctrl-C goes to its process group.
    run = subprocess.Popen(
        command,
        cwd=flower.app,
        env=flower.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    try:
        while not (run_dir / "checkpoint.pt").exists():
            assert run.poll() is None, run.stdout.read()[-5000:]
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.05)
        os.killpg(run.pid, signal.SIGINT)
        output = run.communicate(timeout=120)[0]
    finally:
        if run.poll() is None:
            stop_tree(run.pid)
    assert run.returncode == 130, output[-5000:]
    # Nothing of the run is left: its simulation process, Ray and the client actors.
    left = {p: cmdline(p)[:80] for p in _run_processes(flower, before)}
    assert not left, f"processes of the stopped run still alive: {left}"
    marker = json.loads((run_dir / "interrupted.json").read_text())
    stopped_at = torch.load(run_dir / "checkpoint.pt", weights_only=True)["round"]
    assert marker["completed_round"] == stopped_at < 3
    assert f"interrupted after round {stopped_at} of 3; continue it with:" in output
    assert "resume=true" in output.splitlines()[-1]
    show = subprocess.run(
        [sys.executable, "-m", "fedmatch.cli", "show", str(run_dir)],
        capture_output=True,
        text=True,
        env=flower.env,
        cwd=flower.app,
    )
    assert show.returncode == 1 and "interrupted after round" in show.stderr

    # kill -9 in the middle of appending the next round's metrics: a torn last line.
    fraction = rng.uniform(0.05, 0.95)
    _crash_mid_write(flower, config, "metrics-append", fraction, run_dir)
    assert not (run_dir / "metrics.jsonl").read_bytes().endswith(b"\n"), fraction
    assert not (run_dir / "interrupted.json").exists()  # resume reopened the run

    # kill -9 in the middle of writing a checkpoint: the old one stays, the temp file is debris.
    fraction = rng.uniform(0.05, 0.95)
    _crash_mid_write(flower, config, "checkpoint-write", fraction, run_dir)
    assert list(run_dir.glob(".checkpoint.pt.*.tmp")), fraction
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["round"] == stopped_at

    result = flower.run({**config, "resume": True})
    resumed = finished(result, run_dir)
    assert f"resuming {run_dir} after round {stopped_at}" in result.stdout + result.stderr
    assert not list(run_dir.glob(".*.tmp"))
    reference = json.loads((fedavg_run / "summary.json").read_text())
    for key in ("client_accuracy_per_domain", "server_accuracy_per_domain", "bytes_up_total"):
        assert resumed[key] == reference[key], key

    def final_rows(run_dir: Path) -> list[tuple]:
        return sorted(
            (r["round"], str(r["client"]), r["metric"], r["value"])
            for r in read_jsonl(run_dir / "metrics.jsonl")
            if "seconds" not in r["metric"]
        )

    assert final_rows(run_dir) == final_rows(fedavg_run)
