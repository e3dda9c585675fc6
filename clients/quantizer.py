"""The federated calibration workload (``train.calibrate``) of post-training quantization.

The client receives the float teacher UNet, quantizes a copy with the run's ``quant-*``
settings, calibrates it on its own domain (``fedmatch.factories.quant.client_calibration``:
its images noised to the sampler's timesteps, or teacher trajectories for its labels) and
replies with **statistics only**: per-layer, per-timestep activation minima/maxima (per channel
and per pixel for DGQ) and, for EDA-DM, its TDAC weights over the timesteps.  No image, label
or latent leaves the client; the server merges the statistics into one quantized model.
"""

from __future__ import annotations

import logging
import time

from flwr.app import Context, Message, MetricRecord

from clients.job import ClientJob
from fedmatch.diffusion.unet import build_unet
from fedmatch.factories.diffusion import unet_spec
from fedmatch.factories.quant import client_calibration
from fedmatch.records import arrays_to_state, state_to_arrays
from fedmatch.seeding import derive_seed
from strategies.quantization import QuantParams

log = logging.getLogger("fedmatch.client")

_CALIBRATE_TAG = 81


def handle_calibrate(msg: Message, context: Context) -> Message:
    job = ClientJob.receive(msg, context)
    cfg, data, partition_id, server_round = job.cfg, job.data, job.partition_id, job.server_round
    teacher = build_unet(unet_spec(cfg), 0)
    teacher.load_state_dict(arrays_to_state(msg.content["arrays"]), strict=True)
    images, labels = data.train.tensors
    start = time.perf_counter()
    stats, metrics = client_calibration(
        cfg,
        teacher,
        images,
        labels,
        seed=derive_seed(cfg.seed, server_round, partition_id, _CALIBRATE_TAG),
    )
    seconds = time.perf_counter() - start
    log.info(
        "client %d (%s): %s %s calibration, %d samples, %d statistics, %.1f s",
        partition_id,
        data.domain,
        cfg.params(QuantParams).method,
        cfg.params(QuantParams).bits,
        int(metrics["calibration-samples"]),
        len(stats),
        seconds,
    )
    record = MetricRecord(
        {
            "num-examples": len(labels),
            **metrics,
            "calibration-seconds": seconds,
            "partition-id": partition_id,
        }
    )
    return job.reply({"arrays": state_to_arrays(stats), "metrics": record})
