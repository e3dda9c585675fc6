"""DM's image step at every IPC (issue 29): which way of making it IPC-independent to take.

DM's loss (Zhao & Bilen, WACV 2023, Eq. 4) matches each class's *mean* synthetic embedding,
so one image's gradient scales as 1/IPC and, at a fixed lr and step count, a large set barely
leaves its start (``fedmatch/distill/dm.py``).  On single-domain proxies of a FedLGD client
(one embedded domain's whole training split, as each client of ``fedlgd-digits`` holds), this
script distils with FedLGD's warm-up settings (``"stats"`` init, SGD lr 1.0 / momentum 0.5,
``--batch-real`` real images per class, a ConvNet of ``--width`` channels, DSA without flip)
and compares the options:

- ``class-mean``: Eq. 4 as published (the old behaviour);
- ``lr-scaled``: Eq. 4 with lr × IPC/10;
- ``per-image``: the class terms weighted by n_c/10 (``distill.image-step='per-image'``): a
  per-image loss Σ_c n_c·‖·‖² at lr 0.1, mathematically ``lr-scaled`` for SGD;
- ``larger``: the larger of the two steps, weights max(1, n_c/10)
  (``distill.image-step='larger'``): ``class-mean`` up to IPC 10, ``per-image`` from IPC 10 on;
- ``per-image-lr1``: the per-image loss Σ_c n_c·‖·‖² at DM's lr 1.0 (10× the IPC-10 step);
- ``proportional``: Eq. 4 with ``--steps`` × IPC/10 steps.

Every option of one (domain, IPC, seed) starts from the same initial set and sees the same
random networks, DSA draws and real batches (one generator seed), so only the step differs.
Each set (and each ``--snapshots`` step of a run, which is the same run stopped early) is
scored by the synthetic-set protocol (``fedmatch.distill.evaluate``: a fresh ConvNet of
``--eval-width`` trained ``--eval-epochs`` epochs, one model per ``--eval-seeds`` seed) on the
domain's test split.  Also recorded: the relative movement ‖S_k − S_0‖ / ‖S_0‖ of the stored
images and the seconds (wall and process CPU) to reach step k.

``--refresh-steps N`` also runs FedLGD's refresh on a proxy: a ConvNet trained by the protocol
on the finished set stands for the global model, N DM steps continue the set in its features
with the same image step and lr (``clients/fedlgd.py``), and the refreshed set is scored (row
option ``<option> +refresh``, movement from the finished set).

``--compile`` distils (and refreshes) with ``distill_dm(compile=True)`` (``distill.compile``):
the same steps up to float rounding, timed with the compilation; its rows are named
``<option> compiled``, so one ``--out`` can hold both.

Progress goes to stderr; each scored set is written to ``--out`` at once, and ``--resume``
skips the sets the file already holds.  Usage::

    python -m benchmarks.dm_ipc_scaling --domains mnist,photo-mnist --ipc 10,50 \\
        --variants class-mean,per-image --snapshots 100 --out dm_ipc.json
    python -m benchmarks.dm_ipc_scaling --summarize dm_ipc.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fedmatch.config import RunConfig
from fedmatch.data.loaders import load_domains, to_tensors
from fedmatch.distill.dm import distill_dm
from fedmatch.distill.dsa import DIGIT_STRATEGY
from fedmatch.distill.evaluate import EvalProtocol, convnet_factory, evaluate_set, train_on_set
from fedmatch.seeding import derive_seed
from fedmatch.train import resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Scripts beside this one, not a package (python -m benchmarks.dm_ipc_scaling included):
from dm_ipc_scaling_args import VARIANTS, Plan, ints, parse_args, plan

log = logging.getLogger("dm_ipc_scaling")

_SEED_TAG = 29  # the distillation's generator: one per (seed, IPC), shared by every option
_REFRESH_TAG = 53  # the refresh's generator, as FedLGD's client separates it


def relative_movement(current: torch.Tensor, start: torch.Tensor) -> float:
    """‖S − S_0‖ / ‖S_0‖ over the whole stored set (an RMS of the per-image movement)."""
    return float((current.double() - start.double()).norm() / start.double().norm())


def row_key(row: dict[str, Any]) -> tuple[str, int, int, str, int]:
    return (row["domain"], row["ipc"], row["seed"], row["variant"], row["steps"])


def run_one(
    args: argparse.Namespace,
    domain: str,
    data: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    ipc: int,
    seed: int,
    run: Plan,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Distil once, snapshot the scored steps, score each snapshot."""
    (x, y), (xt, yt) = data
    snaps: dict[int, torch.Tensor] = {}
    clock: dict[int, tuple[float, float]] = {}

    def on_step(k: int, stored: torch.Tensor) -> None:
        # Wall and CPU time at each scored step; the copy is outside what a run would cost.
        if k == 0 or k in run.scored:
            clock[k] = (time.perf_counter(), time.process_time())
            snaps[k] = stored.cpu().clone()

    log.info(
        "%s ipc %d seed %d: %s (%s, lr %g, %d steps)",
        domain,
        ipc,
        seed,
        run.variant,
        run.image_step,
        run.lr,
        run.steps,
    )
    _, syn_labels, history = distill_dm(
        x,
        y,
        ipc,
        run.steps,
        lr=run.lr,
        batch_real=args.batch_real,
        init=args.init,
        net={"width": args.width, "depth": 3, "norm": "instancenorm"},
        dsa_strategy=DIGIT_STRATEGY,
        generator=torch.Generator().manual_seed(derive_seed(seed, ipc, _SEED_TAG)),
        device=device,
        log_every=args.log_every,
        image_step=run.image_step,
        on_step=on_step,
        compile=args.compile,
    )
    factory = convnet_factory(
        {"width": args.eval_width, "depth": 3, "norm": "instancenorm"},
        in_channels=x.shape[1],
        image_size=x.shape[2],
    )
    protocol = EvalProtocol(epochs=args.eval_epochs, dsa_strategy=DIGIT_STRATEGY)
    rows = []
    if args.refresh_steps > 0:
        final = (snaps[run.steps], syn_labels)
        rows.append(refresh(args, domain, data, ipc, seed, run, final, factory, protocol, device))
    for k in run.scored:
        log.info("%s ipc %d seed %d: scoring %s at step %d", domain, ipc, seed, run.variant, k)
        score = evaluate_set(
            snaps[k],
            syn_labels,
            xt,
            yt,
            protocol=protocol,
            seeds=ints(args.eval_seeds),
            model_factory=factory,
            device=device,
        )
        losses = history.losses[:k]
        window = losses[-10:]
        rows.append(
            {
                "domain": domain,
                "ipc": ipc,
                "seed": seed,
                "variant": run.variant,
                "image_step": run.image_step,
                "lr": run.lr,
                "steps": k,
                "run_steps": run.steps,
                "accuracies": list(score.accuracies),
                "movement": relative_movement(snaps[k], snaps[0]),
                "distill_seconds": clock[k][0] - clock[0][0],
                "distill_cpu_seconds": clock[k][1] - clock[0][1],
                "initial_loss": history.initial_loss,
                "final_loss": sum(window) / len(window),
                "eval_seconds": score.train_seconds,
                "loadavg": os.getloadavg(),
            }
        )
    return rows


def refresh(
    args: argparse.Namespace,
    domain: str,
    data: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    ipc: int,
    seed: int,
    run: Plan,
    final: tuple[torch.Tensor, torch.Tensor],
    factory: Callable[[int], torch.nn.Module],
    protocol: EvalProtocol,
    device: torch.device,
) -> dict[str, Any]:
    """FedLGD's refresh on a proxy global model (a ConvNet trained on the finished set)."""
    (x, y), (xt, yt) = data
    model = factory(derive_seed(seed, 0))
    train_on_set(model, *final, protocol, seed=seed, device=device)
    log.info("%s ipc %d seed %d: refreshing %s", domain, ipc, seed, run.variant)
    refreshed, labels, history = distill_dm(
        x,
        y,
        ipc,
        args.refresh_steps,
        lr=run.lr,
        batch_real=args.batch_real,
        dsa_strategy=DIGIT_STRATEGY,
        generator=torch.Generator().manual_seed(derive_seed(seed, ipc, _REFRESH_TAG)),
        device=device,
        start=final,
        feature_net=model,
        image_step=run.image_step,
        compile=args.compile,
    )
    score = evaluate_set(
        refreshed,
        labels,
        xt,
        yt,
        protocol=protocol,
        seeds=ints(args.eval_seeds),
        model_factory=factory,
        device=device,
    )
    return {
        "domain": domain,
        "ipc": ipc,
        "seed": seed,
        "variant": f"{run.variant} +refresh",
        "image_step": run.image_step,
        "lr": run.lr,
        "steps": run.steps,
        "refresh_steps": args.refresh_steps,
        "run_steps": run.steps,
        "accuracies": list(score.accuracies),
        "movement": relative_movement(refreshed, final[0]),
        "distill_seconds": history.seconds,
        "distill_cpu_seconds": history.cpu_seconds,
        "initial_loss": history.initial_loss,
        "final_loss": history.final_loss,
        "eval_seconds": score.train_seconds,
        "loadavg": os.getloadavg(),
    }


def run_grid(args: argparse.Namespace, info: dict[str, Any]) -> list[dict[str, Any]]:
    device = resolve_device(args.device)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    rows: list[dict[str, Any]] = []
    if args.resume and args.out and Path(args.out).exists():
        saved = json.loads(Path(args.out).read_text())
        rows = saved["rows"]
        info["commands"] = saved.get("commands", []) + info["commands"]
    done = {row_key(r) for r in rows}
    for domain in args.domains.split(","):
        cfg = RunConfig(domains=domain, cache_dir=args.cache_dir)
        dom = load_domains(cfg)[0]
        data = (
            to_tensors(dom.x_train, dom.y_train).tensors,
            to_tensors(dom.x_test, dom.y_test).tensors,
        )
        log.info("%s: %d train / %d test images", domain, len(data[0][1]), len(data[1][1]))
        for seed in ints(args.seeds):
            for ipc in ints(args.ipc):
                for variant in variants:
                    run = plan(variant, ipc, args.steps, ints(args.snapshots))
                    if args.compile:  # its own rows: the clock differs, the steps up to rounding
                        run = replace(run, variant=f"{variant} compiled")
                    keys = {(domain, ipc, seed, run.variant, k) for k in run.scored}
                    if args.refresh_steps > 0:
                        keys.add((domain, ipc, seed, f"{run.variant} +refresh", run.steps))
                    if keys <= done:
                        log.info(
                            "%s ipc %d seed %d %s: in --out, skipped", domain, ipc, seed, variant
                        )
                        continue
                    new = run_one(args, domain, data, ipc, seed, run, device)
                    rows = [r for r in rows if row_key(r) not in keys] + new
                    done |= keys
                    for row in new:
                        print(format_row(row), flush=True)
                    if args.out:
                        Path(args.out).write_text(json.dumps({**info, "rows": rows}, indent=2))
    return rows


def _acc(row: dict[str, Any]) -> float:
    return 100 * sum(row["accuracies"]) / len(row["accuracies"])


def format_row(row: dict[str, Any]) -> str:
    return (
        f"  {row['domain']:<12} ipc {row['ipc']:>3} seed {row['seed']} {row['variant']:<14} "
        f"step {row['steps']:>5}: acc {_acc(row):6.2f}  movement {row['movement']:.3f}  "
        f"{row['distill_seconds']:.0f} s wall / {row['distill_cpu_seconds']:.0f} s CPU"
    )


def table(rows: list[dict[str, Any]]) -> str:
    """One line per (domain, IPC, option, step), mean over seeds, as a Markdown table."""
    groups: dict[tuple[str, int, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["domain"], row["ipc"], row["variant"], row["steps"]), []).append(row)
    order = {v: i for i, v in enumerate(VARIANTS)}
    lines = [
        "| domain | IPC | option | lr | steps | test acc % | movement ‖S−S₀‖/‖S₀‖ | "
        "distill s (wall / CPU) | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def sort_key(k: tuple[str, int, str, int]) -> tuple[str, int, int, int, str]:
        # A refreshed set right after the set it continues.
        return (k[0], k[1], order.get(k[2].split(" ")[0], 99), k[3], k[2])

    for key in sorted(groups, key=sort_key):
        group = groups[key]
        n = len(group)
        acc = sum(_acc(r) for r in group) / n
        cells = [
            key[0],
            str(key[1]),
            key[2],
            f"{group[0]['lr']:g}",
            f"{key[3]}+{group[0]['refresh_steps']}" if "refresh_steps" in group[0] else str(key[3]),
            f"{acc:.1f}",
            f"{sum(r['movement'] for r in group) / n:.2f}",
            f"{sum(r['distill_seconds'] for r in group) / n:.0f} / "
            f"{sum(r['distill_cpu_seconds'] for r in group) / n:.0f}",
            ", ".join(str(r["seed"]) for r in group),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, description=__doc__)
    if args.summarize:
        rows = [r for path in args.summarize for r in json.loads(Path(path).read_text())["rows"]]
        print(table(rows))
        return
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    torch.set_num_threads(args.threads)
    info: dict[str, Any] = {
        # Every invocation that wrote to --out (--resume adds to the file).
        "commands": ["python -m benchmarks.dm_ipc_scaling " + shlex.join(sys.argv[1:])],
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "args": vars(args),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        # A shared machine: the load averages put the timings in context.
        "loadavg_start": os.getloadavg(),
    }
    rows = run_grid(args, info)
    print(table(rows))
    print(f"load average at start {info['loadavg_start']}, at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
