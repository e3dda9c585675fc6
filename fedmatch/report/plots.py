"""The report's figures (matplotlib, no pyplot state): one PNG file per call."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedmatch.report.document import write_file
from fedmatch.report.runs import Group


def _save(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_file(path, buffer.getvalue())


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
    _save(fig, path)


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
    _save(fig, path)


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
    _save(fig, path)
