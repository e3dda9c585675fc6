"""The FedLGD table of benchmarks/RESULTS.md from the finished cells of the two suites.

Reads ``summary.json`` of every finished cell of ``fedlgd-digits`` (FedLGD, FedAvg, FedProx on
the same initial local virtual data, IPC 10 and 50) and ``fedlgd-digits-real`` (FedAvg on the
real data) and prints, per method and IPC, the global model's final test accuracy per domain
and its mean over domains (mean ± sample std over the finished seeds, in %), with FedLGD's
margin over FedAvg-on-virtual-data paired by seed.  Unfinished cells are left out and the
seeds each row covers are printed.

    python benchmarks/fedlgd_table.py                       # runs/bench/... of this checkout
    python benchmarks/fedlgd_table.py --bench-dir other/bench
    python benchmarks/fedlgd_table.py --ipc50-perimage benchmarks/fedlgd_ipc50_perimage

``--ipc50-perimage DIR`` prints instead the IPC-50 rows of ``fedlgd-digits-ipc50-perimage`` (DM's
per-image step, issue 29) from the ``seed-S_STRATEGY.json`` summaries kept in DIR.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

DOMAINS = ("mnist", "optdigits", "photo-mnist", "font-digits", "street-digits")
METHODS = {
    "fedavg": "FedAvg on virtual data",
    "fedprox": "FedProx on virtual data",
    "fedlgd": "FedLGD",
}
SEEDS = (0, 1, 2)


def read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def row(label: str, ipc: str, summaries: dict[int, dict], extra: str = "") -> str:
    per_domain = [
        fmt([100 * s["server_accuracy_per_domain"][d] for s in summaries.values()]) for d in DOMAINS
    ]
    mean = fmt([100 * s["mean_accuracy"] for s in summaries.values()])
    seeds = ",".join(map(str, summaries))
    return f"| {label} | {ipc} | {seeds} | " + " | ".join(per_domain) + f" | **{mean}**{extra} |"


def margin_note(lgd: dict[int, dict], avg: dict[int, dict]) -> str:
    """FedLGD's margin over FedAvg on the same virtual data, paired by seed."""
    margins = [100 * (lgd[s]["mean_accuracy"] - avg[s]["mean_accuracy"]) for s in lgd if s in avg]
    if not margins:
        return ""
    per_seed = ", ".join(f"{m:+.1f}" for m in margins)
    return f" ({statistics.mean(margins):+.1f} vs FedAvg; per seed {per_seed})"


def perimage_rows(folder: Path) -> None:
    """The IPC-50 rows of the per-image grid from its kept summaries."""
    print("| method | IPC | seeds | " + " | ".join(DOMAINS) + " | **mean** |")
    print("|---" * (len(DOMAINS) + 4) + "|")
    found = {
        method: {seed: s for seed in SEEDS if (s := read(folder / f"seed-{seed}_{method}.json"))}
        for method in ("fedavg", "fedlgd")
    }
    print(row(METHODS["fedavg"], "50", found["fedavg"]))
    margin = margin_note(found["fedlgd"], found["fedavg"])
    print(row(METHODS["fedlgd"], "50", found["fedlgd"], margin))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench-dir", type=Path, default=Path("runs/bench"))
    parser.add_argument("--ipc50-perimage", type=Path, default=None)
    args = parser.parse_args()
    if args.ipc50_perimage is not None:
        perimage_rows(args.ipc50_perimage)
        return
    virtual = args.bench_dir / "fedlgd-digits" / "runs"
    real = args.bench_dir / "fedlgd-digits-real" / "runs"
    print("| method | IPC | seeds | " + " | ".join(DOMAINS) + " | **mean** |")
    print("|---" * (len(DOMAINS) + 4) + "|")
    for ipc in (10, 50):
        found: dict[str, dict[int, dict]] = {}
        for method in METHODS:
            cells = {seed: virtual / f"seed-{seed}_ipc-{ipc}_strategy-{method}" for seed in SEEDS}
            found[method] = {
                seed: s for seed, cell in cells.items() if (s := read(cell / "summary.json"))
            }
        for method, label in METHODS.items():
            if not found[method]:
                continue
            extra = margin_note(found["fedlgd"], found["fedavg"]) if method == "fedlgd" else ""
            print(row(label, str(ipc), found[method], extra))
    reference = {seed: s for seed in SEEDS if (s := read(real / f"seed-{seed}" / "summary.json"))}
    if reference:
        print(row("FedAvg on the real data (reference)", "–", reference))


if __name__ == "__main__":
    main()
