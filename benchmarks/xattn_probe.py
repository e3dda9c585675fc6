"""Probe of DGQ's cross-attention quantization: which probability quantizer costs what.

A small cross-attention teacher (``unet-cross-attention``) is trained centrally on the pooled
embedded domains (tiny: ``--train-steps``, cached in ``--out-dir``), then fake-quantized with
DGQ (``quantize_unet``: weights W8, activations per group, Q/K/V uniform) at W8A8 / W8A6 / W8A4,
with only the cross-attention **probability** quantizer varied:

- ``float``: probabilities not quantized (the floor of the rest of the model's error);
- ``uniform``: a calibrated uniform quantizer (the naive baseline's);
- ``log2-batch``: log2 with one dynamic max for the whole batch (DGQ as released);
- ``log2-sample``: log2 with a max per sample (ours, the default for ``quant-method=dgq``);
- ``log2-sample-noBOS``: as ``log2-sample`` but the BOS key and column quantized too.

Calibration: the pooled images noised to the 10 DDIM timesteps (``--calibration-samples``).
Metrics vs the FP32 teacher: relative MSE of the UNet output on held-out noised images at the
same timesteps (mixed-class batches), of DDIM-10 samples from the same noise, and of the output
with **only** the cross-attention quantized (weights and every other activation float), which
isolates the attention quantizers' own error.

    python benchmarks/xattn_probe.py --out-dir /tmp/xattn
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import torch

from fedmatch.config import RunConfig
from fedmatch.data.loaders import load_domains, to_images
from fedmatch.diffusion.teacher import ddim_sample, train_denoiser
from fedmatch.diffusion.unet import UNetSpec, build_unet
from fedmatch.logs import setup_logging
from fedmatch.quant.attention import QuantCrossAttnProcessor
from fedmatch.quant.calibrate import calibrate, local_batches
from fedmatch.quant.qmodules import QuantSpec, quantize_unet, set_quant_state
from fedmatch.quant.quantizers import ActQuantizer, LogQuantizer

log = logging.getLogger("fedmatch.bench")
VARIANTS = ("float", "uniform", "log2-batch", "log2-sample", "log2-sample-noBOS")


def set_probability_quantizer(unet: torch.nn.Module, variant: str, bits: int) -> None:
    """Swap every cross-attention processor's probability quantizer for ``variant``."""
    for m in unet.modules():
        if not isinstance(m, QuantCrossAttnProcessor):
            continue
        m.dgq = variant != "uniform" and variant != "log2-sample-noBOS"
        if variant == "uniform":
            m.probs = ActQuantizer(bits)
            m.probs.calibrating = True
        else:
            m.probs = LogQuantizer(bits, per_sample=variant != "log2-batch")
            m.probs.enabled = variant != "float"


def relative_mse(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).pow(2).mean() / ref.pow(2).mean())


@torch.no_grad()
def output_error(unet, teacher, batches) -> float:
    num = den = 0.0
    for b in batches:
        t = torch.full((len(b.labels),), b.t)
        ref = teacher(b.x, t, class_labels=b.labels).sample
        num += float((unet(b.x, t, class_labels=b.labels).sample - ref).pow(2).sum())
        den += float(ref.pow(2).sum())
    return num / den


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", default="~/.cache/fedmatch")
    parser.add_argument("--out-dir", default=str(Path(__file__).parent))
    parser.add_argument("--channels", default="16,32")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--bits", default="W8A8,W8A6,W8A4")
    parser.add_argument("--calibration-samples", type=int, default=16, help="per timestep")
    parser.add_argument("--eval-samples", type=int, default=32, help="per timestep")
    parser.add_argument("--ddim-samples", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cfg = RunConfig(cache_dir=str(Path(args.cache_dir).expanduser()))
    domains = load_domains(cfg)
    images = torch.cat([to_images(d.x_train) for d in domains])
    labels = torch.cat([torch.from_numpy(d.y_train) for d in domains])
    spec = UNetSpec(channels=tuple(int(c) for c in args.channels.split(",")), cross_attention=True)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"xattn_teacher_{args.channels.replace(',', '-')}_{args.train_steps}.pt"
    teacher = build_unet(spec, 0)
    if path.exists():
        teacher.load_state_dict(torch.load(path, weights_only=True))
    else:
        history = train_denoiser(
            teacher,
            images,
            labels,
            steps=args.train_steps,
            lr=2e-3,
            batch_size=32,
            seed=0,
            device=torch.device("cpu"),
        )
        log.info(
            "teacher: %d steps, %.0f s, last loss %.4f",
            history.steps,
            history.seconds,
            history.mean_loss(last=20),
        )
        torch.save(teacher.state_dict(), path)
    teacher.eval()
    calib = local_batches(
        images,
        labels,
        steps=10,
        per_step=args.calibration_samples,
        generator=torch.Generator().manual_seed(1),
    )
    held_out = local_batches(
        images,
        labels,
        steps=10,
        per_step=args.eval_samples,
        generator=torch.Generator().manual_seed(2),
    )
    ddim_labels = torch.arange(args.ddim_samples) % 10

    def samples(model):
        return ddim_sample(model, ddim_labels, steps=10, generator=torch.Generator().manual_seed(3))

    ref_samples = samples(teacher)
    rows = []
    for bits in args.bits.split(","):
        w, a = (int(v) for v in bits[1:].split("A"))
        for variant in VARIANTS:
            q = quantize_unet(
                copy.deepcopy(teacher), QuantSpec(w, a, "dgq", groups=8, weight_init="mse")
            )
            set_probability_quantizer(q, variant, a)
            calibrate(q, calib)
            row = {
                "bits": bits,
                "variant": variant,
                "output_rel_mse": output_error(q, teacher, held_out),
                "ddim_rel_mse": relative_mse(samples(q), ref_samples),
            }
            set_quant_state(q, weights=False, acts=False)
            for m in q.modules():  # only the cross-attention quantizers back on
                if isinstance(m, QuantCrossAttnProcessor):
                    for _, aq in m.calibrated():
                        aq.enabled = True
                    m.probs.enabled = variant != "float"
            row["attention_only_rel_mse"] = output_error(q, teacher, held_out)
            rows.append(row)
            log.info("%s", row)
    result = {
        "command": "python " + shlex.join(sys.argv),
        "args": vars(args),
        "rows": rows,
        "seconds": time.perf_counter() - start,
    }
    (out_dir / "xattn_probe.json").write_text(json.dumps(result, indent=2))
    lines = [
        "| bits | probabilities | output rel. MSE | DDIM-10 rel. MSE | attention only |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['bits']} | {r['variant']} | {r['output_rel_mse']:.2e} | {r['ddim_rel_mse']:.2e} "
        f"| {r['attention_only_rel_mse']:.2e} |"
        for r in rows
    ]
    log.info("\n%s", "\n".join(lines))


if __name__ == "__main__":
    main()
