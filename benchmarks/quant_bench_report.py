"""The tables of ``quant_bench.py``: every row, and the summary over ``--quant-seeds``.

python benchmarks/quant_bench_report.py benchmarks/quant_bench_cpu.json
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

log = logging.getLogger("fedmatch.bench")


def class_accuracy(point: dict[str, Any]) -> float | None:
    """Mean over domains of the share of samples the domain's classifier labels as asked."""
    acc = point.get("class_accuracy")
    if not acc:
        return None
    return statistics.fmean(d["samples"] for d in acc.values())


def _acc(point: dict[str, Any]) -> str:
    acc = class_accuracy(point)
    return "–" if acc is None else f"{100 * acc:.1f}"


def print_table(results: dict[str, Any]) -> None:
    fp = results["fp32"]["fid"]
    lines = [
        f"FP32: FID-digits {fp:.2f}, class accuracy {_acc(results['fp32'])} %, "
        f"{results['fp32']['bytes']} bytes, {results['fp32']['ms_per_image']:.2f} ms/image",
        "| bits | method | weights | calibration | seed | FID-digits | gap to FP32 "
        "| class acc. % | bytes | ms / image |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['bits']} | {r['method']} | {r.get('weight_clipping', 'method')} "
            f"| {r['calibration']} | {r.get('seed', '')} | {r['fid']:.2f} | {r['fid'] - fp:+.2f} "
            f"| {_acc(r)} | {r['bytes']} | {r['ms_per_image']:.2f} |"
        )
    log.info("\n%s", "\n".join(lines))


def _spread(values: list[float], fmt: str = ".2f") -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{statistics.fmean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (bits, method, weight clipping, calibration) over the seeds: FID, its gap
    to FP32 and that gap as a share of the naive baseline's (min-max weights, the same bits,
    calibration and seed), so 0.5 means the method removes half of naive's error."""
    fp = results["fp32"]["fid"]
    naive = {
        (r["bits"], r["calibration"], r.get("seed")): r["fid"] - fp
        for r in results["runs"]
        if r["method"] == "naive" and r.get("weight_clipping", "method") in ("method", "minmax")
    }
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results["runs"]:
        key = (r["bits"], r["method"], r.get("weight_clipping", "method"), r["calibration"])
        groups[key].append(r)
    rows = []
    for (bits, method, clipping, calibration), runs in groups.items():
        gaps = [r["fid"] - fp for r in runs]
        shares = [
            (r["fid"] - fp) / naive[(bits, calibration, r.get("seed"))]
            for r in runs
            if naive.get((bits, calibration, r.get("seed"))) not in (None, 0.0)
        ]
        accs = [a for a in (class_accuracy(r) for r in runs) if a is not None]
        rows.append(
            {
                "bits": bits,
                "method": method,
                "weight_clipping": clipping,
                "calibration": calibration,
                "seeds": len(runs),
                "fid": [r["fid"] for r in runs],
                "gap": gaps,
                "share_of_naive_gap": shares,
                "class_accuracy": accs,
            }
        )
    return rows


def print_summary(results: dict[str, Any]) -> None:
    lines = [
        "| bits | method | weights | calibration | seeds | FID-digits | gap to FP32 "
        "| share of naive's gap | class acc. % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary_rows(results):
        share = _spread(row["share_of_naive_gap"]) if row["share_of_naive_gap"] else "–"
        acc = (
            _spread([100 * a for a in row["class_accuracy"]], ".1f")
            if row["class_accuracy"]
            else "–"
        )
        lines.append(
            f"| {row['bits']} | {row['method']} | {row['weight_clipping']} | {row['calibration']} "
            f"| {row['seeds']} | {_spread(row['fid'])} | {_spread(row['gap'])} | {share} | {acc} |"
        )
    log.info("\n%s", "\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = (argv if argv is not None else sys.argv[1:]) or []
    if not paths:
        raise SystemExit("usage: quant_bench_report.py RESULTS.json")
    for path in paths:
        try:
            results = json.loads(Path(path).read_text())
            print_table(results)
            print_summary(results)
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise SystemExit(f"{path}: not a quant_bench.py result ({err!r})") from None


if __name__ == "__main__":
    main()
