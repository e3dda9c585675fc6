"""Real int8 kernels vs float kernels for the PTQ benchmark's UNet (W8A8, per-tensor activations).

The PTQ benchmark's "ms / image" is fake-quant (float kernels on rounded values).  This script
measures what torch's real int8 CPU kernels (``fedmatch.quant.int8``: quint8 × per-channel
qint8, the ``x86``/``fbgemm`` engine) change: per layer of a calibrated W8A8 naive UNet, the
float Conv2d/Linear kernel against the int8 kernel (input already quint8) and against the int8
kernel with the quantize/dequantize a drop-in layer between float ops pays; then the whole
float UNet forward (so the share the quantizable layers hold is visible), the fake-quant one,
and the whole UNet with the int8 kernels swapped in (``to_int8_unet``).  Latency does not
depend on the weights' values: the UNet is the preset's architecture, randomly initialised
and calibrated on its own DDIM trajectory.

    python benchmarks/int8_latency.py --preset cpu --batch 64 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shlex
import sys
from pathlib import Path

import torch
from generator_bench_args import PRESETS  # benchmarks/ (this script's folder)

from fedmatch.diffusion.unet import UNetSpec, build_unet, parse_channels
from fedmatch.logs import setup_logging
from fedmatch.quant.calibrate import calibrate, trajectory_batches
from fedmatch.quant.int8 import int8_engine, layer_latency, to_int8_unet, unet_forward_ms
from fedmatch.quant.qmodules import QuantSpec, quantize_unet

log = logging.getLogger("fedmatch.bench")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--batch", type=int, default=64, help="images per UNet forward")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--timestep", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "int8_latency.json"))
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    spec = UNetSpec(channels=parse_channels(PRESETS[args.preset]["channels"]))
    unet = build_unet(spec, args.seed).eval()
    labels = torch.arange(args.batch) % spec.num_classes
    batches, _ = trajectory_batches(
        unet, labels[:32], steps=4, generator=torch.Generator().manual_seed(args.seed)
    )
    quantized = quantize_unet(copy.deepcopy(unet), QuantSpec(8, 8, "naive"))
    calibrate(quantized, batches)
    noise = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(args.batch, spec.in_channels, 32, 32, generator=noise)
    log.info("timing every layer, batch %d, %d thread(s)", args.batch, args.threads)
    timings, skipped = layer_latency(quantized, x, args.timestep, labels, args.repeats)
    float_unet_ms = unet_forward_ms(unet, x, args.timestep, labels, args.repeats)
    fake_unet_ms = unet_forward_ms(quantized, x, args.timestep, labels, args.repeats)
    int8_unet, fake_layers = to_int8_unet(quantized, batches)
    int8_unet_ms = unet_forward_ms(int8_unet, x, args.timestep, labels, args.repeats)

    rows = []
    for kind in ("conv", "linear"):
        sel = [t for t in timings if t.kind == kind]
        if sel:
            rows.append(
                {
                    "kind": kind,
                    "layers": len(sel),
                    "float_ms": sum(t.float_ms for t in sel),
                    "int8_ms": sum(t.int8_ms for t in sel),
                    "int8_qdq_ms": sum(t.int8_qdq_ms for t in sel),
                }
            )
    total = {k: sum(r[k] for r in rows) for k in ("float_ms", "int8_ms", "int8_qdq_ms")}
    result = {
        "command": "python " + shlex.join(["benchmarks/int8_latency.py", *(argv or sys.argv[1:])]),
        "engine": int8_engine(),
        "torch": torch.__version__,
        "preset": args.preset,
        "channels": list(spec.channels),
        "batch": args.batch,
        "threads": args.threads,
        "rows": rows,
        "total": total,
        "skipped": skipped,
        "float_unet_ms": float_unet_ms,
        "fake_quant_unet_ms": fake_unet_ms,
        "int8_unet_ms": int8_unet_ms,
        "int8_unet_fake_quant_layers": fake_layers,
        "layers": [t.__dict__ for t in timings],
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(
        f"engine {result['engine']}, torch {result['torch']}, UNet {spec.channels}, "
        f"batch {args.batch}, {args.threads} thread(s); ms per forward (median of "
        f"{args.repeats})"
    )
    print("| layers | count | float kernels | int8 kernels | int8 + quantize/dequantize |")
    print("|---|---|---|---|---|")
    for r in [*rows, {"kind": "all", "layers": len(timings), **total}]:
        print(
            f"| {r['kind']} | {r['layers']} | {r['float_ms']:.2f} | {r['int8_ms']:.2f} "
            f"({r['float_ms'] / r['int8_ms']:.2f}x) | {r['int8_qdq_ms']:.2f} "
            f"({r['float_ms'] / r['int8_qdq_ms']:.2f}x) |"
        )
    print(
        f"whole UNet forward: float {float_unet_ms:.2f} ms (conv/linear kernels "
        f"{100 * total['float_ms'] / float_unet_ms:.0f} % of it), fake-quant W8A8 "
        f"{fake_unet_ms:.2f} ms, int8 kernels {int8_unet_ms:.2f} ms "
        f"({float_unet_ms / int8_unet_ms:.2f}x vs float); layers without int8 kernel: "
        f"{len(skipped)}"
    )


if __name__ == "__main__":
    main()
