"""Centralised teacher probe: how many DDPM steps does the teacher need to draw digits?

Trains the class-conditional teacher UNet of ``generator_bench.py`` on the *pooled* training
splits of ``--domains`` (no federation: one model, one AdamW per chunk of steps), and after
every ``--chunk`` steps saves a grid of 20-step DDIM samples (one row per class) and logs the
loss.  It separates "too few steps", "too many / too varied domains" and "federated averaging"
as causes of a teacher that does not draw digits (benchmarks/RESULTS.md, generators).

    python benchmarks/teacher_probe.py --domains mnist --steps 1000 --out-dir /tmp/probe
    python benchmarks/teacher_probe.py --domains all --steps 1000 --out-dir /tmp/probe
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from fedmatch.config import RunConfig
from fedmatch.data.loaders import load_domains, to_images
from fedmatch.diffusion.teacher import ddim_sample, train_denoiser
from fedmatch.diffusion.unet import UNetSpec, build_unet, parse_channels
from fedmatch.factories.diffusion_eval import balanced_labels, save_grid
from fedmatch.logs import setup_logging

log = logging.getLogger("fedmatch.bench")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--domains", default="mnist")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=500, help="steps between sample grids")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--channels", default="16,32,64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", default="~/.cache/fedmatch")
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.chunk < 1 or args.steps < args.chunk:
        parser.error(f"--chunk={args.chunk} must be in [1, --steps={args.steps}]")
    setup_logging()
    torch.set_num_threads(args.threads)
    cfg = RunConfig(domains=args.domains, cache_dir=str(Path(args.cache_dir).expanduser()))
    domains = load_domains(cfg)
    images = torch.cat([to_images(d.x_train) for d in domains])
    labels = torch.cat([torch.from_numpy(d.y_train) for d in domains])
    log.info("pooled training images: %d from %s", len(labels), [d.name for d in domains])
    spec = UNetSpec(channels=parse_channels(args.channels)).validate()
    unet = build_unet(spec, seed=args.seed)
    grid_labels = balanced_labels(80)
    tag = "_".join(d.name for d in domains)
    done = 0
    while done < args.steps:
        history = train_denoiser(
            unet,
            images,
            labels,
            steps=args.chunk,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed * 1_000_003 + done,
            device=torch.device("cpu"),
        )
        done += args.chunk
        samples = ddim_sample(
            unet, grid_labels, steps=20, generator=torch.Generator().manual_seed(args.seed)
        )
        path = save_grid(samples, grid_labels, 8, args.out_dir / f"probe-{tag}-{done}.png")
        log.info(
            "%d steps: loss (last 50) %.4f, %.0f s for the chunk; samples %s",
            done,
            history.mean_loss(last=50),
            history.seconds,
            path,
        )


if __name__ == "__main__":
    main()
