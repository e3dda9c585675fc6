"""The figures of one side of ``overhead.py``'s comparison, and its report."""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import dataclass

import torch
from overhead_load import Phase


@dataclass
class Measurement:
    """Figures of one side (Flower or plain) of one variant."""

    round_seconds: list[float]
    train_seconds_per_round: list[float]  # Σ over clients of the time inside the train loop
    accuracy_per_domain: dict[str, float]
    wall_seconds: float | None = None  # end-to-end `flwr run` (Flower only)

    @property
    def per_round(self) -> float:
        return sum(self.round_seconds) / len(self.round_seconds)

    @property
    def train_per_round(self) -> float:
        return sum(self.train_seconds_per_round) / len(self.train_seconds_per_round)

    @property
    def mean_accuracy(self) -> float:
        return sum(self.accuracy_per_domain.values()) / len(self.accuracy_per_domain)


def print_report(
    args: argparse.Namespace,
    results: dict[str, tuple[Measurement, Measurement]],
    probe: dict[str, object],
    loads: list[tuple[str, tuple[float, float, float]]],
    phases: list[Phase],
) -> None:
    import flwr

    print()
    print(
        f"Flower overhead: {args.clients} clients (domain partitioning), {args.rounds} rounds, "
        f"FedAvg, ConvNet width {args.model_width}, 1 local epoch, "
        f"train-subset {args.train_subset or 'all'}"
    )
    print(
        f"machine: {os.cpu_count()} CPU cores, {platform.machine()}, no GPU used; torch "
        f"{torch.__version__}, flwr {flwr.__version__}, python {platform.python_version()}"
    )
    print(
        f"Flower: Ray actors with num_cpus={args.cpus_per_client}; inside such an actor "
        f"OMP_NUM_THREADS={probe.get('OMP_NUM_THREADS')}, "
        f"torch.get_num_threads()={probe.get('torch_threads', probe.get('error'))} (Ray probe)"
    )
    print(
        f"plain loop: one process, clients sequential, torch.set_num_threads({args.plain_threads})"
    )
    print()
    header = (
        f"{'variant':<11} {'Flower s/round':>14} {'plain s/round':>13} {'ratio':>6} "
        f"{'Flower wall':>11} {'start-up':>8} {'Flower train':>12} {'plain train':>11} "
        f"{'Flower acc':>10} {'plain acc':>9}"
    )
    print(header)
    print("-" * len(header))
    for variant, (fl, pl) in results.items():
        assert fl.wall_seconds is not None
        startup = fl.wall_seconds - sum(fl.round_seconds)
        print(
            f"{variant:<11} {fl.per_round:>14.2f} {pl.per_round:>13.2f} "
            f"{fl.per_round / pl.per_round:>6.2f} {fl.wall_seconds:>11.1f} {startup:>8.1f} "
            f"{fl.train_per_round:>12.2f} {pl.train_per_round:>11.2f} "
            f"{fl.mean_accuracy:>10.4f} {pl.mean_accuracy:>9.4f}"
        )
    print()
    print("columns: s/round = mean wall seconds per round (Flower: mean round-seconds of")
    print("metrics.jsonl); ratio = Flower/plain; Flower wall = whole `flwr run` command;")
    print("start-up = wall - sum(round-seconds) (everything outside the rounds); train = sum")
    print("over clients of seconds inside the local training loop per round (Flower:")
    print("train-seconds rows; these run in parallel actors); acc = mean over domains of the")
    print("final global model's test accuracy (evaluated here, outside all timings).")
    for variant, (fl, pl) in results.items():
        print(
            f"per-round seconds {variant}: Flower {fmt_seconds(fl.round_seconds)}, "
            f"plain {fmt_seconds(pl.round_seconds)}"
        )
        print(
            f"per-domain accuracy {variant}: Flower {fmt_accuracy(fl.accuracy_per_domain)}; "
            f"plain {fmt_accuracy(pl.accuracy_per_domain)}"
        )
    print(
        "load average (1, 5, 15 min): "
        + "; ".join(f"{label} {a:.2f} {b:.2f} {c:.2f}" for label, (a, b, c) in loads)
    )
    for phase in phases:
        print("machine use " + phase.describe())


def fmt_seconds(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def fmt_accuracy(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in values.items())
