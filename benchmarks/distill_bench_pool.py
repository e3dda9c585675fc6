"""NCFM's feature networks for ``distill_bench.py``: trained once per (domain, seed, settings)
and cached under ``--cache-dir``."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import pickle
import time
from pathlib import Path
from typing import Any

import torch

from fedmatch.atomic import atomic_torch_save
from fedmatch.distill.feature_nets import FeatureNetPool, pretrain_feature_nets
from fedmatch.seeding import derive_seed


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
