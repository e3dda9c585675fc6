"""The command line of ``dm_ipc_scaling.py``: its arguments, and the run each ``--variants``
option stands for at an IPC."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from fedmatch.distill.dm import REFERENCE_IPC, ImageStep

VARIANTS = ("class-mean", "lr-scaled", "per-image", "larger", "per-image-lr1", "proportional")


@dataclass(frozen=True)
class Plan:
    """One distillation: its image step, lr and steps, and the steps at which it is scored."""

    variant: str
    image_step: ImageStep
    lr: float
    steps: int
    scored: tuple[int, ...]


def plan(variant: str, ipc: int, steps: int, snapshots: list[int]) -> Plan:
    """The run of ``variant`` at ``ipc``: ``steps`` is the IPC-10 budget."""
    scale = ipc / REFERENCE_IPC
    if variant == "class-mean":
        image_step, lr, total = "class-mean", 1.0, steps
    elif variant == "lr-scaled":
        image_step, lr, total = "class-mean", scale, steps
    elif variant == "per-image":
        image_step, lr, total = "per-image", 1.0, steps
    elif variant == "larger":
        image_step, lr, total = "larger", 1.0, steps
    elif variant == "per-image-lr1":
        # Weights n_c/10 at lr 10 = the per-image loss Σ_c n_c·‖·‖² at lr 1.
        image_step, lr, total = "per-image", float(REFERENCE_IPC), steps
    elif variant == "proportional":
        image_step, lr, total = "class-mean", 1.0, max(1, round(steps * scale))
    else:
        raise SystemExit(f"--variants: unknown {variant!r}; allowed {VARIANTS}")
    scored = tuple(sorted({k for k in snapshots if 0 < k < total} | {total}))
    return Plan(variant, image_step, lr, total, scored)


def parse_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """The script's arguments.  ``description`` heads ``--help``: the script passes its own
    docstring, which describes the benchmark (this module's describes only its command line)."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--domains", default="mnist,photo-mnist")
    p.add_argument("--ipc", default="10,50", help="comma list")
    p.add_argument("--seeds", default="0", help="distillation seeds, comma list")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {VARIANTS}")
    p.add_argument("--steps", type=int, default=200, help="DM steps at IPC 10 (the CPU warm-up)")
    p.add_argument(
        "--snapshots",
        default="",
        help="also score every run at these steps (the same run stopped early), comma list",
    )
    p.add_argument(
        "--refresh-steps",
        type=int,
        default=0,
        help="also refresh each finished set this many DM steps in a trained ConvNet's features",
    )
    p.add_argument("--batch-real", type=int, default=64, help="real images per class per step")
    p.add_argument("--width", type=int, default=64, help="distillation ConvNet width")
    p.add_argument("--init", default="stats", choices=("stats", "real", "noise"))
    p.add_argument("--eval-epochs", type=int, default=40)
    p.add_argument("--eval-width", type=int, default=64)
    p.add_argument("--eval-seeds", default="0", help="protocol seeds, comma list")
    p.add_argument(
        "--compile",
        action="store_true",
        help="distil with distill_dm(compile=True) (distill.compile; the clock includes it)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--log-every", type=int, default=50, help="log the DM loss every N steps")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    p.add_argument("--cache-dir", default="~/.cache/fedmatch")
    p.add_argument("--out", default="", help="JSON results file")
    p.add_argument("--resume", action="store_true", help="skip the sets --out already holds")
    p.add_argument("--summarize", nargs="+", metavar="JSON", help="print the table of files")
    return p.parse_args(argv)


def ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]
