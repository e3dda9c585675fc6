"""Reports from run directories: tables (pandas), plots (matplotlib), Markdown and HTML.

``build_report(run_dirs, out_dir)`` reads each run's ``config.json``,
``metrics.jsonl`` and ``summary.json`` (see ``fedmatch.results``) and writes into
``out_dir``:

- ``report.md`` and ``report.html`` (self-contained: the plots are embedded as
  base64 PNGs) with, per group of comparable runs, a summary table per strategy
  (mean ± sample std over seeds), four plots, and every run's exact config and the
  command that reproduces it;
- the plots as PNG files;
- ``summary.csv``: one row per run, for users' own analysis.

Accuracy is what ``summary.json`` calls ``mean_accuracy``: per domain, the mean over
that domain's clients of each client's model on its own test split (the "client
models" column of ``fedmatch show``, the one that is meaningful for FedBN); the server's
global-model rows are used only for runs without client evaluation.

Runs are only compared when they used the same data, model and number of rounds
(``GROUP_KEYS``): otherwise they are reported as separate groups, or refused with
``strict=True``.  Inside a group, runs with the same config apart from the seed form
one row ("variant") of the tables.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedmatch import __version__
from fedmatch.config import RunConfig
from fedmatch.localrun import toml_value
from fedmatch.results import SERVER, read_metrics, with_new_keys

log = logging.getLogger("fedmatch.report")

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
# Left out of reproduce commands: the reader picks where the new run goes.
NOT_IN_COMMAND = frozenset({"runs-dir", "run-name", "resume"})
# Used when no target accuracy is given: this share of the group's best final accuracy.
RELATIVE_TARGET = 0.9
BENCH_CELL_FILE = "bench-cell.json"


class ReportError(ValueError):
    """The runs cannot be reported as asked; the message says why and what to do."""


# ----------------------------------------------------------------------------- one run


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
        raise ReportError(f"{run_dir} did not finish (no summary.json)")
    info = json.loads(config_path.read_text())
    config = with_new_keys(info.pop("run_config"))
    rows = read_metrics(run_dir)
    metrics = pd.DataFrame(
        [(r.round, str(r.client), r.domain, r.metric, r.value) for r in rows],
        columns=["round", "client", "domain", "metric", "value"],
    )
    metrics["is_server"] = metrics["client"] == SERVER
    cell_path = run_dir / BENCH_CELL_FILE
    cell = json.loads(cell_path.read_text()) if cell_path.exists() else None
    return RunData(
        run_dir=run_dir,
        config=config,
        info=info,
        summary=json.loads(summary_path.read_text()),
        metrics=metrics,
        cell=cell,
        label=run_dir.name,
    )


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
            + _differences(runs)
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


def _differences(runs: Sequence[RunData]) -> str:
    lines = []
    for key in GROUP_KEYS:
        values: dict[str, list[str]] = {}
        for run in runs:
            values.setdefault(json.dumps(run.config.get(key)), []).append(run.label)
        if len(values) > 1:
            shown = "; ".join(f"{v} ({', '.join(names)})" for v, names in values.items())
            lines.append(f"  - {key}: {shown}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- tables


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


# ----------------------------------------------------------------------------- plots


def _colors(variants: Iterable[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {v: cmap(i % 10) for i, v in enumerate(variants)}


def _band_plot(
    path: Path,
    series: Mapping[str, list[pd.Series]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    band_note: str,
) -> None:
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    ax = fig.subplots()
    colors = _colors(series)
    for variant, runs in series.items():
        frame = pd.concat(runs, axis=1)
        mean = frame.mean(axis=1)
        ax.plot(mean.index, mean.values, marker="o", ms=3, color=colors[variant], label=variant)
        if frame.shape[1] > 1:
            ax.fill_between(
                frame.index,
                frame.min(axis=1).values,
                frame.max(axis=1).values,
                color=colors[variant],
                alpha=0.2,
                linewidth=0,
            )
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=band_note, title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def plot_accuracy(path: Path, group: Group) -> None:
    series = {v: [r.mean_accuracy for r in runs] for v, runs in group.variants().items()}
    _band_plot(
        path,
        series,
        title="Mean test accuracy over domains",
        xlabel="round",
        ylabel="accuracy",
        band_note="line: mean over seeds; band: min–max",
    )


def plot_round_seconds(path: Path, group: Group) -> None:
    series = {v: [r.round_seconds for r in runs] for v, runs in group.variants().items()}
    _band_plot(
        path,
        series,
        title="Wall time per round",
        xlabel="round",
        ylabel="seconds",
        band_note="line: mean over seeds; band: min–max",
    )


def plot_accuracy_vs_bytes(path: Path, group: Group) -> None:
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    ax = fig.subplots()
    variants = group.variants()
    colors = _colors(variants)
    for variant, runs in variants.items():
        acc = pd.concat([r.mean_accuracy for r in runs], axis=1).mean(axis=1)
        sent = pd.concat([r.cumulative_bytes for r in runs], axis=1).mean(axis=1) / 1e6
        both = pd.concat({"acc": acc, "mb": sent}, axis=1).dropna()
        ax.plot(both["mb"], both["acc"], marker="o", ms=3, color=colors[variant], label=variant)
    ax.set(
        title="Accuracy vs communication",
        xlabel="cumulative MB sent (down + up, all clients)",
        ylabel="mean test accuracy",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="mean over seeds", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def plot_heatmap(path: Path, table: pd.DataFrame, domains: Sequence[str]) -> None:
    values = np.array(
        [[row[f"accuracy.{d}.mean"] for d in domains] for _, row in table.iterrows()], dtype=float
    )
    fig = Figure(figsize=(1.3 * len(domains) + 2.6, 0.5 * len(table) + 1.8), dpi=100)
    ax = fig.subplots()
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(domains)), labels=list(domains), rotation=30, ha="right")
    ax.set_yticks(range(len(table)), labels=[str(v) for v in table.index])
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if not math.isnan(values[i, j]):
                shade = "black" if values[i, j] > 0.6 else "white"
                ax.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", color=shade)
    ax.set_title("Final test accuracy (mean over seeds)")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path)


# ----------------------------------------------------------------------------- documents


class _Doc:
    """The same content as Markdown and as HTML."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, level: int, text: str) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{_inline(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{_inline(text)}</p>")

    def bullets(self, items: Sequence[str]) -> None:
        self.md.append("".join(f"- {item}\n" for item in items))
        self.html.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        def md_cell(text: str) -> str:
            return str(text).replace("|", "\\|")

        lines = ["| " + " | ".join(md_cell(h) for h in header) + " |"]
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
        self.md.append("\n".join(lines) + "\n")
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
            for row in rows
        )
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def image(self, path: Path, caption: str) -> None:
        self.md.append(f"![{caption}]({path.name})\n")
        data = base64.b64encode(path.read_bytes()).decode()
        self.html.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def code(self, text: str, language: str = "") -> None:
        self.md.append(f"```{language}\n{text}\n```\n")
        self.html.append(f"<pre><code>{html.escape(text)}</code></pre>")

    def details(self, summary: str, blocks: Sequence[tuple[str, str]]) -> None:
        """A collapsible section (HTML) of (language, text) code blocks."""
        self.md.append(f"<details><summary>{html.escape(summary)}</summary>\n")
        self.html.append(f"<details><summary>{_inline(summary)}</summary>")
        for language, text in blocks:
            self.code(text, language)
        self.md.append("</details>\n")
        self.html.append("</details>")

    def write(self, title: str) -> tuple[Path, Path]:
        md_path, html_path = self.out_dir / "report.md", self.out_dir / "report.html"
        md_path.write_text("\n".join(self.md))
        html_path.write_text(
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(self.html)
            + "\n</body></html>\n"
        )
        return md_path, html_path


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
    "color:#222}table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}"
    "pre{background:#f6f8fa;padding:0.8em;overflow-x:auto;font-size:0.85em}"
    "figure{display:inline-block;margin:0.5em}figcaption{font-size:0.85em;color:#555}"
    "code{background:#f6f8fa;padding:0 3px}"
)


def _inline(text: str) -> str:
    """Markdown `code` spans to HTML, everything else escaped."""
    parts = re.split(r"`([^`]*)`", text)
    return "".join(
        f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts)
    )


def reproduce_command(run: RunData) -> str:
    """The `flwr run` command (from the repository root) that reruns ``run``."""
    defaults = RunConfig().to_flower()
    always = ("strategy", "seed", "num-server-rounds")
    keys = [
        k
        for k, v in run.config.items()
        if k not in NOT_IN_COMMAND and (k in always or defaults.get(k, object()) != v)
    ]
    run_config = " ".join(f"{k}={toml_value(run.config[k])}" for k in keys)
    if run.cell and run.cell.get("federation-config"):
        federation = str(run.cell["federation-config"])
    else:
        federation = f"num-supernodes={run.info.get('num_nodes', '?')}"
    return (
        "export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1\n"
        f'flwr run . --stream --run-config "{run_config}" \\\n'
        f'  --federation-config "{federation}"'
    )


# ----------------------------------------------------------------------------- build


@dataclass
class Report:
    out_dir: Path
    markdown: Path
    html: Path
    csv: Path
    images: list[Path]
    groups: list[Group]
    runs: pd.DataFrame
    tables: list[pd.DataFrame]
    skipped: list[str]


def build_report(
    run_dirs: Sequence[Path],
    out_dir: Path,
    *,
    target_accuracy: float | None = None,
    strict: bool = False,
    title: str | None = None,
    description: str = "",
    plots: bool = True,
) -> Report:
    """Write ``report.md``, ``report.html``, ``summary.csv`` and the plots into ``out_dir``.

    ``run_dirs``: run directories (unfinished ones are listed and left out).
    ``target_accuracy``: for the rounds-to-target column; default: ``RELATIVE_TARGET``
    times the best final mean accuracy of each group.  ``strict``: refuse runs that
    are not comparable instead of reporting them as separate groups.  ``plots=False``:
    tables and configs only.
    """
    runs, skipped = [], []
    for run_dir in run_dirs:
        try:
            runs.append(load_run(run_dir))
        except ReportError as err:
            skipped.append(str(err))
    if not runs:
        raise ReportError(
            "no finished run to report"
            + (": " + "; ".join(skipped) if skipped else " (no run directories given)")
        )
    _unique_labels(runs)
    groups = group_runs(runs, strict=strict)
    for group in groups:
        _set_target(group, target_accuracy)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table_runs = run_table(groups)
    csv_path = out_dir / "summary.csv"
    table_runs.to_csv(csv_path, index=False)

    title = title or "fedmatch report"
    doc = _Doc(out_dir)
    doc.heading(1, title)
    if description:
        doc.para(description)
    doc.para(
        f"Generated by fedmatch {__version__} from {len(runs)} finished run(s). "
        "`summary.csv` beside this file has one row per run."
    )
    if skipped:
        doc.para("Left out (not finished):")
        doc.bullets(skipped)
    if len(groups) > 1:
        doc.para(
            f"These runs used different data, models or numbers of rounds, so they are "
            f"reported as {len(groups)} separate groups and never averaged or plotted "
            "together:"
        )
        doc.code(_differences(runs))

    images, tables = [], []
    for index, group in enumerate(groups, start=1):
        prefix = f"group{index}-" if len(groups) > 1 else ""
        heading = f"Group {index}: {group.describe()}" if len(groups) > 1 else "Results"
        doc.heading(2, heading)
        if len(groups) == 1:
            doc.para(f"Setting: {group.describe()}.")
        rows = table_runs[table_runs["group"] == index]
        domains = _domains(group)
        table = variant_table(rows, domains)
        tables.append(table)
        sources = sorted({r.accuracy_source for r in group.runs})
        doc.para(
            f"Accuracy: {' / '.join(sources)} on each domain's test data in the final round "
            '(mean over a domain\'s clients; "final avg" is the mean over domains, as '
            "`summary.json`'s `mean_accuracy`). Values are mean ± sample standard deviation "
            f"over seeds. Rounds to target: first round whose mean accuracy reaches "
            f"{group.target:.3f} ({group.target_note}). Bytes: serialised model arrays per "
            "training message (down) and reply (up). Seconds: wall time per round on the "
            "machine that ran it."
        )
        target_domain = str(group.key.get("target-domain") or "")
        if target_domain:
            doc.para(
                f"Leave-one-domain-out: {target_domain} is held out of the clients. Its "
                "column is the global model's accuracy on its test split in the final round "
                "(FedKA: the model fine-tuned on voted pseudo-labels); the other domain "
                "columns are the source clients'."
            )
        header, body = format_variant_table(table, domains, group.target, target_domain)
        doc.table(header, body)

        figures = [
            ("accuracy-vs-round.png", "Accuracy vs round", plot_accuracy, (group,)),
            ("accuracy-heatmap.png", "Final accuracy per strategy and domain", plot_heatmap,
             (table, domains)),
            ("accuracy-vs-bytes.png", "Accuracy vs cumulative communicated bytes",
             plot_accuracy_vs_bytes, (group,)),
            ("seconds-per-round.png", "Wall time per round", plot_round_seconds, (group,)),
        ]  # fmt: skip
        for name, caption, plot, args in figures if plots else []:
            path = out_dir / f"{prefix}{name}"
            plot(path, *args)
            images.append(path)
            doc.image(path, caption)

        doc.heading(3, "Runs")
        doc.table(
            ["run", "strategy", "seed", "final avg acc", "worst domain", "rounds", "s / round"],
            [
                [
                    r["run"],
                    r["variant"],
                    str(r["seed"]),
                    f"{r['final_mean_accuracy']:.4f}",
                    f"{r['worst_domain']} {r['worst_domain_accuracy']:.4f}",
                    str(r["final_round"]),
                    f"{r['seconds_per_round']:.2f}",
                ]
                for _, r in rows.sort_values(["variant", "seed"]).iterrows()
            ],
        )
        doc.para(
            "Each run's exact config (`config.json`) and the command that reproduces it "
            "(from the repository root; runs-dir and run-name left to you):"
        )
        for run in sorted(group.runs, key=lambda r: (group.variant(r), r.seed, r.label)):
            doc.details(
                f"{run.label}: {group.variant(run)}, seed {run.seed}",
                [
                    ("bash", reproduce_command(run)),
                    ("json", json.dumps(run.config, indent=2, sort_keys=True)),
                ],
            )

    md_path, html_path = doc.write(title)
    log.info("report written to %s", out_dir)
    return Report(
        out_dir=out_dir,
        markdown=md_path,
        html=html_path,
        csv=csv_path,
        images=images,
        groups=groups,
        runs=table_runs,
        tables=tables,
        skipped=skipped,
    )


def _unique_labels(runs: list[RunData]) -> None:
    names = [r.run_dir.name for r in runs]
    for run in runs:
        if names.count(run.run_dir.name) > 1:
            run.label = f"{run.run_dir.parent.name}/{run.run_dir.name}"


def _domains(group: Group) -> list[str]:
    seen: dict[str, None] = {}
    for run in group.runs:
        for domain in run.accuracy.columns:
            seen.setdefault(str(domain), None)
    return list(seen)


def _set_target(group: Group, target: float | None) -> None:
    if target is not None:
        group.target, group.target_note = float(target), "given"
        return
    finals = [float(r.final_accuracy.mean()) for r in group.runs if not r.final_accuracy.empty]
    if not finals:  # no run evaluated anything: the column stays empty
        group.target, group.target_note = math.nan, "no accuracy recorded"
        return
    best = max(finals)
    # Rounded so a reader can check the column against the accuracy curve.
    group.target = round(RELATIVE_TARGET * best, 3)
    group.target_note = f"{RELATIVE_TARGET:g} × the best final avg accuracy {best:.3f}"
