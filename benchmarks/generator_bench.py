"""Generator benchmark: the federated teacher at 50/10/1 DDIM steps vs DMD2 and DisBack.

A federated simulation in one process (no Flower: the same functions the ``train.teacher`` and
``train.generator`` workloads call, FedAvg weighted by local examples, one client per domain):

1. the teacher: ``--teacher-rounds`` rounds of ``--teacher-steps`` local DDPM steps per client
   (cached in ``--out-dir`` under a digest of its data, architecture and schedule, so a rerun
   reuses it);
2. FID-digits (``fedmatch.diffusion.fid``, *not* Inception-FID) of ``--fid-samples`` images
   against the pooled test splits, for the teacher with 50, 10 and 1 DDIM steps;
3. DMD2 one-step, DMD2 4-step (backward simulation) and DisBack one-step, each from the same
   initial generator (the teacher) and seeds: ``--rounds`` rounds of ``--generator-steps``
   local generator updates (``--critic-steps`` critic updates each, GAN on local real images);
   FID after every round gives the FID-vs-generator-step curves;
4. wall time per sampled image for every sampler (batch 250, same thread count);
5. sample grids (one row per class) of every sampler's final model in ``<out-dir>/figures/``.

Presets: ``cpu`` (tiny UNet, the two grayscale domains mnist and optdigits: the teacher
alone ≈6 min and the whole benchmark ≈16 min on one shared core) and ``gpu`` (all five
domains, a larger UNet and 10-50x the steps, for the device machine).  Every flag overrides
its preset.  On a CPU the five domains together do not give a teacher that draws digits:
photo-mnist's, font-digits' and street-digits' colour backgrounds need far more steps than
this budget (benchmarks/RESULTS.md, generators, "three probes").  ``--teacher-conditioning
true`` conditions on (class, domain) (class row + domain row), ``--teacher-keep-optimizer true``
keeps each client's AdamW state across rounds; every score also reports the class accuracy of
samples per domain (``class_accuracy``: ``{domain: {"samples", "real"}}``).

    python benchmarks/generator_bench.py --preset cpu
    python benchmarks/generator_bench.py --preset gpu --device cuda
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from bench_scoring import SampleScorer  # benchmarks/ (this script's folder)

# PRESETS is imported from here by quant_bench.py.
from generator_bench_args import PRESETS, parse_args, teacher_digest  # noqa: F401
from generator_bench_report import print_table

from fedmatch.config import RunConfig
from fedmatch.data.loaders import load_domains, to_images
from fedmatch.diffusion.disback import backtrack_target, record_degradation
from fedmatch.diffusion.dmd2 import DMD2Settings, GanHead, generate, train_dmd2
from fedmatch.diffusion.fid import FIDScorer
from fedmatch.diffusion.teacher import cosine_round_lr, ddim_sample, train_denoiser
from fedmatch.diffusion.unet import UNetSpec, build_unet, condition_labels
from fedmatch.factories.diffusion import load_teacher, sampling_labels
from fedmatch.factories.diffusion_eval import balanced_labels, save_grid
from fedmatch.logs import setup_logging
from fedmatch.seeding import derive_seed

log = logging.getLogger("fedmatch.bench")


def fedavg(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    total = sum(weights)
    return {
        k: (sum(w * s[k].double() for w, s in zip(weights, states, strict=True)) / total).to(
            states[0][k].dtype
        )
        for k in states[0]
    }


def ema_update(ema: dict[str, torch.Tensor], state: dict[str, torch.Tensor], decay: float):
    """ema ← decay · ema + (1 − decay) · state, once per round (server-side EMA of the weights)."""
    for k, v in state.items():
        if ema[k].is_floating_point():
            ema[k].mul_(decay).add_(v.to(ema[k].dtype), alpha=1 - decay)
        else:
            ema[k].copy_(v)


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        cfg = RunConfig(domains=args.domains, cache_dir=str(Path(args.cache_dir).expanduser()))
        domains = load_domains(cfg)
        conditioned = bool(getattr(args, "teacher_conditioning", False))
        n = len(domains) if conditioned else 1  # (class, domain) rows: domain·10 + class
        channels = tuple(int(c) for c in args.channels.split(","))
        embedding = "added" if n > 1 else "joint"  # class row + domain row when conditioned
        self.spec = UNetSpec(
            channels=channels,
            domains=n,
            domain_embedding=embedding,
            guidance=args.teacher_cond_dropout > 0,
        ).validate()
        if args.guidance_scale > 0 and not self.spec.guidance:
            raise SystemExit("--guidance-scale > 0 needs --teacher-cond-dropout > 0")
        self.clients = [
            (d.name, to_images(d.x_train), condition_labels(torch.from_numpy(d.y_train), i, n))
            for i, d in enumerate(domains)
        ]
        log.info("clients: %s", ", ".join(f"{n} ({len(y)})" for n, _, y in self.clients))
        self.scorer = SampleScorer(
            domains,
            cfg.cache_path,
            feature_steps=args.feature_steps,
            seed=args.seed,
            accuracy_epochs=getattr(args, "accuracy_epochs", 0),
            conditioned=conditioned,
        )
        self.labels = sampling_labels(balanced_labels(args.fid_samples), n)
        # The floor: FID of real held-out images (the other half of the test splits).
        test = self.scorer.test
        half = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(0))]
        net = self.scorer.fid.feature_net
        floor = FIDScorer(net, {"a": half[: len(half) // 2]}).score(half[len(half) // 2 :])
        self.real_floor = floor["a"]
        self.eval_rounds = {int(r) for r in args.eval_rounds.split(",") if r}
        self.teacher_curve: list[dict[str, Any]] = []

    def score(self, sampler, grid: str = "") -> dict[str, float]:
        """FID-digits etc. of ``sampler``; ``grid``: also save a sample grid PNG of that name."""
        rng = torch.Generator().manual_seed(derive_seed(self.args.seed, 61))
        images, seconds = timed(sampler, self.labels, rng)
        if grid:
            path = (
                Path(self.args.out_dir)
                / "figures"
                / f"generator_bench_{self.args.preset}_{grid}.png"
            )
            save_grid(images, self.labels % 10, 8, path)
        return {
            **self.scorer.score(images, self.labels),
            "ms_per_image": 1e3 * seconds / len(self.labels),
        }

    # ------------------------------------------------------------------ teacher

    def teacher(self) -> torch.nn.Module:
        a = self.args
        path = Path(a.out_dir) / f"generator_bench_teacher_{a.preset}_{teacher_digest(a)}.pt"
        if getattr(a, "teacher_checkpoint", ""):
            return self.read_teacher(Path(a.teacher_checkpoint).expanduser())
        unet = build_unet(self.spec, derive_seed(a.seed, 0))
        if path.exists() and not a.retrain_teacher:
            unet.load_state_dict(torch.load(path, weights_only=True))
            log.info("teacher: %s", path)
            return unet.to(self.device).eval()
        start = time.perf_counter()
        ema = {k: v.clone() for k, v in unet.state_dict().items()} if a.teacher_ema else None
        # AdamW state per client across rounds (--teacher-keep-optimizer) or fresh each round.
        optimizer_states: list[dict | None] = [None] * len(self.clients)
        for r in range(1, a.teacher_rounds + 1):
            lr = cosine_round_lr(a.teacher_lr, a.teacher_lr_final, r, a.teacher_rounds)
            states, weights, losses = [], [], []
            for i, (_, x, y) in enumerate(self.clients):
                local = copy.deepcopy(unet)
                h = train_denoiser(
                    local,
                    x,
                    y,
                    steps=a.teacher_steps,
                    lr=lr,
                    batch_size=a.batch_size,
                    seed=derive_seed(a.seed, r, i, 51),
                    device=self.device,
                    optimizer_state=optimizer_states[i],
                    cond_dropout=a.teacher_cond_dropout,
                    null_label=self.spec.null_label,
                    bf16=a.teacher_bf16,
                )
                if getattr(a, "teacher_keep_optimizer", False):
                    optimizer_states[i] = h.optimizer_state
                states.append({k: v.cpu() for k, v in local.state_dict().items()})
                weights.append(float(len(y)))
                losses.append(h.mean_loss())
            unet.load_state_dict(fedavg(states, weights))
            if ema is not None:
                ema_update(ema, unet.state_dict(), a.teacher_ema)
            log.info(
                "teacher round %d/%d: lr %.2g, loss %.4f (%.0f s)",
                r,
                a.teacher_rounds,
                lr,
                sum(losses) / len(losses),
                time.perf_counter() - start,
            )
            if r in self.eval_rounds:
                self.eval_teacher(unet, ema, r)
        if ema is not None:
            unet.load_state_dict(ema)
        self.teacher_seconds = time.perf_counter() - start
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(unet.state_dict(), path)
        return unet.to(self.device).eval()

    def read_teacher(self, path: Path) -> torch.nn.Module:
        """The teacher in ``path``: a ``diffusion-teacher`` run's file (its UNet spec checked
        against this benchmark's) or a bare state dict this script saved."""
        if not path.is_file():
            raise SystemExit(f"--teacher-checkpoint / --teacher {path}: no such file")
        saved = torch.load(path, weights_only=True)
        if isinstance(saved, dict) and "spec" in saved:
            unet = load_teacher(path, self.spec)
        else:
            unet = build_unet(self.spec, 0)
            unet.load_state_dict(saved, strict=True)
        log.info("teacher: %s", path)
        return unet.to(self.device).eval()

    def eval_teacher(self, unet, ema, server_round: int) -> None:
        """FID-digits of the raw (and EMA) teacher after ``server_round`` (10 DDIM steps)."""
        models = {"raw": unet}
        if ema is not None:
            models["ema"] = copy.deepcopy(unet)
            models["ema"].load_state_dict(ema)
        steps = self.args.eval_ddim_steps
        for name, model in models.items():
            model.eval()
            point = self.score(self.teacher_sampler(model, steps))
            model.train()
            self.teacher_curve.append({"round": server_round, "model": name, **point})
            accuracy = point.get("class_accuracy", {})
            log.info(
                "teacher round %d %s: FID-digits (DDIM %d) %.1f; class accuracy of samples %s",
                server_round,
                name,
                steps,
                point["fid"],
                ", ".join(f"{d} {v['samples']:.2f}" for d, v in accuracy.items()) or "-",
            )

    def teacher_sampler(self, teacher, steps: int, solver: str = "ddim"):
        """DDIM (or ``solver``) with ``steps`` steps, guided by ``--guidance-scale``."""
        w, null = self.args.guidance_scale, self.spec.null_label
        return lambda labels, rng: ddim_sample(
            teacher, labels, steps=steps, generator=rng, guidance_scale=w, null_label=null,
            solver=solver,
        )  # fmt: skip

    # ------------------------------------------------------------------ generators

    def distil(self, teacher, *, nfe: int, disback: bool) -> dict[str, Any]:
        a = self.args
        settings = DMD2Settings(
            generator_steps=a.generator_steps,
            critic_steps=a.critic_steps,
            lr=a.generator_lr,
            batch_size=a.generator_batch,
            nfe=nfe,
            real_guidance=a.guidance_scale,
            null_label=self.spec.null_label,
        )
        generator, fake = copy.deepcopy(teacher), copy.deepcopy(teacher)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(a.seed, 2))
            head = GanHead(self.spec.channels[-1], self.spec.norm_groups).to(self.device)
        path = None
        extra: dict[str, Any] = {}
        start = time.perf_counter()
        if disback:
            (path, history), seconds = timed(
                record_degradation,
                teacher,
                copy.deepcopy(teacher),
                steps=a.disback_steps,
                num_nodes=a.disback_nodes,
                lr=a.teacher_lr,
                batch_size=a.batch_size,
                nfe=nfe,
                seed=derive_seed(a.seed, 71),
                device=self.device,
                num_classes=self.spec.num_conditions,
                cond_dropout=a.teacher_cond_dropout,
                null_label=self.spec.null_label,
            )
            fake.load_state_dict(path[-1])
            extra = {
                "degradation_seconds": seconds,
                "degradation_loss": [history.losses[0], history.losses[-1]],
            }
        curve = [{"round": 0, "generator_steps": 0, **self.score(self.sampler(generator, nfe))}]
        target = teacher
        for r in range(1, a.rounds + 1):
            if path is not None:
                index = backtrack_target(
                    a.disback_nodes, r - 1, a.rounds, getattr(a, "disback_path_fraction", 0.0)
                )
                target = build_unet(self.spec, 0).to(self.device)
                target.load_state_dict(path[index])
            states, weights = [], []
            for i, (name, x, y) in enumerate(self.clients):
                g, f, h = copy.deepcopy(generator), copy.deepcopy(fake), copy.deepcopy(head)
                hist = train_dmd2(
                    g,
                    f,
                    h,
                    target,
                    x,
                    y,
                    settings,
                    seed=derive_seed(a.seed, r, i, 53),
                    device=self.device,
                )
                states.append(
                    {
                        **{f"g.{k}": v.cpu() for k, v in g.state_dict().items()},
                        **{f"f.{k}": v.cpu() for k, v in f.state_dict().items()},
                        **{f"h.{k}": v.cpu() for k, v in h.state_dict().items()},
                    }
                )
                weights.append(float(len(y)))
                log.info(
                    "%s round %d client %s: DM %.4g fake %.4f (%.1f s)",
                    "disback" if disback else f"dmd2-{nfe}",
                    r,
                    name,
                    sum(hist.dm_losses) / len(hist.dm_losses),
                    sum(hist.fake_losses) / len(hist.fake_losses),
                    hist.seconds,
                )
            avg = fedavg(states, weights)
            for prefix, module in (("g.", generator), ("f.", fake), ("h.", head)):
                module.load_state_dict({k[2:]: v for k, v in avg.items() if k.startswith(prefix)})
            name = "disback" if disback else f"dmd2-{nfe}step"
            point = {
                "round": r,
                "generator_steps": r * a.generator_steps,
                **self.score(self.sampler(generator, nfe), grid=name if r == a.rounds else ""),
            }
            if path is not None:
                point["target_node"] = index
            curve.append(point)
            log.info("  -> FID-digits %.2f", point["fid"])
        return {"curve": curve, "seconds": time.perf_counter() - start, **extra}

    @staticmethod
    def sampler(generator, nfe: int):
        return lambda labels, rng: generate(
            generator, labels, num_steps=nfe, rng=rng, batch_size=250
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, __doc__.split("\n")[0], out_dir=str(Path(__file__).parent))
    setup_logging()
    torch.set_num_threads(args.threads)
    total = time.perf_counter()
    bench = Bench(args)
    teacher = bench.teacher()
    results: dict[str, Any] = {
        "command": "python " + shlex.join(sys.argv),
        "args": vars(args),
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
        "params": sum(p.numel() for p in teacher.parameters()),
        "real_floor_fid": bench.real_floor,
        "teacher_seconds": getattr(bench, "teacher_seconds", None),
        "teacher": {},
        "teacher_curve": bench.teacher_curve,
    }
    for steps in (50, 10, 1):
        results["teacher"][str(steps)] = bench.score(
            bench.teacher_sampler(teacher, steps), grid=f"teacher-ddim{steps}"
        )
        log.info("teacher %d DDIM steps: %s", steps, results["teacher"][str(steps)])
    for steps in (int(k) for k in args.dpm_steps.split(",") if k.strip()):
        results["teacher"][f"dpm++2m-{steps}"] = bench.score(
            bench.teacher_sampler(teacher, steps, "dpm++2m"), grid=f"teacher-dpm{steps}"
        )
        log.info("teacher %d DPM-Solver++ steps: %s", steps, results["teacher"][f"dpm++2m-{steps}"])
    skip = set(filter(None, args.skip.split(",")))
    for name, nfe, disback in (("dmd2-1", 1, False), ("dmd2-4", 4, False), ("disback", 1, True)):
        if name not in skip:
            results[name] = bench.distil(teacher, nfe=nfe, disback=disback)
    results["total_seconds"] = time.perf_counter() - total
    out = Path(args.out_dir) / f"generator_bench_{args.preset}.json"
    out.write_text(json.dumps(results, indent=2))
    log.info("wrote %s (%.0f s)", out, results["total_seconds"])
    print_table(results)


if __name__ == "__main__":
    main()
