"""The command line of ``generator_bench.py``: its presets, arguments and the teacher's digest."""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        # Two grayscale clients; 3 levels (8x8 bottleneck): 0.62M parameters at the step cost
        # of the 2-level (16, 32) UNet; 20 rounds x 40 steps x 2 clients = 1,600 DDPM steps
        # (~6 min at one thread), cosine LR 2e-3 -> 1e-4, no EMA (a per-round EMA lagged the
        # raw model at every round: benchmarks/RESULTS.md, generators).
        "domains": "mnist,optdigits",
        "channels": "16,32,64",
        "teacher_rounds": 20,
        "teacher_steps": 40,
        "teacher_lr": 2e-3,
        "teacher_lr_final": 1e-4,
        "teacher_ema": 0.0,
        "teacher_conditioning": False,
        "teacher_keep_optimizer": False,
        "teacher_bf16": False,
        "teacher_cond_dropout": 0.0,
        "guidance_scale": 0.0,
        "batch_size": 32,
        "rounds": 6,
        "generator_steps": 6,
        "critic_steps": 5,
        "generator_batch": 16,
        "generator_lr": 3e-4,
        "disback_nodes": 3,
        "disback_steps": 150,
        "disback_path_fraction": 0.0,
        "fid_samples": 500,
        "feature_steps": 400,
        "accuracy_epochs": 3,
        "threads": 1,
    },
    "gpu": {
        "domains": "all",
        "channels": "32,64,64",
        "teacher_rounds": 20,
        "teacher_steps": 500,
        "teacher_lr": 1e-3,
        "teacher_lr_final": 1e-3,
        "teacher_ema": 0.0,
        "teacher_conditioning": True,
        "teacher_keep_optimizer": True,
        "teacher_bf16": False,
        "teacher_cond_dropout": 0.1,
        "guidance_scale": 2.0,
        "batch_size": 128,
        "rounds": 20,
        "generator_steps": 100,
        "critic_steps": 5,
        "generator_batch": 64,
        "generator_lr": 1e-4,
        "disback_nodes": 5,
        "disback_steps": 2000,
        "disback_path_fraction": 0.0,
        "fid_samples": 5000,
        "feature_steps": 3000,
        "accuracy_epochs": 3,
        "threads": 8,
    },
}


TEACHER_KEYS = (
    "domains",
    "seed",
    "channels",
    "teacher_rounds",
    "teacher_steps",
    "teacher_lr",
    "teacher_lr_final",
    "teacher_ema",
    "batch_size",
)
# Keys that enter the digest only when true, so teachers cached before they existed keep theirs.
TEACHER_FLAGS = ("teacher_conditioning", "teacher_keep_optimizer", "teacher_bf16")


def teacher_digest(args: argparse.Namespace) -> str:
    """Short digest of everything the teacher depends on, so a cached teacher is reused only
    for the same data, architecture and schedule (not, e.g., after ``--domains`` changed)."""
    keys = {key: getattr(args, key) for key in TEACHER_KEYS}
    keys.update({key: True for key in TEACHER_FLAGS if getattr(args, key, False)})
    if getattr(args, "teacher_cond_dropout", 0.0):  # only when set: older digests stay valid
        keys["teacher_cond_dropout"] = args.teacher_cond_dropout
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:12]


def _flag(value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"{value!r}: expected true or false")
    return value.lower() in ("true", "1")


def parse_args(argv: list[str] | None, description: str, out_dir: str) -> argparse.Namespace:
    """The arguments, every preset key left unset taking ``--preset``'s value; ``out_dir``:
    the default ``--out-dir`` (the script's folder, as the script names it)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", default="~/.cache/fedmatch")
    parser.add_argument("--out-dir", default=out_dir)
    parser.add_argument("--retrain-teacher", action="store_true")
    parser.add_argument(
        "--teacher-checkpoint",
        default="",
        help="a teacher saved by a 'diffusion-teacher' run (cache-dir/diffusion/teacher-*.pt) "
        "instead of training one here; its UNet must match --channels/--teacher-* ",
    )
    parser.add_argument(
        "--eval-rounds", default="", help="teacher rounds after which to log FID (comma list)"
    )
    parser.add_argument("--eval-ddim-steps", type=int, default=10)
    parser.add_argument("--skip", default="", help="comma list of: dmd2-1, dmd2-4, disback")
    parser.add_argument(
        "--dpm-steps", default="", help="also sample the teacher with DPM-Solver++(2M): steps list"
    )
    for key, value in PRESETS["cpu"].items():
        kind = _flag if isinstance(value, bool) else type(value)  # bool("false") is True
        parser.add_argument("--" + key.replace("_", "-"), type=kind, default=None)
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args
