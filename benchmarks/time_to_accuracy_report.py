"""Time to target and the table of ``distill_time_to_accuracy.py``'s rows.

Run as a script, it merges the ``--out`` files of several runs (say the official DM on one core
and fedmatch's variants on the other, or one seed per run) into one table::

    python benchmarks/time_to_accuracy_report.py seed0-official.json seed0-ours.json seed2.json

The files must agree on every argument that changes results except the methods, variants,
checkpoints and the step budget; a (method, seed) may come from several files when they hold
different checkpoints (say a shorter run that saved an earlier checkpoint the longer run did not:
each checkpoint keeps the seconds of the run that reached it), and the target is the official
DM's accuracy at the longest budget among the files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from time_to_accuracy_official import OFFICIAL


def mean(values: list[float]) -> float:
    return float(np.mean(values))


def time_to_target(curve: list[tuple[int, float, float]], target: float) -> dict | None:
    """The first checkpoint (iteration, cumulative distillation seconds, accuracy) whose
    accuracy reaches ``target``; None when none does.  Checkpoints only: no interpolation."""
    for iteration, seconds, acc in sorted(curve):
        if acc >= target:
            return {"iteration": iteration, "seconds": seconds}
    return None


def summarize(
    rows: list[dict[str, Any]], iterations: int, per_seed: bool = False
) -> dict[str, Any]:
    """Per protocol: the target (official DM's mean accuracy at ``iterations`` over seeds) and
    each method's time to it per seed, with the ratio to the official's time on that seed.

    ``per_seed``: each seed's target is instead the official DM's own accuracy at
    ``iterations`` on that seed (the same draw), so the official always reaches it (at its
    first checkpoint that scores as well as its last); ``target`` is then their mean."""
    out: dict[str, Any] = {}
    for protocol in ("project", "official"):
        key = f"acc_{protocol}"
        finals = {
            r["seed"]: mean(r[key])
            for r in rows
            if r["method"] == OFFICIAL and r.get(key) and r["iteration"] == iterations
        }
        if not finals:
            continue
        target = mean(list(finals.values()))
        curves: dict[str, dict[int, list]] = {}
        for r in (r for r in rows if r.get(key)):
            point = (r["iteration"], r["distill_seconds"], mean(r[key]))
            curves.setdefault(r["method"], {}).setdefault(r["seed"], []).append(point)
        reached: dict[str, dict[int, dict | None]] = {}
        for m, per in curves.items():
            reached[m] = {}
            for s, c in per.items():
                if per_seed and s not in finals:
                    continue  # no official final on this seed: no target
                reached[m][s] = time_to_target(c, finals[s] if per_seed else target)
        methods = {}
        for m, per_seed_hits in reached.items():
            for s, hit in per_seed_hits.items():
                base = reached.get(OFFICIAL, {}).get(s)
                if hit is not None and base is not None and base["seconds"] > 0:
                    hit["ratio"] = hit["seconds"] / base["seconds"]
            hits = [h for h in per_seed_hits.values() if h is not None]
            ratios = [h["ratio"] for h in hits if "ratio" in h]
            methods[m] = {
                "per_seed": {str(s): h for s, h in sorted(per_seed_hits.items())},
                "reached": len(hits),
                "seeds": len(per_seed_hits),
                "seconds": [
                    mean([h["seconds"] for h in hits]),
                    float(np.std([h["seconds"] for h in hits])),
                ]
                if hits
                else None,
                "ratio": [mean(ratios), float(np.std(ratios))] if ratios else None,
            }
        out[protocol] = {
            "target": target,
            "target_seeds": len(finals),
            "per_seed_target": per_seed,
            "methods": methods,
        }
    return out


def pm(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    return f"{scale * mean(values):.{digits}f} ± {scale * float(np.std(values)):.{digits}f}"


def peak(group: list[dict[str, Any]]) -> str:
    """The largest peak memory of the runs in ``group`` ('–' for the shared start's rows)."""
    values = [r["peak_memory_mb"] for r in group if r.get("peak_memory_mb")]
    return f"{max(values):.0f}" if values else "–"


def table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """Markdown: accuracy (mean ± std over seeds) and distillation seconds per checkpoint,
    then the time to the official DM's final accuracy."""
    lines = [
        "| method | iteration | seeds | project protocol % | official evaluate_synset % | "
        "distill s | peak MB | eval s (project / official) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["iteration"]), []).append(r)
    # The official DM first: the curve the others are measured against.
    for (m, it), group in sorted(groups.items(), key=lambda kv: (kv[0][0] != OFFICIAL, kv[0])):
        accs, secs = [], []
        for protocol in ("project", "official"):
            scored = [r for r in group if r.get(f"acc_{protocol}")]
            accs.append(pm([mean(r[f"acc_{protocol}"]) for r in scored], 100) if scored else "–")
            secs.append(
                f"{mean([r[f'eval_seconds_{protocol}'] for r in scored]):.0f}" if scored else "–"
            )
        lines.append(
            f"| {m} | {it} | {len(group)} | {accs[0]} | {accs[1]} | "
            f"{pm([r['distill_seconds'] for r in group], digits=0)} | "
            f"{peak(group)} | {' / '.join(secs)} |"
        )
    for protocol, info in summary.items():
        which = "each seed's own" if info.get("per_seed_target") else "the mean over seeds"
        lines.append(
            f"\nTime to the official DM's final accuracy, {protocol} protocol: "
            f"{100 * info['target']:.2f} % (mean of {info['target_seeds']} seeds; target: {which})"
        )
        for m, res in info["methods"].items():
            secs = f"{res['seconds'][0]:.0f} ± {res['seconds'][1]:.0f} s" if res["seconds"] else "–"
            ratio = f"{res['ratio'][0]:.2f} ± {res['ratio'][1]:.2f}" if res["ratio"] else "–"
            lines.append(
                f"- {m}: reached on {res['reached']}/{res['seeds']} seeds, {secs}, "
                f"time / official's: {ratio}"
            )
    return "\n".join(lines)


# Arguments the merged files must share: those of RESULT_ARGS that do not name what ran.
SHARED_ARGS = (
    "ipc",
    "per_class",
    "test_size",
    "split_seed",
    "batch_real",
    "width",
    "eval_epochs",
    "official_epochs",
    "eval_models",
    "official_dsa_strategy",
)


def merge(paths: list[Path]) -> tuple[list[dict[str, Any]], int]:
    """The rows of ``paths`` (``--out`` files) and the longest official step budget among them;
    SystemExit naming the file for one that is not this script's output, differs in a shared
    argument, or repeats a checkpoint (method, seed, iteration) another file holds.  The shared
    start (iteration 0) is the same set in every run of a seed: its first row is kept."""
    rows: list[dict[str, Any]] = []
    first: dict[str, Any] | None = None
    owner: dict[tuple[str, int, int], Path] = {}
    budget = 0
    for path in paths:
        try:
            info = json.loads(path.read_text())
            args, file_rows = info["args"], info["rows"]
            keys = [(str(r["method"]), int(r["seed"]), int(r["iteration"])) for r in file_rows]
            budget = max(budget, int(args["iterations"]))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SystemExit(
                f"{path}: not distill_time_to_accuracy.py output ({error!r})"
            ) from None
        if first is None:
            first = {"path": path, **{k: args.get(k) for k in SHARED_ARGS}}
        changed = [k for k in SHARED_ARGS if args.get(k) != first[k]]
        if changed:
            diff = ", ".join(f"{k}={args.get(k)!r} (vs {first[k]!r})" for k in changed)
            raise SystemExit(f"{path}: written with other {diff} than {first['path']}")
        for key, row in zip(keys, file_rows, strict=True):
            if key in owner:
                if key[2] == 0:
                    continue
                raise SystemExit(
                    f"{path}: method {key[0]!r} seed {key[1]} iteration {key[2]} is also in "
                    f"{owner[key]}; pass one of the two"
                )
            owner[key] = path
            rows.append(row)
    if first is None:
        raise SystemExit("no files given")
    return rows, budget


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, help="--out files of distill_time_to_accuracy.py")
    p.add_argument(
        "--per-seed-target",
        action="store_true",
        help="each seed's target is the official DM's final accuracy on that seed (default: "
        "the mean over seeds, which the official itself may miss on a seed)",
    )
    args = p.parse_args(argv)
    rows, iterations = merge(args.files)
    text = table(rows, summarize(rows, iterations, per_seed=args.per_seed_target))
    print(text)
    return text


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
