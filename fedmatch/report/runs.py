"""Run directories as report data: one run's series, and groups of comparable runs."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from fedmatch.results import METRICS, SERVER, MetricRow, read_metrics
from fedmatch.resume import with_new_keys
from fedmatch.run_status import run_state

# Runs that differ in one of these are never averaged or plotted together.
GROUP_KEYS = (
    "dataset",
    "data-root",
    "domains",
    "target-domain",
    "model",
    "model-width",
    "model-depth",
    "model-norm",
    "num-server-rounds",
)
# Keys that do not make two runs different methods: seeds are averaged over, the
# others only say where files go.
NON_VARIANT_KEYS = frozenset({"seed", "run-name", "runs-dir", "resume", "cache-dir"})
BENCH_CELL_FILE = "bench-cell.json"


class ReportError(ValueError):
    """The runs cannot be reported as asked; the message says why and what to do."""


@dataclass
class RunData:
    """One finished run directory, with the per-round series a report needs."""

    run_dir: Path
    config: dict[str, Any]
    info: dict[str, Any]
    summary: dict[str, Any]
    metrics: pd.DataFrame
    cell: dict[str, Any] | None = None
    label: str = ""

    @property
    def strategy(self) -> str:
        return str(self.config.get("strategy", "?"))

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    def _select(self, metric: str, server: bool | None = None) -> pd.DataFrame:
        df = self.metrics
        mask = df["metric"] == metric
        if server is not None:
            mask &= df["is_server"] == server
        return df[mask]

    @cached_property
    def accuracy_source(self) -> str:
        clients = self._select("test-accuracy", server=False)
        return "client models" if not clients.empty else "global model"

    @cached_property
    def accuracy(self) -> pd.DataFrame:
        """Test accuracy per round (index) and domain (columns), rounds ≥ 1."""
        rows = self._select("test-accuracy", server=self.accuracy_source == "global model")
        rows = rows[rows["round"] > 0]
        if rows.empty:
            return pd.DataFrame()
        table = rows.groupby(["round", "domain"])["value"].mean().unstack("domain").sort_index()
        # Domains in the order the run lists them (partition order), not alphabetical.
        return table[list(dict.fromkeys(rows["domain"]))]

    @property
    def mean_accuracy(self) -> pd.Series:
        return self.accuracy.mean(axis=1)

    @property
    def final_round(self) -> int:
        return int(self.accuracy.index.max()) if not self.accuracy.empty else 0

    @property
    def final_accuracy(self) -> pd.Series:
        """Accuracy per domain in the last evaluated round."""
        if self.accuracy.empty:
            return pd.Series(dtype=float)
        return self.accuracy.loc[self.final_round].dropna()

    @cached_property
    def server_metrics(self) -> dict[str, float]:
        """Each server-side, all-domain metric at the last round that recorded it.

        These are a method's own numbers (``feddyn-h-norm``, ``fednova-tau-eff``, a plugin's
        metrics): ``summary.csv`` gets one ``server.<metric>`` column each.
        """
        rows = self.metrics[(self.metrics["is_server"]) & (self.metrics["domain"] == "all")]
        rows = rows[rows["round"] > 0]
        last = rows.sort_values("round").groupby("metric")["value"].last()
        return {str(metric): float(value) for metric, value in last.items()}

    @cached_property
    def target_domain_accuracy(self) -> float:
        """Final-round accuracy on the held-out ``target-domain`` (NaN if none is set).

        FedKA's fine-tuned global model (``target-accuracy-finetuned``) where the run has
        it, else the server's evaluation of the global model on the target's test split
        (e.g. FedAvg on the sources, the source-only baseline).
        """
        target = str(self.config.get("target-domain") or "")
        if not target:
            return math.nan
        for metric in ("target-accuracy-finetuned", "test-accuracy"):
            rows = self._select(metric, server=True)
            rows = rows[(rows["domain"] == target) & (rows["round"] > 0)]
            if not rows.empty:
                return float(rows.loc[rows["round"].idxmax(), "value"])
        return math.nan

    def rounds_to(self, target: float) -> int | None:
        """First round whose mean accuracy over domains reaches ``target``."""
        reached = self.mean_accuracy[self.mean_accuracy >= target]
        return int(reached.index[0]) if not reached.empty else None

    def bytes_per_client_round(self, metric: str) -> float:
        values = self._select(metric, server=False)["value"]
        return float(values.mean()) if not values.empty else math.nan

    @property
    def cumulative_bytes(self) -> pd.Series:
        """Bytes sent down and up, summed over clients, cumulated up to each round."""
        rows = self.metrics[self.metrics["metric"].isin(["bytes-down", "bytes-up"])]
        per_round = rows.groupby("round")["value"].sum().sort_index()
        return per_round.cumsum()

    @property
    def round_seconds(self) -> pd.Series:
        rows = self._select("round-seconds")
        return rows.set_index("round")["value"].sort_index()


def load_run(run_dir: Path) -> RunData:
    """Read one run directory; it must hold ``config.json`` and ``summary.json``."""
    run_dir = Path(run_dir)
    config_path, summary_path = run_dir / "config.json", run_dir / "summary.json"
    if not config_path.exists():
        raise ReportError(f"{run_dir} is not a run directory (no config.json)")
    if not summary_path.exists():
        state = run_state(run_dir)
        if state.status == "interrupted":
            raise ReportError(
                f"{run_dir} was interrupted after round {state.completed_round or 0} "
                "(resume=true continues it)"
            )
        raise ReportError(f"{run_dir} did not finish (no summary.json)")
    summary = _json_object(summary_path)
    if summary.get("status") == "failed":
        raise ReportError(f"{run_dir} failed: {summary.get('error', 'no error recorded')}")
    info = _json_object(config_path)
    if not isinstance(info.get("run_config"), dict):
        raise ReportError(f"{config_path}: no 'run_config' object (not written by fedmatch?)")
    _check_run_config(config_path, info["run_config"])
    try:
        config = with_new_keys(info.pop("run_config"))
        rows = read_metrics(run_dir)
    except (ValueError, TypeError, OSError, RecursionError) as err:
        # MetricsError names the file and line; OSError: metrics.jsonl is a folder, say.
        raise ReportError(f"{run_dir}: {err}") from None
    _check_rows(run_dir / METRICS, rows)
    metrics = pd.DataFrame(
        [(r.round, str(r.client), r.domain, r.metric, r.value) for r in rows],
        columns=["round", "client", "domain", "metric", "value"],
    )
    metrics["is_server"] = metrics["client"] == SERVER
    cell_path = run_dir / BENCH_CELL_FILE
    cell = _json_object(cell_path) if cell_path.exists() else None
    return RunData(
        run_dir=run_dir,
        config=config,
        info=info,
        summary=summary,
        metrics=metrics,
        cell=cell,
        label=run_dir.name,
    )


def _json_object(path: Path) -> dict[str, Any]:
    """A JSON object file of a run directory, or a ReportError naming the file and why."""
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as err:
        # ValueError: not JSON, not UTF-8, or an integer of more than 4300 digits.
        raise ReportError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(value, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _check_run_config(path: Path, run_config: dict[str, Any]) -> None:
    """The saved run config holds scalars, with the types the report computes with."""
    for key, value in run_config.items():
        if not isinstance(value, str | int | float | bool):
            raise ReportError(
                f"{path}: run_config[{key!r}] = {value!r}: expected a string, number or boolean"
            )
    for key, kind, what in (("strategy", str, "a string"), ("seed", int, "an integer")):
        value = run_config.get(key, kind())
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ReportError(f"{path}: run_config[{key!r}] = {value!r}: expected {what}")


def _check_rows(path: Path, rows: Sequence[MetricRow]) -> None:
    """Every metric row has the types fedmatch writes: the tables and plots compute with them."""
    for number, row in enumerate(rows, start=1):
        problem = ""
        if isinstance(row.round, bool) or not isinstance(row.round, int) or row.round < 0:
            problem = "'round' must be an integer >= 0"
        elif isinstance(row.client, bool) or not (
            isinstance(row.client, int) or row.client == SERVER
        ):
            problem = f"'client' must be a partition id or {SERVER!r}"
        elif not isinstance(row.domain, str) or not isinstance(row.metric, str):
            problem = "'domain' and 'metric' must be strings"
        elif isinstance(row.value, bool) or not isinstance(row.value, int | float):
            problem = "'value' must be a number"
        if problem:
            raise ReportError(f"{path}: row {number} ({row}): {problem}")


def find_run_dirs(path: Path) -> list[Path]:
    """``path`` itself if it is a run directory, else the run directories below it.

    Looks two levels down, so both a runs folder and a ``fedmatch bench`` output folder
    (``<out>/runs/<cell>``) work.
    """
    path = Path(path).expanduser()
    if (path / "config.json").exists():
        return [path]
    found = {
        p.parent for pattern in ("*/config.json", "*/*/config.json") for p in path.glob(pattern)
    }
    return sorted(found)


# ----------------------------------------------------------------------------- groups


@dataclass
class Group:
    """Runs that may be compared: same data, model and number of rounds."""

    key: dict[str, Any]
    runs: list[RunData]
    variant_keys: list[str] = field(default_factory=list)
    target: float = math.nan
    target_note: str = ""

    def variant(self, run: RunData) -> str:
        extras = [k for k in self.variant_keys if k != "strategy"]
        label = run.strategy
        if extras:
            label += " (" + ", ".join(f"{k}={run.config.get(k)}" for k in extras) + ")"
        return label

    def variants(self) -> dict[str, list[RunData]]:
        by_variant: dict[str, list[RunData]] = {}
        for run in sorted(self.runs, key=lambda r: (self.variant(r), r.seed, r.label)):
            by_variant.setdefault(self.variant(run), []).append(run)
        return by_variant

    def describe(self) -> str:
        k = self.key
        parts = [f"dataset {k.get('dataset')}"]
        if k.get("data-root"):
            parts.append(f"data-root {k['data-root']}")
        parts.append(f"domains {k.get('domains')}")
        if k.get("target-domain"):
            parts.append(f"target domain {k['target-domain']}")
        parts.append(
            f"{k.get('model')} (width {k.get('model-width')}, depth {k.get('model-depth')}, "
            f"{k.get('model-norm')})"
        )
        parts.append(f"{k.get('num-server-rounds')} rounds")
        return ", ".join(parts)


def group_runs(runs: Sequence[RunData], *, strict: bool = False) -> list[Group]:
    """Split runs by ``GROUP_KEYS``; with ``strict``, refuse runs that would need splitting."""
    by_key: dict[str, list[RunData]] = {}
    for run in runs:
        key = {k: run.config.get(k) for k in GROUP_KEYS if k in run.config}
        by_key.setdefault(json.dumps(key, sort_keys=True), []).append(run)
    if strict and len(by_key) > 1:
        raise ReportError(
            "these runs are not comparable (different data, model or number of rounds):\n"
            + differences(runs)
            + "\nReport each set separately, or drop --strict to get one section per set."
        )
    groups = []
    for key, members in by_key.items():
        group = Group(json.loads(key), members)
        varying = [
            k
            for k in sorted({k for r in members for k in r.config})
            if k not in NON_VARIANT_KEYS and len({json.dumps(r.config.get(k)) for r in members}) > 1
        ]
        group.variant_keys = ["strategy", *[k for k in varying if k != "strategy"]]
        groups.append(group)
    return groups


def differences(runs: Sequence[RunData]) -> str:
    lines = []
    for key in GROUP_KEYS:
        values: dict[str, list[str]] = {}
        for run in runs:
            values.setdefault(json.dumps(run.config.get(key)), []).append(run.label)
        if len(values) > 1:
            shown = "; ".join(f"{v} ({', '.join(names)})" for v, names in values.items())
            lines.append(f"  - {key}: {shown}")
    return "\n".join(lines)
