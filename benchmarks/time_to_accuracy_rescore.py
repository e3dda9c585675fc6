"""Score the sets a time-to-accuracy run kept again, with several evaluation models each.

One ``evaluate_synset`` model per checkpoint leaves a ±0.5–0.8 point spread (the official
evaluation seeds itself from the clock), which decides first-crossing times as much as the
distillation does.  A run of ``distill_time_to_accuracy.py --save-sets DIR`` (``--protocols
none`` to skip its own scoring) keeps every checkpoint's set; this script scores each of them
with ``--models`` fresh models and writes the run's rows with those accuracies, in the same
format, so ``time_to_accuracy_report.py`` merges and tables them (files rescored with the same
``--models`` agree on ``eval_models``).  The distillation seconds are the run's own.

Usage::

    python benchmarks/distill_time_to_accuracy.py --official /tmp/official_dm --seeds 0 \\
        --methods official-dm --protocols none --save-sets /tmp/sets --out seed0-official.json
    python benchmarks/time_to_accuracy_rescore.py seed0-official.json --sets /tmp/sets \\
        --official /tmp/official_dm --models 3 --out seed0-official-3.json

``--out`` is written after every scored set and resumed from: sets already scored are kept.
``--at 300,100`` scores only those checkpoints, in that order (an evaluation model costs
minutes on one core: score the checkpoints that decide a crossing first, the rest later into
the same ``--out``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill_time_to_accuracy import build_split, score
from time_to_accuracy_official import load_official
from time_to_accuracy_sets import load_set, set_path

from fedmatch.atomic import atomic_write_bytes
from fedmatch.seeding import derive_seed

log = logging.getLogger("time_to_accuracy_rescore")

# What the split and the scoring need from the run's recorded arguments.
NEEDED = ("ipc", "per_class", "test_size", "split_seed", "width", "eval_epochs",
          "official_epochs", "official_dsa_strategy")  # fmt: skip


def read_run(path: Path) -> dict[str, Any]:
    """The run's results file, its structure checked (it may come from anywhere)."""
    try:
        info = json.loads(path.read_text())
        args, rows = info["args"], info["rows"]
        missing = [k for k in NEEDED if k not in args]
        if missing:
            raise KeyError(f"args lack {missing}")
        for r in rows:
            if not isinstance(r["seed"], int) or not isinstance(r["iteration"], int):
                raise TypeError(f"row {r!r}: seed and iteration must be integers")
            seconds = r["distill_seconds"]
            if not isinstance(r["method"], str) or not isinstance(seconds, (int, float)):
                raise TypeError(f"row {r!r}: method must be a string, distill_seconds a number")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(
            f"{path}: not a distill_time_to_accuracy.py results file ({error})"
        ) from None
    return info


def key(row: dict[str, Any]) -> tuple[str, int, int]:
    return (row["method"], row["seed"], row["iteration"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("results", help="the run's --out file")
    p.add_argument("--sets", required=True, help="the run's --save-sets folder")
    p.add_argument("--official", default="", help="checkout of VICO-UoE/DatasetCondensation")
    p.add_argument("--models", type=int, default=3, help="fresh evaluation models per set")
    p.add_argument("--protocols", default="official", help="project and/or official")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="rescored results (resumed from)")
    p.add_argument(
        "--at",
        default="",
        help="comma list of iterations to score, in this order "
        "(default: all); rows scored before are kept",
    )
    a = p.parse_args(argv)
    protocols = [x.strip() for x in a.protocols.split(",") if x.strip()]
    if not protocols or set(protocols) - {"project", "official"}:
        p.error(f"--protocols: a comma list of project, official; got {protocols}")
    if "official" in protocols and not a.official:
        p.error("--protocols official needs --official PATH")
    if a.models < 1:
        p.error(f"--models {a.models}: allowed >= 1")
    try:
        at = [int(x) for x in a.at.split(",") if x.strip()]
    except ValueError:
        p.error(f"--at {a.at!r}: a comma list of iterations (integers)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)  # fmt: skip
    torch.set_num_threads(a.threads)
    run = read_run(Path(a.results))
    run_args = SimpleNamespace(**{**run["args"], "protocols": protocols})
    utils = load_official(a.official) if "official" in protocols else None
    _, _, *test = build_split(run_args)
    out = Path(a.out)
    done: dict[tuple[str, int, int], dict[str, Any]] = {}
    if out.exists():
        old = read_run(out)
        if old["args"].get("eval_models") != a.models or old["args"]["protocols"] != protocols:
            raise SystemExit(f"--out {out} was scored with other --models/--protocols: move it")
        done = {key(r): r for r in old["rows"]}
    info = {
        **{k: v for k, v in run.items() if k not in ("rows", "summary")},
        "args": {**run["args"], "eval_models": a.models, "protocols": protocols},
        "rescored": {"from": a.results, "sets": a.sets, "command": " ".join(sys.argv)},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    iterations = {r["iteration"] for r in run["rows"]}
    unknown = sorted(set(at) - iterations)
    if unknown:
        raise SystemExit(f"--at {unknown}: not checkpoints of {a.results} ({sorted(iterations)})")
    todo = [r for r in run["rows"] if key(r) not in done and (not at or r["iteration"] in at)]
    todo.sort(key=lambda r: at.index(r["iteration"]) if at else 0)  # stable: run order otherwise
    order = {key(r): i for i, r in enumerate(run["rows"])}
    stale = ("acc_project", "eval_seconds_project", "acc_official", "eval_seconds_official")
    start_scores = {  # the shared start, scored once per seed
        r["seed"]: {k: r[k] for k in stale if k in r} for r in done.values() if r["iteration"] == 0
    }
    rows = list(done.values())
    for row in todo:
        seed, iteration = row["seed"], row["iteration"]
        if iteration == 0 and seed in start_scores:
            result = start_scores[seed]
        else:
            path = set_path(a.sets, seed, row["method"], iteration)
            images, labels = load_set(path, run_args.ipc)
            log.info("scoring %s (%d models)", path.name, a.models)
            began = time.perf_counter()
            eval_seeds = [derive_seed(seed, 30, k) for k in range(a.models)]
            result = score(images, labels, tuple(test), run_args, utils, eval_seeds)
            log.info("  -> %s (%.0f s)", result, time.perf_counter() - began)
            if iteration == 0:
                start_scores[seed] = result
        rows.append({**{k: v for k, v in row.items() if k not in stale}, **result})
        save(out, info, rows, order)
    return {**info, "rows": save(out, info, rows, order)}


def save(
    out: Path, info: dict[str, Any], rows: list[dict[str, Any]], order: dict[tuple, int]
) -> list[dict[str, Any]]:
    """``rows`` in the run's order, written atomically (a kill mid-write keeps the last file);
    ``complete`` once every row of the run is scored."""
    rows.sort(key=lambda r: order.get(key(r), len(order)))
    complete = {key(r) for r in rows} >= set(order)
    text = json.dumps({**info, "rows": rows, "complete": complete}, indent=1)
    atomic_write_bytes(out, text.encode())
    return rows


if __name__ == "__main__":
    main()
