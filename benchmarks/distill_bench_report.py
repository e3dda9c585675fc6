"""The variant labels, ``--summarize`` rows and mean ± std table of ``distill_bench.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def variant(method: str, args: dict[str, Any]) -> str:
    """The method and the settings that change what it computes, e.g. ``ncfm lr0.03 fn5 ρ2``
    (``args``: the script's arguments; files from before a flag existed lack it: default)."""
    if method not in ("dm", "ncfm"):
        return method
    parts = [method]
    if method == "dm":
        if args.get("dm_lr", 1.0) != 1.0:
            parts.append(f"lr{args['dm_lr']:g}")
        factor = args.get("dm_factor", 1)
    else:
        parts.append(f"lr{args.get('ncfm_lr', 0.01):g}")
        if args.get("ncfm_feature_nets", 0):
            parts.append(f"fn{args['ncfm_feature_nets']}")
        if args.get("ncfm_frequency_scale", 1.0) != 1.0:
            parts.append(f"scale{args['ncfm_frequency_scale']:g}")
        if args.get("ncfm_alpha", 0.5) != 0.5:
            parts.append(f"α{args['ncfm_alpha']:g}")
        if args.get("ncfm_frequencies", 1024) != 1024:
            parts.append(f"{args['ncfm_frequencies']}t")
        if args.get("ncfm_calibration", 0.0):
            parts.append(f"calib{args['ncfm_calibration']:g}")
        if args.get("ncfm_step_per_class", False):
            parts.append("per-class")
        factor = args.get("ncfm_factor", 1)
    if factor > 1:
        parts.append(f"ρ{factor}")
    parts.append(f"{args['steps']} steps")
    return " ".join(parts)


def summarize(paths: list[str]) -> list[dict[str, Any]]:
    """The rows of benchmark JSON files (``--out``), each labelled with its variant."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        info = json.loads(Path(path).read_text())
        if "rows" not in info:
            raise SystemExit(f"--summarize: {path} holds no grid rows (a --client-default file?)")
        for row in info["rows"]:
            rows.append({**row, "variant": variant(row["method"], info["args"]), "file": path})
    return rows


def _mean(group: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] for r in group) / len(group)


def table(rows: list[dict[str, Any]]) -> str:
    """Mean ± std over seeds per (domain, ipc, variant, eval epochs), as a Markdown table."""
    groups: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        key = (
            row["domain"],
            str(row["ipc"]),
            row.get("variant", row["method"]),
            row["eval_epochs"],
        )
        groups.setdefault(key, []).append(row)
    lines = [
        "| domain | IPC | method | test acc % (mean ± std) | seeds | eval epochs | s/step | "
        "distill s (wall / CPU) | peak memory MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (domain, ipc, method, epochs), group in sorted(groups.items()):
        accs = torch.tensor([a for r in group for a in r["accuracies"]], dtype=torch.float64)
        std = float(accs.std(unbiased=False)) if len(accs) > 1 else 0.0
        cells = [
            domain,
            ipc,
            method,
            f"{100 * float(accs.mean()):.2f} ± {100 * std:.2f}",
            ", ".join(str(r["seed"]) for r in group),
            str(epochs),
        ]
        if "seconds_per_step" in group[0]:
            cells += [
                f"{_mean(group, 'seconds_per_step'):.3f}",
                f"{_mean(group, 'distill_seconds'):.0f} / "
                f"{_mean(group, 'distill_cpu_seconds'):.0f}",
                f"{max(r['peak_memory_mb'] for r in group):.0f}",
            ]
        else:
            cells += ["–", "–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
