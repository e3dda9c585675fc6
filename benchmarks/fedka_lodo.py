"""FedKA leave-one-domain-out benchmark on the five embedded digit domains.

Each domain is held out in turn (``target-domain``); the other four are the clients (one
per domain).  Methods, all through the real `flwr run` simulation (``PrivateFlower``), each
with its FedKA settings spelled out (so a change of fedmatch's defaults cannot relabel them):

- ``fedavg``: FedAvg on the sources only; target accuracy = the server's evaluation of the
  global model on the target's test split;
- ``fedka``: FedKA as fedmatch runs it by default: MK-MMD alignment, federated voting with
  unanimous pseudo-labels (``vote-threshold=1``), class-balanced fine-tuning
  (``finetune-balance``) and the fine-tuned model sent back to the clients
  (``fedka-broadcast='finetuned'``); target accuracy = the fine-tuned global model on the
  target's test split;
- ``fedka-no-voting``: ``finetune-steps=0`` (alignment only; broadcast and balance then do
  nothing);
- ``fedka-no-mmd``: the default FedKA with ``mmd-weight=0`` (voting + fine-tuning only);
- ``fedka-unbalanced`` / ``fedka-unbalanced-no-mmd``: fine-tuned broadcast, plain
  (unbalanced) fine-tuning batches, with and without MMD;
- ``fedka-official`` / ``-plurality`` / ``-no-mmd``: the official code's broadcast (clients
  restart from the FedAvg weights, so fine-tuning never carries over rounds) and plain
  fine-tuning; with the unanimous vote, with its plurality vote (``vote-threshold=0``), and
  without MMD.

All pending runs go into one `flwr run` (run-config key ``cells-file``: the runs share the
simulation's start-up and stay separate runs).  Every finished run appends one JSON line to
``--results`` (the file doubles as a resume log: runs already in it are skipped), then the
table of final-round target accuracy (mean ± std over seeds; best round beside it,
labelled) is printed.

    python benchmarks/fedka_lodo.py --seeds 0 1 2 --rounds 10 --train-subset 1000 --width 32
    python benchmarks/fedka_lodo.py --table-only --results benchmarks/fedka_lodo.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import tomllib
from pathlib import Path

from fedmatch.cells import CellSpec, read_status, write_cells
from fedmatch.data.embedded import EMBEDDED_DOMAINS
from fedmatch.localrun import PrivateFlower
from fedmatch.results import read_metrics

_DEFAULT = {"strategy": "fedka", "fedka.broadcast": "finetuned", "fedka.finetune-balance": True}
_UNBALANCED = {"strategy": "fedka", "fedka.broadcast": "finetuned", "fedka.finetune-balance": False}
_OFFICIAL = {"strategy": "fedka", "fedka.broadcast": "averaged", "fedka.finetune-balance": False}
METHODS: dict[str, dict[str, object]] = {
    "fedavg": {"strategy": "fedavg"},
    "fedka": _DEFAULT,
    "fedka-no-voting": {"strategy": "fedka", "fedka.finetune-steps": 0},
    "fedka-no-mmd": {**_DEFAULT, "fedka.mmd-weight": 0.0},
    "fedka-unbalanced": _UNBALANCED,
    "fedka-unbalanced-no-mmd": {**_UNBALANCED, "fedka.mmd-weight": 0.0},
    "fedka-official": _OFFICIAL,
    "fedka-official-plurality": {**_OFFICIAL, "fedka.vote-threshold": 0.0},
    "fedka-official-no-mmd": {**_OFFICIAL, "fedka.mmd-weight": 0.0},
}
LABELS = {
    "fedavg": "FedAvg (source only)",
    "fedka": "FedKA",
    "fedka-no-voting": "FedKA w/o voting",
    "fedka-no-mmd": "FedKA w/o MMD",
    "fedka-unbalanced": "FedKA, unbalanced fine-tuning",
    "fedka-unbalanced-no-mmd": "unbalanced w/o MMD",
    "fedka-official": "FedKA, official broadcast",
    "fedka-official-plurality": "official broadcast, plurality vote",
    "fedka-official-no-mmd": "official broadcast w/o MMD",
}


def target_curve(run_dir: Path, method: str, target: str) -> dict[int, float]:
    """Target test accuracy per round (round 0 = the initial model for FedAvg)."""
    metric = "test-accuracy" if method == "fedavg" else "target-accuracy-finetuned"
    return {
        row.round: row.value
        for row in read_metrics(run_dir)
        if row.client == "server" and row.domain == target and row.metric == metric
    }


def server_series(run_dir: Path, metric: str) -> dict[int, float]:
    return {
        row.round: row.value
        for row in read_metrics(run_dir)
        if row.client == "server" and row.metric == metric
    }


def run_config(runs: Path, args: argparse.Namespace, target: str, seed: int, method: str):
    name = f"{method}-{target}-seed{seed}"
    return name, {
        "domains": "all",
        "target-domain": target,
        "num-server-rounds": args.rounds,
        "train-subset": args.train_subset,
        "model": args.model,
        "model-width": args.width,
        "seed": seed,
        "fraction-evaluate": 0.0,
        # FedAvg's target accuracy is the server's evaluation; FedKA records its own.
        "server-eval": method == "fedavg",
        "runs-dir": str(runs),
        "cache-dir": args.cache_dir,
        "run-name": name,
        **METHODS[method],
        **args.extra,
    }


def record_of(
    run_dir: Path, config: dict, target: str, seed: int, method: str, seconds: float
) -> dict[str, object]:
    curve = target_curve(run_dir, method, target)
    final_round = max(curve)
    record: dict[str, object] = {
        "target": target,
        "seed": seed,
        "method": method,
        "final": curve[final_round],
        "best": max(v for r, v in curve.items() if r > 0),
        "best_round": max((v, r) for r, v in curve.items() if r > 0)[1],
        "rounds": final_round,
        "curve": curve,
        "wall_seconds": seconds,
        "config": config,
    }
    if method != "fedavg":
        for metric in (
            "target-accuracy-averaged",
            "pseudo-label-accuracy",
            "pseudo-label-coverage",
            "group-effect",
        ):
            series = server_series(run_dir, metric)
            if series:
                record[metric] = series[max(series)]
    return record


def run_pending(
    flower: PrivateFlower, runs: Path, args: argparse.Namespace, pending: list[tuple]
) -> list[dict]:
    """All pending (target, seed, method) runs in one `flwr run`; their records."""
    specs, meta = [], {}
    for target, seed, method in pending:
        name, config = run_config(runs, args, target, seed, method)
        specs.append(CellSpec(name, config))
        meta[name] = (config, target, seed, method)
    cells_file = runs / "cells.json"
    write_cells(cells_file, specs)
    result = flower.run(
        {"cells-file": str(cells_file)},
        num_supernodes=len(EMBEDDED_DOMAINS) - 1,
        timeout=args.timeout * len(specs),
    )
    status = read_status(cells_file)
    records = []
    for name, (config, target, seed, method) in meta.items():
        cell = status.get(name)
        if cell is None or cell.status != "done":
            error = cell.error if cell else (result.stdout + result.stderr)[-3000:]
            print(f"{name} did not finish: {error}", file=sys.stderr)
            continue
        records.append(record_of(runs / name, config, target, seed, method, cell.seconds))
    return records


def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def table(records: list[dict]) -> str:
    """Markdown table: per target and method, final-round accuracy (best round beside it)."""
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]
    targets = [t for t in EMBEDDED_DOMAINS if any(r["target"] == t for r in records)]
    header = "| target (held out) | " + " | ".join(
        f"{LABELS[m]}: final | {LABELS[m]}: best round" for m in methods
    )
    lines = [header + " | seeds |", "|---" * (1 + 2 * len(methods)) + "|---|"]
    means: dict[str, list[float]] = {m: [] for m in methods}
    bests: dict[str, list[float]] = {m: [] for m in methods}
    for target in targets:
        cells, seeds = [], set()
        for m in methods:
            rows = [r for r in records if r["target"] == target and r["method"] == m]
            seeds |= {r["seed"] for r in rows}
            cells += [_cell([r["final"] for r in rows]), _cell([r["best"] for r in rows])]
            if rows:
                means[m].append(statistics.fmean(r["final"] for r in rows))
                bests[m].append(statistics.fmean(r["best"] for r in rows))
        lines.append(f"| {target} | " + " | ".join(cells) + f" | {sorted(seeds)} |")
    complete = all(len(means[m]) == len(targets) for m in methods)
    mean_cells = []
    for m in methods:
        # Plain means over the targets (each target's cell already averages its seeds).
        for values in (means[m], bests[m]):
            mean_cells.append(f"{100 * statistics.fmean(values):.1f}" if complete else "–")
    lines.append("| **mean over targets** | " + " | ".join(mean_cells) + " | |")
    return "\n".join(lines)


def diagnostics(records: list[dict]) -> str:
    """Final-round FedKA diagnostics per target (mean over seeds), and FedKA − FedAvg.

    With the official broadcast and no MMD the clients train exactly as FedAvg's do (the
    fine-tuned model is never sent), so that run's averaged model *is* FedAvg's and its
    ``group-effect`` is FedAvg's Group Effect.
    """

    def mean(target: str, method: str, key: str) -> float | None:
        values = [
            r[key] for r in records if r["target"] == target and r["method"] == method and key in r
        ]
        return statistics.fmean(values) if values else None

    def fmt(value: float | None, signed: bool = False) -> str:
        if value is None:
            return "–"
        return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"

    lines = [
        "| target | FedKA − FedAvg (final) | FedKA averaged model | FedKA pseudo-label acc "
        "| Group Effect FedKA | Group Effect FedAvg |",
        "|---|---|---|---|---|---|",
    ]
    columns: list[list[float | None]] = []
    for target in [t for t in EMBEDDED_DOMAINS if any(r["target"] == t for r in records)]:
        ka, avg = mean(target, "fedka", "final"), mean(target, "fedavg", "final")
        row = [
            None if ka is None or avg is None else ka - avg,
            mean(target, "fedka", "target-accuracy-averaged"),
            mean(target, "fedka", "pseudo-label-accuracy"),
            mean(target, "fedka", "group-effect"),
            mean(target, "fedka-official-no-mmd", "group-effect"),
        ]
        columns.append(row)
        lines.append(f"| {target} | " + " | ".join(_diag_cells(row, fmt)) + " |")
    means = [
        None if any(row[i] is None for row in columns) else statistics.fmean(r[i] for r in columns)
        for i in range(5)
    ]
    lines.append("| **mean over targets** | " + " | ".join(_diag_cells(means, fmt)) + " |")
    return "\n".join(lines)


def paired(records: list[dict], method: str = "fedka") -> str:
    """``method`` − FedAvg final accuracy over the (target, seed) pairs both ran."""
    final = {(r["target"], r["seed"], r["method"]): r["final"] for r in records}
    diffs = [
        final[(t, s, method)] - value
        for (t, s, m), value in final.items()
        if m == "fedavg" and (t, s, method) in final
    ]
    if len(diffs) < 2:
        return f"{LABELS[method]} − FedAvg: fewer than 2 paired runs"
    sd = statistics.stdev(diffs)
    return (
        f"{LABELS[method]} − FedAvg, final round, over {len(diffs)} (target, seed) pairs: "
        f"mean {100 * statistics.fmean(diffs):+.1f} points (sd {100 * sd:.1f}, "
        f"s.e. {100 * sd / len(diffs) ** 0.5:.1f}); better in {sum(d > 0 for d in diffs)}, "
        f"worse in {sum(d < 0 for d in diffs)}"
    )


def _diag_cells(row: list[float | None], fmt) -> list[str]:
    signed = (True, False, False, True, True)
    return [fmt(value, signed=flag) for value, flag in zip(row, signed, strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", default=list(EMBEDDED_DOMAINS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--train-subset", type=int, default=1000)
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument(
        "--set", nargs="*", default=[], help="extra run-config items key=TOML-value (all runs)"
    )
    parser.add_argument("--results", type=Path, default=Path("benchmarks/fedka_lodo.jsonl"))
    parser.add_argument("--cache-dir", default=str(Path("~/.cache/fedmatch").expanduser()))
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep run directories here")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    # ``--set k=v`` values are TOML, as on the `flwr run --run-config` command line.
    args.extra = {k: _toml(v) for k, v in (item.split("=", 1) for item in args.set)}

    done = load_results(args.results)
    if not args.table_only:
        home = Path(tempfile.mkdtemp(prefix="fedka-lodo-"))
        runs = args.runs_dir or home / "runs"
        flower = PrivateFlower.create(home / "flwr-home")
        try:
            # Seed-major order: an interrupted grid still has whole seeds of all tasks.
            finished = {(r["target"], r["seed"], r["method"]) for r in done}
            pending = [
                (target, seed, method)
                for seed in args.seeds
                for target in args.targets
                for method in args.methods
                if (target, seed, method) not in finished
            ]
            if pending:
                runs.mkdir(parents=True, exist_ok=True)
                for record in run_pending(flower, runs, args, pending):
                    done.append(record)
                    with args.results.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    print(
                        f"{record['method']:16s} target {record['target']:14s} seed "
                        f"{record['seed']}: final {record['final']:.4f} best "
                        f"{record['best']:.4f} ({record['wall_seconds']:.0f} s)",
                        flush=True,
                    )
        finally:
            flower.stop()
    # The tables show the requested seeds and methods only (all by default).
    shown = [r for r in done if r["seed"] in args.seeds and r["method"] in args.methods]
    print(table(shown))
    print()
    print(diagnostics(shown))
    print()
    for method in [m for m in METHODS if m != "fedavg" and m in args.methods]:
        print(paired(shown, method))
    return 0


def _toml(value: str) -> object:
    return tomllib.loads(f"v = {value}")["v"]


if __name__ == "__main__":
    sys.exit(main())
