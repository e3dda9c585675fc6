"""What one DM step costs on a CPU, and which levers make it cheaper (issue 29).

A DM step (``fedmatch/distill/dm.py``) embeds ``batch_real`` real images per class without
autograd and the synthetic set with it, through a fresh random ConvNet.  This script times, in
one process and one run, on random 28x28 one-channel images (the cost does not depend on the
pixel values):

- ``step``: whole ``distill_dm`` steps at each ``--batch-real``, eager and (unless
  ``--no-compile``) with ``compile=True`` (IPC ``--ipc``, 10 classes,
  ConvNet of ``--width`` channels, DM's defaults otherwise): the real batch is the lever, since
  Eq. 4's gradient is linear in the real class means and any batch size estimates it without
  bias (tests/test_distill_dm_scaling.py);
- ``real-forward``: the real images' embedding alone (10·``--real-forward`` images), as run
  (float32, contiguous, ``no_grad``) and under each CPU option a user might reach for:
  ``inference_mode``, channels-last memory format, bfloat16 autocast and ``torch.compile``.

Every timing is the median of ``--repeats`` runs after one warm-up run; ratios are to the
first row of their group.  Pin it to an idle core (``taskset -c 0``, ``--threads 1``)::

    taskset -c 0 python benchmarks/dm_step_cost.py --threads 1 --out dm_step_cost.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedmatch.distill.common import DM_NET, fresh_convnet
from fedmatch.distill.dm import distill_dm


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocator, oneDNN primitives, compilation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def net_spec(args: argparse.Namespace) -> dict[str, Any]:
    return {**DM_NET, "width": args.width, "first_padding": args.net_padding}


def step_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Whole DM steps; ``seconds`` is the median step after the first, ``first_seconds`` the
    first (with ``compile`` it carries the compilation)."""
    x = torch.randn(10 * args.per_class, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.arange(10).repeat_interleave(args.per_class)
    rows = []
    for batch_real in args.batch_real:
        for compiled in (False, True) if args.compile else (False,):
            stamps: list[float] = []
            _, _, history = distill_dm(
                x, y, args.ipc, args.steps, batch_real=batch_real,
                net=net_spec(args), generator=torch.Generator().manual_seed(0),
                compile=compiled, on_step=lambda _k, _s, to=stamps: to.append(time.perf_counter()),
            )  # fmt: skip
            steps = [b - a for a, b in itertools.pairwise(stamps)]
            seconds = statistics.median(steps[1:]) if len(steps) > 1 else steps[0]
            variant = f"batch_real={batch_real}" + (" compiled" if compiled else "")
            rows.append({"group": "step", "variant": variant, "seconds": seconds,
                         "first_seconds": steps[0],
                         "peak_memory_mb": history.peak_memory_bytes / 2**20})  # fmt: skip
            print(f"step {variant}: {seconds:.3f} s (first {steps[0]:.1f} s)", file=sys.stderr)
    return rows


def forward_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    def make_net() -> torch.nn.Module:  # the same weights every call (seed 0)
        return fresh_convnet(
            net_spec(args), in_channels=1, num_classes=10, image_size=28,
            seed=0, device=torch.device("cpu"),
        )  # fmt: skip

    x = torch.randn(10 * args.real_forward, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    plain = make_net()
    last = make_net().to(memory_format=torch.channels_last)
    x_last = x.contiguous(memory_format=torch.channels_last)

    def no_grad(model=plain, images=x) -> torch.Tensor:
        with torch.no_grad():
            return model.embed(images)

    def inference() -> torch.Tensor:
        with torch.inference_mode():
            return plain.embed(x)

    def bf16() -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return plain.embed(x)

    variants: dict[str, Callable[[], torch.Tensor]] = {
        "float32 no_grad (as run)": no_grad,
        "inference_mode": inference,
        "channels-last": lambda: no_grad(last, x_last),
        "bfloat16 autocast": bf16,
    }
    if args.compile:
        compiled = torch.compile(plain.embed)

        def compiled_embed() -> torch.Tensor:
            with torch.no_grad():
                return compiled(x)

        variants["torch.compile"] = compiled_embed
    reference = no_grad()
    rows = []
    for name, fn in variants.items():
        seconds = median_seconds(fn, args.repeats)
        error = float((fn().float() - reference).abs().max() / reference.abs().max())
        rows.append({"group": "real-forward", "variant": name, "seconds": seconds,
                     "max_relative_error": error})  # fmt: skip
        print(f"real-forward {name}: {seconds:.3f} s (error {error:.1e})", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--width", type=int, default=128, help="ConvNet width (DM: 128)")
    p.add_argument(
        "--net-padding",
        type=int,
        default=1,
        help="first conv padding (3: DM's MNIST network, distill.net-padding)",
    )
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--per-class", type=int, default=400, help="real images per class")
    p.add_argument("--batch-real", default="256,128,64,32", help="comma list")
    p.add_argument("--steps", type=int, default=5, help="DM steps timed per batch size")
    p.add_argument("--real-forward", type=int, default=256, help="real images per class")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    args.batch_real = [int(b) for b in args.batch_real.split(",") if b.strip()]
    torch.set_num_threads(args.threads)
    rows = step_rows(args) + forward_rows(args)
    for group in ("step", "real-forward"):
        first = next(r["seconds"] for r in rows if r["group"] == group)
        for r in (r for r in rows if r["group"] == group):
            r["speedup"] = first / r["seconds"]
    result = {
        "command": "python benchmarks/dm_step_cost.py " + " ".join(sys.argv[1:]),
        "args": vars(args),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "rows": rows,
    }
    print("| group | variant | seconds | speedup |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['group']} | {r['variant']} | {r['seconds']:.3f} | {r['speedup']:.2f}x |")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
