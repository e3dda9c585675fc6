"""The report's tables: one row per run (``summary.csv``), per variant, and their text."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from fedmatch.report.runs import Group


def run_table(groups: Sequence[Group]) -> pd.DataFrame:
    """One row per run (``summary.csv``): headline numbers and the full config."""
    records = []
    for index, group in enumerate(groups, start=1):
        for run in group.runs:
            final = run.final_accuracy
            worst_domain = str(final.idxmin()) if not final.empty else ""
            record: dict[str, Any] = {
                "run": run.label,
                "run_dir": str(run.run_dir),
                "group": index,
                "variant": group.variant(run),
                "strategy": run.strategy,
                "seed": run.seed,
                "final_round": run.final_round,
                "accuracy_source": run.accuracy_source,
                "final_mean_accuracy": float(final.mean()) if not final.empty else math.nan,
                "worst_domain": worst_domain,
                "worst_domain_accuracy": float(final.min()) if not final.empty else math.nan,
                "target_domain_accuracy": run.target_domain_accuracy,
            }
            for domain, value in final.items():
                record[f"accuracy.{domain}"] = float(value)
            reached = run.rounds_to(group.target)
            record["target_accuracy"] = group.target
            record["rounds_to_target"] = reached if reached is not None else math.nan
            record["bytes_down_per_client_round"] = run.bytes_per_client_round("bytes-down")
            record["bytes_up_per_client_round"] = run.bytes_per_client_round("bytes-up")
            seconds = run.round_seconds
            record["seconds_per_round"] = float(seconds.mean()) if not seconds.empty else math.nan
            for metric, value in sorted(run.server_metrics.items()):
                record[f"server.{metric}"] = value
            for key, value in sorted(run.config.items()):
                record[f"config.{key}"] = value
            records.append(record)
    return pd.DataFrame.from_records(records)


def variant_table(runs: pd.DataFrame, domains: Sequence[str]) -> pd.DataFrame:
    """Mean and sample std over seeds of each variant's numbers (rows of one group)."""
    columns = [
        "final_mean_accuracy",
        "worst_domain_accuracy",
        *[f"accuracy.{d}" for d in domains],
        "target_domain_accuracy",
        "rounds_to_target",
        "bytes_down_per_client_round",
        "bytes_up_per_client_round",
        "seconds_per_round",
    ]
    grouped = runs.groupby("variant", sort=False)
    table = pd.DataFrame(
        {
            "runs": grouped.size(),
            "seeds": grouped["seed"].apply(lambda s: ",".join(map(str, sorted(s)))),
            "reached_target": grouped["rounds_to_target"].count(),
        }
    )
    for column in columns:
        table[f"{column}.mean"] = grouped[column].mean()
        table[f"{column}.std"] = grouped[column].std(ddof=1)
    return table


def _pm(mean: float, std: float, n: int, digits: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    if n > 1 and not math.isnan(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def format_variant_table(
    table: pd.DataFrame, domains: Sequence[str], target: float, target_domain: str = ""
) -> tuple:
    """Header and rows (strings) of the summary table.

    ``target_domain``: the held-out domain of leave-one-domain-out runs, whose accuracy
    gets a column of its own (the other domain columns are the sources').
    """
    header = [
        "strategy",
        "runs (seeds)",
        *([f"target {target_domain} acc"] if target_domain else []),
        "final avg acc",
        "worst-domain acc",
        *domains,
        f"rounds to {target:.3f}",
        "KB down / client / round",
        "KB up / client / round",
        "s / round",
    ]
    rows = []
    for variant, row in table.iterrows():
        n = int(row["runs"])

        def pm(column: str, digits: int, scale: float = 1.0, _row=row, _n=n) -> str:
            return _pm(_row[f"{column}.mean"] / scale, _row[f"{column}.std"] / scale, _n, digits)

        reached = int(row["reached_target"])
        if reached == 0:
            to_target = "not reached"
        elif reached < n:
            to_target = f"{row['rounds_to_target.mean']:.1f} ({reached}/{n} runs reached it)"
        else:
            to_target = pm("rounds_to_target", 1)
        rows.append(
            [
                str(variant),
                f"{n} ({row['seeds']})",
                *([pm("target_domain_accuracy", 3)] if target_domain else []),
                pm("final_mean_accuracy", 3),
                pm("worst_domain_accuracy", 3),
                *[pm(f"accuracy.{d}", 3) for d in domains],
                to_target,
                pm("bytes_down_per_client_round", 1, 1e3),
                pm("bytes_up_per_client_round", 1, 1e3),
                pm("seconds_per_round", 2),
            ]
        )
    return header, rows
