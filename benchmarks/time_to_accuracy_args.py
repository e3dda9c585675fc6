"""The command line of ``distill_time_to_accuracy.py``: its arguments and ``--variant`` specs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from distill_bench import ints
from time_to_accuracy_official import OFFICIAL, OFFICIAL_DSA

from fedmatch.distill.dm import IMAGE_STEPS
from fedmatch.distill.dsa import parse_strategy

METHODS = (OFFICIAL, "dm", "ncfm")
# Arguments that change the results: a resumed --out must have been written with the same.
RESULT_ARGS = (
    "iterations",
    "eval_at",
    "ipc",
    "per_class",
    "test_size",
    "split_seed",
    "batch_real",
    "width",
    "eval_epochs",
    "official_epochs",
    "eval_models",
    "official_dsa_strategy",
    "variant",
    "protocols",
)


def parse_bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


# What a --variant may change in distill_dm, with the parser of each value.
VARIANT_KEYS: dict[str, Callable[[str], Any]] = {
    "batch_real": int,
    "lr": float,
    "momentum": float,
    "dsa_strategy": str,
    "image_step": str,
    # The matching ConvNet's first-conv padding: 3 is the official MNIST network (28 -> 32).
    "net_padding": int,
    # One torch.compile'd embedding for every step's network (fedmatch/distill/compiled.py);
    # the first step's clock includes the compilation.
    "compile": parse_bool,
    # Its own step budget (the official's is --iterations): a faster step can run longer in
    # the official's time; its checkpoints are the --eval-at points up to it, and its end.
    "iterations": int,
}


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:key=value,...`` -> (NAME, distill_dm keyword arguments), every value checked."""
    name, sep, spec = text.partition(":")
    name = name.strip()
    if not sep or not name or name in METHODS:
        raise ValueError(
            f"--variant {text!r}: expected NAME:key=value,... with a NAME other than {METHODS}"
        )
    settings: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in VARIANT_KEYS:
            raise ValueError(
                f"--variant {text!r}: {item!r} is not key=value with a key in {list(VARIANT_KEYS)}"
            )
        try:
            settings[key.strip()] = VARIANT_KEYS[key.strip()](value.strip())
        except ValueError as error:
            raise ValueError(f"--variant {text!r}: {key.strip()}={value!r}: {error}") from None
    if settings.get("batch_real", 1) < 1 or settings.get("lr", 1.0) <= 0:
        raise ValueError(f"--variant {text!r}: batch_real must be >= 1 and lr > 0")
    if settings.get("iterations", 1) < 1:
        raise ValueError(f"--variant {text!r}: iterations must be >= 1")
    if "image_step" in settings and settings["image_step"] not in IMAGE_STEPS:
        raise ValueError(f"--variant {text!r}: image_step must be one of {IMAGE_STEPS}")
    if "dsa_strategy" in settings:
        parse_strategy(settings["dsa_strategy"])
    if not settings:
        raise ValueError(f"--variant {text!r}: no setting given")
    return name, settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--official", default="", help="checkout of VICO-UoE/DatasetCondensation")
    p.add_argument("--seeds", default="0,1,2", help="comma list")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {METHODS}")
    p.add_argument(
        "--variant", action="append", default=[], help="NAME:key=value,... (fedmatch DM)"
    )
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--eval-at", default="0,50,100,200,300", help="comma list of iterations")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--per-class", type=int, default=400, help="training images per class")
    p.add_argument("--test-size", type=int, default=1000, help="test digits (of the rest)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--batch-real", type=int, default=256, help="real images per class per step")
    p.add_argument("--width", type=int, default=128, help="fedmatch ConvNet width (both uses)")
    p.add_argument("--eval-epochs", type=int, default=300, help="project protocol epochs")
    p.add_argument("--official-epochs", type=int, default=300, help="evaluate_synset epochs")
    p.add_argument("--eval-models", type=int, default=1, help="fresh models per protocol")
    p.add_argument(
        "--protocols",
        default="project,official",
        help="scoring: project and/or official (official needs --official), or none",
    )
    p.add_argument("--official-dsa-strategy", default=OFFICIAL_DSA)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--log-every", type=int, default=25, help="fedmatch loss log period")
    p.add_argument("--out", default="", help="JSON results (resumed from when it exists)")
    p.add_argument(
        "--save-sets",
        default="",
        help="folder: keep every checkpoint's set (safetensors), to score again later with "
        "time_to_accuracy_rescore.py; with --protocols none nothing is scored here",
    )
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if set(methods) - set(METHODS):
        p.error(f"--methods: unknown {sorted(set(methods) - set(METHODS))}; allowed {METHODS}")
    args.protocols = [x.strip() for x in args.protocols.split(",") if x.strip()]
    if not args.official:  # the official DM and its evaluation need its code
        methods = [m for m in methods if m != OFFICIAL]
        args.protocols = [x for x in args.protocols if x != "official"]
    if args.protocols == ["none"]:  # distil and keep the sets; score them later
        if not args.save_sets:
            p.error("--protocols none scores nothing: give --save-sets DIR to keep the sets")
        args.protocols = []
    elif not args.protocols or set(args.protocols) - {"project", "official"}:
        p.error(f"--protocols: a comma list of project, official; got {args.protocols}")
    try:
        args.variants = dict(parse_variant(v) for v in args.variant)
    except ValueError as error:
        p.error(str(error))
    if len(args.variants) != len(args.variant):
        p.error(f"--variant: names must differ, got {args.variant}")
    args.methods = methods + list(args.variants)
    longest = max([args.iterations] + [iterations(args, m) for m in args.methods])
    args.eval_at = sorted(set(ints(args.eval_at)) | {args.iterations})
    if args.eval_at[0] < 0 or args.eval_at[-1] > longest:
        p.error(f"--eval-at must lie in 0..{longest} (the longest run), got {args.eval_at}")
    return args


def iterations(args: argparse.Namespace, method: str) -> int:
    """The steps ``method`` runs: its variant's ``iterations``, else ``--iterations``."""
    return int(args.variants.get(method, {}).get("iterations", args.iterations))


def checkpoints(args: argparse.Namespace, method: str) -> list[int]:
    """The iterations at which ``method`` is scored: the ``--eval-at`` points it reaches, and
    its last step."""
    last = iterations(args, method)
    return sorted({k for k in args.eval_at if k <= last} | {last})
