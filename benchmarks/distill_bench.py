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
import dataclasses
import hashlib
import json
import logging
import os
import pickle
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedmatch.atomic import atomic_torch_save
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
from fedmatch.distill.feature_nets import FeatureNetPool, pretrain_feature_nets
from fedmatch.distill.ncfm import distill_ncfm
from fedmatch.factories.distill import distill_from_config, eval_protocol
from fedmatch.factories.models import model_from_config
from fedmatch.params import DistillParams
from fedmatch.seeding import derive_seed
from fedmatch.train import resolve_device

METHODS = ("dm", "ncfm", "random", "full")

log = logging.getLogger("distill_bench")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--domains", default="mnist,street-digits")
    p.add_argument("--ipc", default="1,10,50", help="comma list")
    p.add_argument("--seeds", default="0,1,2", help="comma list")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {METHODS}")
    p.add_argument("--steps", type=int, default=20000, help="distillation steps (DM: 20000)")
    p.add_argument("--batch-real", type=int, default=256, help="real images per class per step")
    p.add_argument("--width", type=int, default=128, help="distillation ConvNet width")
    p.add_argument("--dm-lr", type=float, default=1.0)
    p.add_argument("--ncfm-lr", type=float, default=0.01)
    p.add_argument("--ncfm-alpha", type=float, default=0.5)
    p.add_argument("--ncfm-frequencies", type=int, default=1024)
    p.add_argument("--ncfm-psi-lr", type=float, default=1e-3)
    p.add_argument("--ncfm-frequency-scale", type=float, default=1.0, help="t -> scale * t")
    p.add_argument(
        "--ncfm-feature-nets",
        type=int,
        default=0,
        help="NCFM embeds with blends of this many ConvNets trained on the domain (0: fresh "
        "random ConvNet per step, like DM)",
    )
    p.add_argument(
        "--ncfm-step-per-class",
        action="store_true",
        help="NCFM: one image step per class per iteration, as the released code",
    )
    p.add_argument("--ncfm-feature-epochs", type=int, default=20, help="epochs per feature net")
    p.add_argument(
        "--ncfm-calibration",
        type=float,
        default=0.0,
        help="weight of NCFM's calibration step (the code's calib_weight, 1); needs feature nets",
    )
    p.add_argument(
        "--ncfm-factor",
        type=int,
        default=1,
        help="NCFM multi-formation factor (the paper's rho: 2): each stored image decodes to "
        "factor^2 images",
    )
    p.add_argument(
        "--dm-factor", type=int, default=1, help="DM multi-formation factor (a control; DM: 1)"
    )
    p.add_argument("--eval-epochs", type=int, default=1000, help="protocol epochs (DM: 1000)")
    p.add_argument("--full-epochs", type=int, default=0, help="epochs for full data (0: same)")
    p.add_argument("--eval-width", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--log-every",
        type=int,
        default=50,
        help="log the distillation loss every N steps (0: never)",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--cache-dir", default="~/.cache/fedmatch")
    p.add_argument(
        "--no-pool-cache",
        dest="pool_cache",
        action="store_false",
        help="train NCFM's feature networks even when --cache-dir holds them",
    )
    p.add_argument("--out", default="", help="write all results as JSON here")
    p.add_argument("--client-default", action="store_true", help="time the CPU default")
    p.add_argument(
        "--summarize",
        nargs="+",
        metavar="JSON",
        help="print the mean ± std table of these --out files (no runs)",
    )
    return p.parse_args(argv)


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


def feature_net_pool(
    domain: str,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    args: argparse.Namespace,
    net: dict[str, Any],
    device: torch.device,
) -> tuple[FeatureNetPool, float, bool]:
    """NCFM's feature networks for (domain, seed), their training seconds, and whether they
    came from the cache.

    The pool is a function of the data, the seed, its settings and the device kind (a GPU
    trains to other bits), so pilots that vary only NCFM's own knobs reuse it from
    ``--cache-dir`` (it costs 5 to 6 minutes per domain and seed on one CPU core);
    ``--no-pool-cache`` always trains.  The seconds of a cached pool are its original ones.
    """
    settings = {
        "domain": domain,
        "seed": seed,
        "count": args.ncfm_feature_nets,
        "epochs": args.ncfm_feature_epochs,
        "net": net,
        "device": device.type,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(args.cache_dir).expanduser() / "ncfm-feature-nets" / f"{domain}-{digest}.pt"
    if args.pool_cache and path.exists():
        cached = _read_pool(path)
        if cached is not None:
            print(f"  {domain}: {len(cached[0])} NCFM feature nets from {path}", flush=True)
            return cached[0], cached[1], True
    started = time.perf_counter()
    pool = pretrain_feature_nets(
        x,
        y,
        args.ncfm_feature_nets,
        args.ncfm_feature_epochs,
        net=net,
        generator=torch.Generator().manual_seed(derive_seed(seed, 3)),
        device=device,
    )
    seconds = time.perf_counter() - started
    print(
        f"  {domain}: {len(pool)} NCFM feature nets, {args.ncfm_feature_epochs} epochs, train "
        f"accuracy {[round(a, 3) for a in pool.train_accuracy]}, {seconds:.0f} s",
        flush=True,
    )
    if args.pool_cache:
        # Plain fields, not the dataclass: the cache then loads with weights_only=True.
        fields = {f.name: getattr(pool, f.name) for f in dataclasses.fields(pool)}
        atomic_torch_save({"pool": {**fields, "net": dict(pool.net)}, "seconds": seconds}, path)
    return pool, seconds, False


def _read_pool(path: Path) -> tuple[FeatureNetPool, float] | None:
    """A cached pool, or None (retrain) for a file that would have to be unpickled to load:
    caches written before the format change pickled the FeatureNetPool object itself."""
    try:
        saved = torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        print(f"  {path}: not loadable without unpickling, retraining the pool", flush=True)
        return None
    return FeatureNetPool(**saved["pool"]), float(saved["seconds"])


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
    args = parse_args(argv)
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
