"""Dataset distillation benchmark: DM, NCFM, random real subset and full data, one protocol.

For each domain (default: ``mnist`` and ``street-digits``, the embedded MNIST and SVHN
stand-ins, whole training split), each IPC and each seed:

- ``dm`` / ``ncfm``: distil the training split to IPC images per class (``--steps`` steps,
  ``--batch-real`` real images per class per step, a ConvNet of ``--width`` channels), timing
  every step and measuring peak memory;
- ``random``: IPC random real images per class (the baseline a distilled set must beat);
- ``full``: the whole training split (independent of IPC, run once per seed);

and scores every set with the same protocol (``fedmatch.distill.evaluate``): a fresh ConvNet
(``--eval-width``, depth 3, instance norm), SGD lr 0.01 / momentum 0.9 / weight decay 5e-4,
batch 256, ``--eval-epochs`` epochs with lr × 0.1 at half, DSA (no flip) on every batch, final
test accuracy on the domain's test split.  ``--full-epochs`` may lower the epochs for the full
data only (its epochs are 40x longer); the table says when it does.  Each seed gives its own
distillation, subset and model initialisation; the table reports mean ± std over seeds.
Progress goes to stderr as it happens (the loss every ``--log-every`` steps, each set as it
starts and each half of its schedule as it ends: a 1,000-epoch score of 500 images is ~40 min
on one CPU core); every finished cell is written to ``--out`` at once.

``--client-default`` instead times what the Flower workload does with the run-config
defaults: client 0 of the default 5-client federation (the whole ``mnist`` domain) distils to
IPC 10 through ``distill_from_config``, and the set is scored under the protocol with the run's
model (``model_from_config``), next to a random subset of the same size.

Usage::

    python benchmarks/distill_bench.py --ipc 1,10 --seeds 0 --steps 300 --eval-epochs 300
    python benchmarks/distill_bench.py --client-default
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
from pathlib import Path
from typing import Any

import torch

from fedmatch.config import RunConfig
from fedmatch.data.loaders import load_client_data, load_domains, to_tensors
from fedmatch.distill.common import DM_NET
from fedmatch.distill.dm import distill_dm
from fedmatch.distill.evaluate import (
    EvalProtocol,
    SetScore,
    convnet_factory,
    evaluate_set,
    random_real_subset,
)
from fedmatch.distill.ncfm import distill_ncfm
from fedmatch.factories.distill import distill_from_config, eval_protocol
from fedmatch.factories.models import model_from_config
from fedmatch.params import DistillParams
from fedmatch.seeding import derive_seed
from fedmatch.train import resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Scripts beside this one, not a package:
from distill_bench_args import METHODS, parse_args
from distill_bench_pool import feature_net_pool
from distill_bench_report import summarize, table, variant

log = logging.getLogger("distill_bench")


def ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def domain_tensors(name: str, cache_dir: str):
    domain = load_domains(RunConfig(domains=name, cache_dir=cache_dir))[0]
    train = to_tensors(domain.x_train, domain.y_train).tensors
    test = to_tensors(domain.x_test, domain.y_test).tensors
    return train, test


def run_grid(
    args: argparse.Namespace, on_row: Callable[[list[dict[str, Any]]], None] | None = None
) -> list[dict[str, Any]]:
    """Every requested cell; ``on_row(rows)`` after each one (so a long grid saves as it goes)."""
    device = resolve_device(args.device)
    methods = [m.strip() for m in args.methods.split(",")]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"--methods: unknown {sorted(unknown)}; allowed {METHODS}")
    protocol = EvalProtocol(epochs=args.eval_epochs)
    full_protocol = EvalProtocol(epochs=args.full_epochs or args.eval_epochs)
    factory = convnet_factory({**DM_NET, "width": args.eval_width})
    net = {**DM_NET, "width": args.width}
    rows: list[dict[str, Any]] = []

    def record(**row: Any) -> None:
        row["variant"] = variant(row["method"], vars(args))
        rows.append(row)
        acc = row["accuracies"]
        mean = sum(acc) / len(acc)
        print(
            f"  {row['domain']:<14} ipc {row['ipc']!s:>4} {row['method']:<6} "
            f"seed {row['seed']} acc {100 * mean:6.2f}"
            + (
                f" | {row['seconds_per_step']:.3f} s/step, {row['distill_seconds']:.0f} s, "
                f"peak {row['peak_memory_mb']:.0f} MB ({row['peak_memory_kind']})"
                if "seconds_per_step" in row
                else ""
            ),
            flush=True,
        )
        if on_row is not None:
            on_row(rows)

    def score_set(
        images: torch.Tensor,
        labels: torch.Tensor,
        test: tuple[torch.Tensor, torch.Tensor],
        protocol: EvalProtocol,
        seed: int,
        what: str,
    ) -> SetScore:
        log.info(
            "%s: scoring %d images (%d epochs, fresh ConvNet)", what, len(labels), protocol.epochs
        )
        return evaluate_set(
            images,
            labels,
            *test,
            protocol=protocol,
            seeds=[seed],
            model_factory=factory,
            device=device,
        )

    for domain in args.domains.split(","):
        (x, y), test = domain_tensors(domain, args.cache_dir)
        print(f"{domain}: {len(y)} train / {len(test[1])} test images", flush=True)
        for seed in ints(args.seeds):
            pool, pool_seconds, pool_cached = None, 0.0, False
            if "ncfm" in methods and args.ncfm_feature_nets > 0:
                pool, pool_seconds, pool_cached = feature_net_pool(
                    domain, x, y, seed, args, net, device
                )
            if "full" in methods:
                score = score_set(
                    x, y, test, full_protocol, seed, f"{domain} full data seed {seed}"
                )
                record(
                    domain=domain,
                    ipc="all",
                    method="full",
                    seed=seed,
                    accuracies=list(score.accuracies),
                    eval_epochs=full_protocol.epochs,
                    eval_seconds=score.train_seconds,
                )
            for ipc in ints(args.ipc):
                if "random" in methods:
                    generator = torch.Generator().manual_seed(derive_seed(seed, ipc, 1))
                    sx, sy = random_real_subset(x, y, ipc, generator)
                    score = score_set(
                        sx, sy, test, protocol, seed, f"{domain} ipc {ipc} random seed {seed}"
                    )
                    record(
                        domain=domain,
                        ipc=ipc,
                        method="random",
                        seed=seed,
                        accuracies=list(score.accuracies),
                        eval_epochs=protocol.epochs,
                        eval_seconds=score.train_seconds,
                    )
                for method in ("dm", "ncfm"):
                    if method not in methods:
                        continue
                    generator = torch.Generator().manual_seed(derive_seed(seed, ipc, 2))
                    common = dict(
                        batch_real=args.batch_real,
                        net=net,
                        generator=generator,
                        device=device,
                        log_every=args.log_every,
                    )
                    log.info("%s ipc %d seed %d: distilling with %s", domain, ipc, seed, method)
                    if method == "dm":
                        sx, sy, history = distill_dm(
                            x, y, ipc, args.steps, lr=args.dm_lr, factor=args.dm_factor, **common
                        )
                    else:
                        sx, sy, history = distill_ncfm(
                            x,
                            y,
                            ipc,
                            args.steps,
                            lr=args.ncfm_lr,
                            alpha=args.ncfm_alpha,
                            num_frequencies=args.ncfm_frequencies,
                            sampler_lr=args.ncfm_psi_lr,
                            feature_nets=pool,
                            frequency_scale=args.ncfm_frequency_scale,
                            calibration_weight=args.ncfm_calibration,
                            factor=args.ncfm_factor,
                            step_per_class=args.ncfm_step_per_class,
                            **common,
                        )
                        history.extra["feature-net-seconds"] = pool_seconds
                        history.extra["feature-nets-cached"] = float(pool_cached)
                    score = score_set(
                        sx, sy, test, protocol, seed, f"{domain} ipc {ipc} {method} seed {seed}"
                    )
                    record(
                        domain=domain,
                        ipc=ipc,
                        method=method,
                        seed=seed,
                        accuracies=list(score.accuracies),
                        eval_epochs=protocol.epochs,
                        eval_seconds=score.train_seconds,
                        steps=history.steps,
                        distill_seconds=history.seconds,
                        distill_cpu_seconds=history.cpu_seconds,
                        seconds_per_step=history.seconds_per_step,
                        peak_memory_mb=history.peak_memory_bytes / 2**20,
                        peak_memory_kind=history.peak_memory_kind,
                        initial_loss=history.initial_loss,
                        final_loss=history.final_loss,
                        **history.extra,
                    )
    return rows


def client_default(args: argparse.Namespace) -> dict[str, Any]:
    """One client's IPC-10 distillation with the run-config defaults, timed and scored."""
    cfg = RunConfig(cache_dir=args.cache_dir, device=args.device)
    device = resolve_device(cfg.device)
    data = load_client_data(cfg, 0, 5)
    x, y = data.train.tensors
    xt, yt = data.test.tensors
    dp = cfg.params(DistillParams)
    print(
        f"client 0 of 5 ({data.domain}): {len(y)} images; {dp.method}, ipc {dp.ipc}, "
        f"{dp.steps} steps, batch-real {dp.batch_real}, width {cfg.model_width}",
        flush=True,
    )
    start = time.perf_counter()
    sx, sy, history = distill_from_config(
        cfg, x, y, seed=derive_seed(cfg.seed, 1, 0, 31), device=device
    )
    wall = time.perf_counter() - start
    protocol = eval_protocol(cfg)

    def factory(seed: int) -> torch.nn.Module:
        return model_from_config(cfg, init_seed=seed)

    seeds = ints(args.seeds)
    distilled = evaluate_set(
        sx, sy, xt, yt, protocol=protocol, seeds=seeds, model_factory=factory, device=device
    )
    rx, ry = random_real_subset(
        x, y, cfg.params(DistillParams).ipc, torch.Generator().manual_seed(0)
    )
    random = evaluate_set(
        rx, ry, xt, yt, protocol=protocol, seeds=seeds, model_factory=factory, device=device
    )
    result = {
        "domain": data.domain,
        "num_train": len(y),
        "method": cfg.params(DistillParams).method,
        "ipc": cfg.params(DistillParams).ipc,
        "steps": history.steps,
        "distill_wall_seconds": wall,
        "distill_seconds": history.seconds,
        "distill_cpu_seconds": history.cpu_seconds,
        "seconds_per_step": history.seconds_per_step,
        "peak_memory_mb": history.peak_memory_bytes / 2**20,
        "peak_memory_kind": history.peak_memory_kind,
        "initial_loss": history.initial_loss,
        "final_loss": history.final_loss,
        "eval_epochs": protocol.epochs,
        "eval_seeds": seeds,
        "distilled_accuracies": list(distilled.accuracies),
        "random_accuracies": list(random.accuracies),
    }
    print(
        f"distillation: {wall:.1f} s wall ({history.seconds_per_step:.3f} s/step), "
        f"{history.cpu_seconds:.1f} s CPU, peak "
        f"{result['peak_memory_mb']:.0f} MB ({history.peak_memory_kind}); loss "
        f"{history.initial_loss:.3f} -> {history.final_loss:.3f}\n"
        f"protocol ({protocol.epochs} epochs, run's model): distilled {distilled}, "
        f"random subset {random}",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, description=__doc__)
    if args.summarize:
        print(table(summarize(args.summarize)))
        return
    # Progress of hours-long grids goes to stderr; the table and results go to stdout.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    info = {
        "command": "python benchmarks/distill_bench.py " + shlex.join(sys.argv[1:]),
        "started": started,
        "args": vars(args),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        # The machine is shared: the 1/5/15-minute load averages put timings in context.
        "loadavg_start": os.getloadavg(),
    }
    if args.client_default:
        info["client_default"] = client_default(args)
    else:

        def save_partial(rows: list[dict[str, Any]]) -> None:
            # Hours-long grids: an interrupted run keeps every finished cell.
            if args.out:
                partial = {**info, "rows": rows, "complete": False}
                Path(args.out).write_text(json.dumps(partial, indent=2))

        rows = run_grid(args, on_row=save_partial)
        info["rows"] = rows
        info["complete"] = True
        print(table(rows))
    info["loadavg_end"] = os.getloadavg()
    print(f"load average at start {info['loadavg_start']}, at end {info['loadavg_end']}")
    if args.out:
        Path(args.out).write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
