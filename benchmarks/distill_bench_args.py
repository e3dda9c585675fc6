"""The command line of ``distill_bench.py``: its methods and arguments."""

from __future__ import annotations

import argparse

METHODS = ("dm", "ncfm", "random", "full")


def parse_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """The script's arguments.  ``description`` heads ``--help``: the script passes its own
    docstring, which describes the benchmark (this module's describes only its command line)."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawTextHelpFormatter
    )
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
