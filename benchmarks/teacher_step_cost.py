"""The diffusion teacher's training step: eager against ``torch.compile``, alternated.

Builds the CPU preset's UNet (channels 16/32/64, five domains with the added domain row,
the null condition of guidance), then runs ``train_denoiser`` on random images with the
compiled and the eager module in turn (``--repeats`` times, so that load on a shared core
falls on both alike) and prints seconds per step.  It also times a second, freshly built
compiled UNet, as each federated round builds one, to show whether the compiled code is
reused.

    python benchmarks/teacher_step_cost.py --steps 40 --repeats 3 [--no-bf16]
"""

from __future__ import annotations

import argparse
import time

import torch

from fedmatch.diffusion.teacher import train_denoiser
from fedmatch.diffusion.unet import UNetSpec, build_unet


def main(argv: list[str] | None = None) -> list[tuple[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-bf16", action="store_true", help="float32 instead of bf16 autocast")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    spec = UNetSpec(channels=(16, 32, 64), domains=5, domain_embedding="added", guidance=True)
    spec = spec.validate()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(512, spec.in_channels, 28, 28, generator=g) * 2 - 1
    labels = torch.randint(0, spec.num_classes * spec.domains, (512,), generator=g)
    settings = {
        "lr": 2e-3,
        "batch_size": a.batch_size,
        "seed": 0,
        "device": torch.device("cpu"),
        "cond_dropout": 0.1,
        "null_label": spec.null_label,
        "bf16": not a.no_bf16,
    }
    modules = {"eager": build_unet(spec, 0), "compiled": torch.compile(build_unet(spec, 0))}
    began = time.perf_counter()
    train_denoiser(modules["compiled"], images, labels, steps=3, **settings)
    print(f"compilation + 3 steps: {time.perf_counter() - began:.1f} s")
    began = time.perf_counter()
    train_denoiser(torch.compile(build_unet(spec, 1)), images, labels, steps=3, **settings)
    print(f"a fresh compiled UNet, 3 steps: {time.perf_counter() - began:.1f} s")
    rows = []
    for repeat in range(a.repeats):
        for name, module in modules.items():
            history = train_denoiser(module, images, labels, steps=a.steps, **settings)
            rows.append((name, history.seconds / a.steps))
            print(f"repeat {repeat}: {name:8s} {history.seconds / a.steps:.4f} s / step")
    return rows


if __name__ == "__main__":
    main()
