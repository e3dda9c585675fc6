"""Federated teacher probe: which fix buys a five-domain CPU teacher that draws digits?

One process simulates the federation of ``generator_bench.py`` (one client per domain, FedAvg
weighted by local examples, cosine LR over the rounds) at a fixed budget of DDPM steps, and
switches on, one at a time, what the three probes of benchmarks/RESULTS.md named:

- ``--conditioning``: the UNet conditions on (class, domain), index domain·10 + class, each
  client on its own domain (``diffusion.domain-conditioning``);
- ``--keep-optimizer``: each client keeps its AdamW state across rounds instead of a fresh
  AdamW every round (``train_denoiser(optimizer_state=...)``);
- ``--rounds`` / ``--local-steps``: fewer, longer local phases at the same total steps;
- ``--ema``: a server-side EMA of the global weights per round, scored beside the raw model.

Each variant is scored the same way: ``--samples`` images (balanced over classes, and over
domains when conditioned) drawn with ``--ddim-steps`` DDIM steps from one noise seed, their
FID-digits against the pooled test splits (with the real-vs-real floor at the same sample
count) and the class accuracy of samples per domain (``fedmatch.diffusion.sample_accuracy``)
beside the classifier's real test accuracy.  One JSON line per variant goes to ``--out``.

    python benchmarks/teacher_fed_probe.py --variant base --out /tmp/probe.jsonl
    python benchmarks/teacher_fed_probe.py --variant cond+opt --conditioning --keep-optimizer \
        --out /tmp/probe.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import torch
from bench_scoring import SampleScorer  # benchmarks/ (this folder)
from generator_bench import ema_update, fedavg

from fedmatch.config import RunConfig
from fedmatch.data.loaders import load_domains, to_images
from fedmatch.diffusion.teacher import SOLVERS, cosine_round_lr, ddim_sample, train_denoiser
from fedmatch.diffusion.unet import (
    UNetSpec,
    build_unet,
    condition_labels,
    parse_channels,
)
from fedmatch.factories.diffusion import sampling_labels
from fedmatch.factories.diffusion_eval import balanced_labels, save_grid
from fedmatch.logs import setup_logging
from fedmatch.seeding import derive_seed

log = logging.getLogger("fedmatch.bench")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="", help="name of this row in the table")
    p.add_argument("--table", action="store_true", help="print --out as a markdown table")
    p.add_argument("--domains", default="all")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-final", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--channels", default="16,32,64")
    p.add_argument("--conditioning", action="store_true")
    p.add_argument("--domain-embedding", choices=("joint", "added"), default="joint")
    p.add_argument("--keep-optimizer", action="store_true")
    p.add_argument(
        "--cond-dropout", type=float, default=0.0, help="classifier-free guidance training"
    )
    p.add_argument(
        "--guidance-scales",
        default="0",
        help="comma-separated guidance scales w, each scored (needs --cond-dropout > 0)",
    )
    p.add_argument("--min-snr", type=float, default=0.0, help="Min-SNR-γ loss weight; 0 = off")
    p.add_argument("--bf16", action="store_true", help="train under bfloat16 autocast")
    p.add_argument("--ema", type=float, default=0.0, help="server EMA decay per round; 0 = off")
    p.add_argument("--samples", type=int, default=250)
    p.add_argument("--ddim-steps", type=int, default=10, help="sampler steps")
    p.add_argument(
        "--solver", choices=SOLVERS, default="ddim", help="the sampler (the preset's: dpm++2m)"
    )
    p.add_argument("--feature-steps", type=int, default=400)
    p.add_argument("--accuracy-epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", default="~/.cache/fedmatch")
    p.add_argument("--grid-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def score(
    scorer: SampleScorer,
    unet,
    args: argparse.Namespace,
    tag: str,
    guidance_scale: float = 0.0,
    null_label: int | None = None,
) -> dict:
    """``--samples`` DDIM samples from one noise seed, scored; a grid when ``--grid-dir``."""
    labels = sampling_labels(balanced_labels(args.samples), max(1, len(scorer.conditioned)))
    rng = torch.Generator().manual_seed(derive_seed(args.seed, 61))
    start = time.perf_counter()
    images = ddim_sample(
        unet,
        labels,
        steps=args.ddim_steps,
        generator=rng,
        guidance_scale=guidance_scale,
        null_label=null_label,
        solver=args.solver,
    )
    seconds = time.perf_counter() - start
    if args.grid_dir is not None:
        save_grid(images, labels % 10, 10, args.grid_dir / f"{args.variant}-{tag}.png")
    return {
        **scorer.score(images, labels),
        "sampling_seconds": seconds,
        "guidance_scale": guidance_scale,
    }


def table(path: Path) -> str:
    """The probe lines of ``path`` as a markdown table (accuracy of samples per domain)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:  # lines of the first version: sample_accuracy / real_accuracy maps
        for model in ("raw", "ema"):
            r = row.get(model, {})
            if "sample_accuracy" in r and "class_accuracy" not in r:
                r["class_accuracy"] = {
                    n: {"samples": v, "real": r["real_accuracy"][n]}
                    for n, v in r["sample_accuracy"].items()
                }
    names = list(rows[0]["raw"]["class_accuracy"]) if rows else []
    real = rows[0]["raw"]["class_accuracy"] if rows else {}
    heads = "".join(f" {n} (real {real[n]['real']:.3f}) |" for n in names)
    out = [
        f"| variant | client steps | loss, last round | FID-digits (floor) |{heads} train s |",
        "|---|---|---|---|" + "---|" * len(names) + "---|",
    ]
    for row in rows:
        for model in ["raw", "ema"] + [k for k in row if k.startswith("w=")]:
            if model not in row:
                continue
            r = row[model]
            cells = "".join(f" {r['class_accuracy'][n]['samples']:.2f} |" for n in names)
            label = row["variant"] + {"raw": "", "ema": " (EMA)"}.get(model, f" ({model})")
            out.append(
                f"| {label} | {row['client_steps']} | {row['loss_per_round'][-1]:.4f} "
                f"| {r['fid']:.0f} ({row['real_floor_fid']:.0f}) |{cells} "
                f"{row['train_seconds']:.0f} |"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.table:
        print(table(args.out))
        return
    if not args.variant:
        raise SystemExit("--variant is required (or --table)")
    setup_logging()
    torch.set_num_threads(args.threads)
    cfg = RunConfig(domains=args.domains, cache_dir=str(Path(args.cache_dir).expanduser()))
    domains = load_domains(cfg)
    names = [d.name for d in domains]
    n = len(names) if args.conditioning else 1
    clients = [
        (to_images(d.x_train), condition_labels(torch.from_numpy(d.y_train), i, n))
        for i, d in enumerate(domains)
    ]
    scorer = SampleScorer(
        domains,
        cfg.cache_path,
        feature_steps=args.feature_steps,
        seed=args.seed,
        accuracy_epochs=args.accuracy_epochs,
        conditioned=args.conditioning,
    )
    # The real-vs-real floor at the same sample count as the models (FID is biased by N).
    pick = torch.randperm(len(scorer.test), generator=torch.Generator().manual_seed(0))
    floor = scorer.fid.score(scorer.test[pick[: args.samples]])["all"]
    spec = UNetSpec(
        channels=parse_channels(args.channels),
        domains=n,
        domain_embedding=args.domain_embedding,
        guidance=args.cond_dropout > 0,
    ).validate()
    scales = [float(w) for w in args.guidance_scales.split(",")]
    unet = build_unet(spec, derive_seed(args.seed, 0))
    ema = {k: v.clone() for k, v in unet.state_dict().items()} if args.ema else None
    optimizer_states: list[dict | None] = [None] * len(clients)
    start, losses = time.perf_counter(), []
    for r in range(1, args.rounds + 1):
        lr = cosine_round_lr(args.lr, args.lr_final, r, args.rounds)
        states, weights, round_losses = [], [], []
        for i, (x, y) in enumerate(clients):
            local = copy.deepcopy(unet)
            history = train_denoiser(
                local,
                x,
                y,
                steps=args.local_steps,
                lr=lr,
                batch_size=args.batch_size,
                seed=derive_seed(args.seed, r, i, 51),
                device=torch.device("cpu"),
                optimizer_state=optimizer_states[i],
                cond_dropout=args.cond_dropout,
                null_label=spec.null_label,
                min_snr_gamma=args.min_snr,
                bf16=args.bf16,
            )
            if args.keep_optimizer:
                optimizer_states[i] = history.optimizer_state
            states.append(local.state_dict())
            weights.append(float(len(y)))
            round_losses.append(history.mean_loss(last=max(1, args.local_steps // 4)))
        unet.load_state_dict(fedavg(states, weights))
        if ema is not None:
            ema_update(ema, unet.state_dict(), args.ema)
        losses.append(sum(round_losses) / len(round_losses))
        log.info("%s round %d/%d: lr %.2g, loss %.4f", args.variant, r, args.rounds, lr, losses[-1])
    train_seconds = time.perf_counter() - start
    row = {
        "variant": args.variant,
        "command": "python " + " ".join(sys.argv),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "client_steps": args.rounds * args.local_steps * len(clients),
        "train_seconds": train_seconds,
        "loss_per_round": losses,
        "real_floor_fid": floor,
        "raw": score(scorer, unet.eval(), args, "raw"),
    }
    for w in scales:
        if w:
            row[f"w={w:g}"] = score(scorer, unet, args, f"w{w:g}", w, spec.null_label)
    if ema is not None:
        averaged = copy.deepcopy(unet)
        averaged.load_state_dict(ema)
        row["ema"] = score(scorer, averaged.eval(), args, "ema")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    log.info("%s", json.dumps({k: row[k] for k in ("variant", "train_seconds", "raw")}))


if __name__ == "__main__":
    main()
