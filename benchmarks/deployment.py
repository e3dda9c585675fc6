"""What does the deployment engine cost per round, next to the simulation engine?

The same tiny FedAvg job runs twice on this machine:

1. **deployment**: a ``flower-superlink`` and one ``flower-supernode`` process per
   client on 127.0.0.1 (``fedmatch.deploy.LocalDeployment``, subprocess isolation,
   one torch thread per ClientApp), ``flwr run . <connection>``; every message runs
   in a fresh ClientApp process (Python start, imports, app bundle install, data
   load from the cache);
2. **simulation**: ``flwr run .`` on the Ray backend (``fedmatch.localrun.PrivateFlower``,
   one CPU per virtual client), where client actors are reused across messages.

Per round: the mean of the ServerApp's ``round-seconds`` rows.  ``start-up`` is the
time before the run could start (deployment: SuperLink and SuperNodes healthy) plus
``flwr run`` wall time minus the rounds.  ``CPU s`` is the CPU time of the
deployment's processes (all children of this script, reaped); the simulation's
SuperLink is detached by ``flwr run``, so its CPU time is not counted there.
``foreign`` is the share of the machine's CPU time that other processes used
meanwhile (from /proc/stat), which makes timings on a shared machine readable.

Usage::

    python benchmarks/deployment.py [--rounds 3] [--clients 3] [--train-subset 200]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from fedmatch.config import RunConfig
from fedmatch.data.loaders import load_domains
from fedmatch.deploy import LocalDeployment
from fedmatch.localrun import PrivateFlower
from fedmatch.results import read_metrics

DOMAINS = ["mnist", "optdigits", "photo-mnist", "font-digits", "street-digits"]


def busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def measure(label: str, job) -> dict:
    wall0, busy0, own0 = time.perf_counter(), busy_seconds(), own_seconds()
    run_dir, ready = job()
    wall = time.perf_counter() - wall0
    own = own_seconds() - own0
    foreign = max(0.0, busy_seconds() - busy0 - own) / (wall * (os.cpu_count() or 1))
    if not (run_dir / "summary.json").exists():
        raise RuntimeError(f"{label}: the run did not finish ({run_dir})")
    rounds = [r.value for r in read_metrics(run_dir) if r.metric == "round-seconds"]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "engine": label,
        "s/round": sum(rounds) / len(rounds),
        "rounds": rounds,
        "wall": wall,
        "start-up": wall - sum(rounds),
        "ready": ready,
        "cpu": own if label == "deployment" else None,
        "foreign": foreign,
        "accuracy": summary["mean_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=3, choices=range(1, 6))
    parser.add_argument("--train-subset", type=int, default=200)
    parser.add_argument("--model-width", type=int, default=16)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fedmatch-bench-deploy-"))
    config = {
        "domains": ",".join(DOMAINS[: args.clients]),
        "train-subset": args.train_subset,
        "model-width": args.model_width,
        "num-server-rounds": args.rounds,
        "min-available-nodes": args.clients,
        "runs-dir": str(work / "runs"),
        "cache-dir": str(work / "cache"),
        "seed": 0,
    }
    # Build the data cache once, outside the timings of both engines.
    load_domains(RunConfig.from_flower(config))

    def deployment():
        start = time.perf_counter()
        with LocalDeployment(work / "deploy", threads_per_node=1) as dep:
            dep.start_superlink()
            dep.start_supernodes(args.clients)
            ready = time.perf_counter() - start
            dep.run({**config, "run-name": "deployment"})
        return work / "runs" / "deployment", ready

    def simulation():
        flower = PrivateFlower.create(work / "sim-home")
        try:
            flower.run({**config, "run-name": "simulation"}, num_supernodes=args.clients)
        finally:
            flower.stop()
        return work / "runs" / "simulation", 0.0

    results = [measure("deployment", deployment), measure("simulation", simulation)]
    print(
        f"{args.clients} clients, {args.rounds} rounds, train-subset {args.train_subset}, "
        f"width {args.model_width}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f} at the end"
    )
    print(
        "| engine | s/round | rounds | start-up s (nodes up) | wall s | CPU s | foreign CPU "
        "| mean acc |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        rounds = ", ".join(f"{x:.1f}" for x in r["rounds"])
        cpu = "n/a" if r["cpu"] is None else f"{r['cpu']:.0f}"
        print(
            f"| {r['engine']} | {r['s/round']:.1f} | {rounds} | {r['start-up']:.1f} "
            f"({r['ready']:.1f}) "
            f"| {r['wall']:.1f} | {cpu} "
            f"| {100 * r['foreign']:.0f}% "
            f"| {r['accuracy']:.4f} |"
        )


if __name__ == "__main__":
    main()
