"""PTQ benchmark: FID-digits of the teacher at FP32 vs W8A8 / W4A8 / W4A4 for naive, EDA-DM, DGQ.

In one process (no Flower: the functions the ``train.calibrate`` workload and the
``diffusion-ptq`` strategy call), one client per embedded domain:

- **federated**: every client calibrates on its own domain (``quant-calibration-source``) and
  sends statistics; the server merges them (``server_quantize``);
- **pooled**: one calibration on the union of the clients' data with the same total samples;
- **personal** (``--personal``): each client's own statistics only (the same statistics the
  federated rows merge), one model per client, scored on the union of the domains as well.

The teacher is the generator benchmark's cached teacher of the preset's schedule on all five
domains (``<out-dir>/generator_bench_teacher_<preset>_<digest>.pt``; trained there first if
missing), or ``--teacher``; ``--teacher-*`` / ``--guidance-scale`` override the preset's
teacher (e.g. the class- and domain-conditioned, guided five-domain teacher).  FID-digits (not
Inception-FID) and the class accuracy of ``--fid-samples`` samples of ``--sampler`` with
``--ddim-steps`` steps, the same noise for every model; packed model bytes; ms per image
(fake-quant, float kernels).

The ablation: ``--weight-clipping method,minmax,mse`` scores every method with each weight-scale
search (``quant.weight-clipping``), so naive + ``mse`` measures the shared MSE clipping search
alone and EDA-DM/DGQ + ``minmax`` their own parts without it.  ``--quant-seeds 0,1,2`` repeats
each row's calibration and reconstruction with other seeds (the teacher and the scoring noise
stay fixed) and the summary gives mean ± std and each method's share of naive's gap.

    python benchmarks/quant_bench.py --preset cpu
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from generator_bench import PRESETS, Bench  # benchmarks/ (this script's folder)
from quant_bench_report import print_summary, print_table  # benchmarks/ (this folder)

from fedmatch.config import RunConfig
from fedmatch.diffusion.teacher import ddim_sample
from fedmatch.factories.quant import client_calibration, server_quantize
from fedmatch.logs import setup_logging
from fedmatch.quant.qmodules import model_size_bytes
from fedmatch.seeding import derive_seed

log = logging.getLogger("fedmatch.bench")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--cache-dir", default="~/.cache/fedmatch")
    parser.add_argument("--out-dir", default=str(Path(__file__).parent))
    parser.add_argument("--bits", default="W8A8,W4A8,W4A4")
    parser.add_argument("--methods", default="naive,edadm,dgq")
    parser.add_argument("--calibrations", default="federated,pooled")
    parser.add_argument("--personal", action="store_true")
    parser.add_argument("--ddim-steps", type=int, default=10, help="sampler steps")
    parser.add_argument("--sampler", choices=("dpm++2m", "ddim"), default="dpm++2m")
    parser.add_argument("--fid-samples", type=int, default=500)
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--calibration-source", default="local")
    parser.add_argument("--recon-iters", type=int, default=100)
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="teacher, scorer and sample noise")
    parser.add_argument(
        "--quant-seeds", default="", help="calibration/reconstruction seeds (default: --seed)"
    )
    parser.add_argument(
        "--weight-clipping", default="method", help="comma list of method, minmax, mse"
    )
    # The teacher: the preset's unless overridden (its cache file is keyed by all of these).
    parser.add_argument("--teacher-rounds", type=int, default=None)
    parser.add_argument("--teacher-steps", type=int, default=None)
    parser.add_argument("--teacher-conditioning", choices=("true", "false"), default=None)
    parser.add_argument("--teacher-cond-dropout", type=float, default=None)
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--channels", default=None, help="UNet widths (default: the preset's)")
    parser.add_argument(
        "--teacher",
        default="",
        help="a teacher: a diffusion-teacher run's file or a state dict (default: cached)",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    unknown = set(args.calibrations.split(",")) - {"federated", "pooled"}
    if unknown:
        parser.error(
            f"--calibrations={args.calibrations!r}: {sorted(unknown)} not allowed; "
            "allowed: federated, pooled (and --personal for per-client models)"
        )
    clippings = args.weight_clipping.split(",")
    if bad := set(clippings) - {"method", "minmax", "mse"}:
        parser.error(
            f"--weight-clipping={args.weight_clipping!r}: {sorted(bad)} not allowed; "
            "allowed: method, minmax, mse"
        )
    try:
        seeds = [int(v) for v in args.quant_seeds.split(",")] if args.quant_seeds else [args.seed]
    except ValueError:
        parser.error(f"--quant-seeds={args.quant_seeds!r}: allowed: comma-separated integers")
    setup_logging()
    torch.set_num_threads(args.threads)
    total = time.perf_counter()
    bargs = argparse.Namespace(**PRESETS[args.preset])
    for key, value in {
        "preset": args.preset,
        "domains": "all",
        "seed": args.seed,
        "device": "cpu",
        "cache_dir": args.cache_dir,
        "out_dir": args.out_dir,
        "retrain_teacher": False,
        "eval_rounds": "",
        "eval_ddim_steps": 10,
        "fid_samples": args.fid_samples,
    }.items():
        setattr(bargs, key, value)
    if args.channels:
        bargs.channels = args.channels
    for key in ("teacher_rounds", "teacher_steps", "teacher_cond_dropout", "guidance_scale"):
        if getattr(args, key) is not None:
            setattr(bargs, key, getattr(args, key))
    if args.teacher_conditioning is not None:
        bargs.teacher_conditioning = args.teacher_conditioning == "true"
    bench = Bench(bargs)
    teacher = bench.read_teacher(Path(args.teacher)) if args.teacher else bench.teacher()
    steps = args.ddim_steps
    guidance, null_label = bargs.guidance_scale, bench.spec.null_label

    def sampler(model):
        return lambda labels, rng: ddim_sample(
            model, labels, steps=steps, generator=rng, guidance_scale=guidance,
            null_label=null_label, solver=args.sampler,
        )  # fmt: skip

    results: dict[str, Any] = {
        "command": "python " + shlex.join(sys.argv),
        "args": vars(args),
        "teacher_channels": bargs.channels,
        "teacher": {k: getattr(bargs, k) for k in vars(bargs) if k.startswith("teacher_")},
        "real_floor_fid": bench.real_floor,
        "fp32": {**bench.score(sampler(teacher)), "bytes": model_size_bytes(teacher)["fp32"]},
        "runs": [],
    }
    log.info("FP32: %s", results["fp32"])
    clients = bench.clients
    pooled_x = torch.cat([x for _, x, _ in clients])
    pooled_y = torch.cat([y for _, _, y in clients])
    rows = [
        (bits, method, clipping, seed)
        for bits in args.bits.split(",")
        for method in args.methods.split(",")
        for clipping in clippings
        for seed in seeds
    ]
    for bits, method, clipping, seed in rows:
        cfg = RunConfig.from_flower(
            {
                "strategy": "diffusion-ptq",
                "domains": bargs.domains,
                "diffusion.unet-channels": bargs.channels,
                "diffusion.domain-conditioning": bench.spec.domains > 1,
                "diffusion.teacher-cond-dropout": bargs.teacher_cond_dropout,
                "diffusion.guidance-scale": guidance,
                "diffusion.teacher-ddim-steps": steps,
                "diffusion.teacher-sampler": args.sampler,
                "quant.bits": bits,
                "quant.method": method,
                "quant.weight-clipping": clipping,
                "quant.groups": args.groups,
                "quant.calibration-source": args.calibration_source,
                "quant.calibration-samples": args.calibration_samples,
                "quant.recon-iters": args.recon_iters,
            }
        )
        weights = [float(len(y)) for _, _, y in clients]
        calibrations = args.calibrations.split(",")
        if args.personal:
            calibrations += [f"personal:{name}" for name, _, _ in clients]
        client_stats: list[dict[str, torch.Tensor]] = []
        client_seconds = 0.0
        if "federated" in calibrations or args.personal:
            # every client's statistics, once per (bits, method): the federated rows merge
            # them, the personal rows use one client's alone
            start = time.perf_counter()
            client_stats = [
                client_calibration(cfg, teacher, x, y, derive_seed(seed, i, 81))[0]
                for i, (_, x, y) in enumerate(clients)
            ]
            client_seconds = time.perf_counter() - start
        for calibration in calibrations:
            start = time.perf_counter()
            if calibration == "federated":
                stats, stats_weights = client_stats, weights
                start -= client_seconds
            elif calibration.startswith("personal:"):
                # one client's statistics alone: its own quantized model, scored on the
                # union of the domains like the merged one
                i = [name for name, _, _ in clients].index(calibration.split(":", 1)[1])
                stats, stats_weights = [client_stats[i]], [weights[i]]
            else:
                pooled_cfg = cfg.replace(
                    {"quant.calibration-samples": args.calibration_samples * len(clients)}
                )
                stats = [
                    client_calibration(
                        pooled_cfg, teacher, pooled_x, pooled_y, derive_seed(seed, 99, 81)
                    )[0]
                ]
                stats_weights = [float(len(pooled_y))]
            quantized, info = server_quantize(
                cfg, teacher, stats, stats_weights, derive_seed(seed, 1, 83)
            )
            seconds = time.perf_counter() - start
            point = {
                "bits": bits,
                "method": method,
                "calibration": calibration,
                "weight_clipping": clipping,
                "seed": seed,
                "calibration_seconds": seconds,
                "bytes": model_size_bytes(quantized)["quantized"],
                "stat_bytes_per_client": sum(
                    v.numel() * v.element_size() for v in stats[0].values()
                ),
                **info,
                **bench.score(sampler(quantized)),
            }
            results["runs"].append(point)
            log.info("%s %s %s %s seed %d: %s", bits, method, clipping, calibration, seed, point)
    results["total_seconds"] = time.perf_counter() - total
    out = Path(args.out_dir) / f"quant_bench_{args.preset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    log.info("wrote %s (%.0f s)", out, results["total_seconds"])
    print_table(results)
    print_summary(results)


if __name__ == "__main__":
    main()
