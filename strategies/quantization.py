"""``diffusion-ptq``: federated post-training quantization of the diffusion teacher.

Before round 1 the server loads the cached teacher (or trains it federatedly first, exactly as
``dmd2`` does: ``teacher-rounds``, same cache key) and scores the float teacher (round 0).
Each round (one is enough; more rounds recalibrate with fresh seeds) it sends the float
teacher to every sampled client (message ``train.calibrate``); each replies with activation
statistics only (``clients/quantizer.py``).  The server merges them into one quantized model
(``fedmatch.factories.quant.server_quantize``: min-max merge, DGQ groups, EDA-DM's block
reconstruction on data-free trajectories) and scores it: FID-digits per domain with DDIM
``teacher-ddim-steps`` steps, packed model bytes, and seconds per image (fake-quant: the
integer grid is simulated in float, so this latency is **not** an int8 speed-up).
With ``quant-eval-personal`` every client's own statistics also give a personal quantized
model, scored as ``fid-personal`` on the client's row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from pydantic import Field, field_validator
from torch import nn

from fedmatch.data.types import DomainArrays
from fedmatch.diffusion.unet import build_unet
from fedmatch.factories.diffusion_eval import ALL, DiffusionEvaluator
from fedmatch.factories.quant import CALIBRATE_ACTION, server_quantize
from fedmatch.params import ParamsTable
from fedmatch.quant.qmodules import QuantSpec, model_size_bytes, parse_bits
from fedmatch.records import arrays_to_state, state_to_arrays
from fedmatch.results import SERVER, MetricRow, RunRecorder
from fedmatch.seeding import derive_seed
from strategies.base import ServerEvaluate
from strategies.diffusion import DiffusionStrategy, sample_grid_path
from strategies.teacher import FederatedTeacher

log = logging.getLogger("fedmatch.strategy")

_SERVER_TAG = 83


class QuantParams(ParamsTable):
    """``[tool.flwr.app.config.quant]``: post-training quantization of the teacher."""

    table: ClassVar[str] = "quant"

    bits: str = "W8A8"  # W<weight bits>A<activation bits>, 2..8 each
    """`diffusion-ptq`: weight / activation bit-widths (first and last conv stay 8-bit)"""
    method: Literal["naive", "edadm", "dgq"] = "naive"
    """`diffusion-ptq`: min-max baseline; EDA-DM (TDAC sample selection + block reconstruction);
    DGQ (outlier-aware activation groups)"""
    # The ablation that separates the shared clipping search from each method's own part.
    weight_clipping: Literal["method", "minmax", "mse"] = "method"
    """`diffusion-ptq`: weight scales per output channel: `method` = each paper's choice (min-max
    for naive, the MSE clipping search for EDA-DM and DGQ), `minmax` = max|w|, `mse` = the clipping
    ratio in [0.5, 1] of max|w| with the least squared weight error; set it to compare methods
    on the same weights (naive + `mse` is the clipping search alone)"""
    groups: int = Field(8, ge=1)  # DGQ: activation groups per layer (1 = per-tensor)
    """`dgq`: activation groups per layer (k-means over channels or pixels; 1 = per-tensor)"""
    per_timestep: bool = True  # one activation range per sampling step
    """`diffusion-ptq`: one activation range per sampling step (time-aware) instead of one for all
    steps"""
    calibration_source: Literal["local", "trajectory"] = "local"
    """`diffusion-ptq`: calibrate on the client's own images noised to the sampler's timesteps, or
    on the teacher's sampler trajectories for the client's labels"""
    calibration_samples: int = Field(256, ge=1)  # per client, over all timesteps
    """`diffusion-ptq`: calibration inputs per client, spread over the `teacher-ddim-steps`
    timesteps"""
    recon_iters: int = Field(100, ge=0)  # EDA-DM: FBR iterations per block (0 = off)
    """`edadm`: block-reconstruction iterations per block on the server (0 = off)"""
    tdac_lambda: float = Field(1.2, ge=0, le=1e3)  # EDA-DM: TDAC diversity weight lambda
    """`edadm`: TDAC diversity weight λ"""
    eval_personal: bool = False  # also score each client's own (personal) quantization
    """`diffusion-ptq`: also score each client's personal quantization (its own statistics only) as
    `fid-personal`"""

    @field_validator("bits")
    @classmethod
    def _bits(cls, value: str) -> str:
        w, a = parse_bits(value)
        QuantSpec(weight_bits=w, act_bits=a).validate()
        return value


class DiffusionPTQStrategy(DiffusionStrategy):
    """Federated calibration of the teacher's fake-quantized UNet (naive, EDA-DM, DGQ)."""

    name = "diffusion-ptq"
    train_message_type = CALIBRATE_ACTION

    def initial_model(self, init_seed: int) -> nn.Module:
        return build_unet(self.spec, init_seed)

    def sampler(self, model: nn.Module):
        return self.teacher_sampler(model)

    def make_server_evaluate(
        self, domains: list[DomainArrays], model: nn.Module
    ) -> ServerEvaluate | None:
        self.evaluator = DiffusionEvaluator(self.cfg, domains)
        return None  # the rounds score the models themselves (run_rounds)

    def _score(self, model: nn.Module, server_round: int, client: Any, domain: str, prefix: str):
        evaluator = getattr(self, "evaluator", None)
        if evaluator is None:
            return []
        grid_path = sample_grid_path(self.run_dir, server_round) if not prefix else None
        score = evaluator.score(self.sampler(model), server_round, grid_path)
        if prefix:  # a personal model: its own domain only
            value = score.fid.get(domain, score.fid[evaluator.all_key])
            return [MetricRow(server_round, client, domain, f"fid{prefix}", value)]
        rows = [MetricRow(server_round, SERVER, d, "fid", v) for d, v in score.fid.items()]
        for metric, value in (
            ("precision", score.precision),
            ("recall", score.recall),
            ("seconds-per-image", score.seconds_per_image),
        ):
            rows.append(MetricRow(server_round, SERVER, evaluator.all_key, metric, value))
        self.last_fid = dict(score.fid)
        return rows

    def run_rounds(
        self,
        grid: Grid,
        arrays: ArrayRecord,
        *,
        first_round: int,
        recorder: RunRecorder,
        server_evaluate: ServerEvaluate | None,
        timeout: float | None = None,
    ) -> ArrayRecord:
        timeout = self.cfg.round_timeout if timeout is None else timeout
        self.run_dir = str(recorder.run_dir)
        teacher = FederatedTeacher(self).obtain(grid, recorder, timeout).eval()
        arrays = state_to_arrays(teacher.state_dict())
        if first_round == 1:
            size = model_size_bytes(teacher)  # no quantized layers: every weight fp32
            rows = self._score(teacher, 0, SERVER, ALL, "")
            rows.append(MetricRow(0, SERVER, ALL, "model-bytes", float(size["fp32"])))
            recorder.append(rows)
        for server_round in range(first_round, self.cfg.num_server_rounds + 1):
            self.take_rows()
            nodes = self.sample(self.fraction_train, server_round, purpose=0)
            config = ConfigRecord({"server-round": server_round, "run-dir": self.run_dir})
            messages = self.build_messages(arrays, config, nodes, CALIBRATE_ACTION)
            replies = self.valid_replies(
                server_round, self.exchange(grid, messages, server_round, timeout)
            )
            if not replies:
                raise RuntimeError(f"round {server_round}: no client returned statistics")
            for reply in replies:
                self.record_reply(server_round, reply, with_bytes=True)
            stats = [arrays_to_state(r.content["arrays"]) for r in replies]
            weights = [float(r.content["metrics"]["num-examples"]) for r in replies]
            quantized, info = server_quantize(
                self.cfg,
                teacher,
                stats,
                weights,
                derive_seed(self.cfg.seed, server_round, _SERVER_TAG),
            )
            rows = self.take_rows()
            rows += [MetricRow(server_round, SERVER, ALL, k, v) for k, v in info.items()]
            size = model_size_bytes(quantized)
            rows.append(
                MetricRow(server_round, SERVER, ALL, "model-bytes", float(size["quantized"]))
            )
            rows.append(
                MetricRow(server_round, SERVER, ALL, "model-bytes-fp32", float(size["fp32"]))
            )
            rows.append(
                MetricRow(
                    server_round,
                    SERVER,
                    ALL,
                    "activation-range-bytes",
                    float(size["activation_ranges"]),
                )
            )
            rows += self._score(quantized, server_round, SERVER, ALL, "")
            if self.cfg.params(QuantParams).eval_personal:
                for reply, s in zip(replies, stats, strict=True):
                    node = self.nodes_by_id[reply.metadata.src_node_id]
                    personal, _ = server_quantize(
                        self.cfg.replace({"quant.recon-iters": 0}), teacher, [s], [1.0], 0
                    )
                    rows += self._score(
                        personal, server_round, node.partition_id, node.domain, "-personal"
                    )
            recorder.append(rows)
            recorder.save_checkpoint(server_round, _numpy(arrays), self.state_dict())
            if self.run_dir:
                # what the clients sent, for later analysis (statistics only)
                torch.save(stats, f"{self.run_dir}/calibration-stats-round-{server_round:03d}.pt")
            log.info(
                "round %d: %s %s from %d clients, FID-digits %s",
                server_round,
                self.cfg.params(QuantParams).method,
                self.cfg.params(QuantParams).bits,
                len(replies),
                {k: round(v, 2) for k, v in self.last_fid.items()},
            )
        return arrays

    def configure_train(self, server_round, arrays, config, grid) -> Iterable[Message]:
        raise NotImplementedError  # run_rounds sends the calibration messages itself


def _numpy(arrays: ArrayRecord):
    from fedmatch.records import arrays_to_numpy

    return arrays_to_numpy(arrays)


__all__ = ["DiffusionPTQStrategy"]
