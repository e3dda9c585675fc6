"""The diffusion teacher a method distils or quantizes, as a helper the strategy holds.

DMD2, DisBack and diffusion-ptq all start from the same federated DDPM teacher: the one
cached for this data, UNet and number of clients (trained by ``diffusion-teacher`` or an
earlier run), a checkpoint the user names, or, if there is none, one trained here first
with FedAvg for ``diffusion.teacher-rounds`` rounds (``train.teacher`` messages).  The
strategies compose this helper rather than inherit it.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from torch import nn

from fedmatch.diffusion.unet import build_unet
from fedmatch.factories.diffusion import (
    TEACHER_ACTION,
    TEACHER_LR_KEY,
    load_teacher,
    save_teacher,
    teacher_cache_path,
    teacher_round_lr,
    unet_spec,
)
from fedmatch.factories.diffusion_eval import ALL
from fedmatch.params import DiffusionParams
from fedmatch.records import arrays_to_state, state_to_arrays
from fedmatch.results import SERVER, MetricRow, RunRecorder
from fedmatch.seeding import derive_seed
from strategies.base import FedMatchStrategy

log = logging.getLogger("fedmatch.strategy")


class FederatedTeacher:
    """Obtains the teacher through ``strategy``'s public round API (sample, exchange, ...)."""

    def __init__(self, strategy: FedMatchStrategy) -> None:
        self.strategy = strategy
        self.spec = unet_spec(strategy.cfg)

    def obtain(self, grid: Grid, recorder: RunRecorder, timeout: float) -> nn.Module:
        """The cached teacher of this data and UNet, or one trained federatedly now (cached)."""
        cfg = self.strategy.cfg
        params = cfg.params(DiffusionParams)
        path = teacher_cache_path(cfg, params.teacher_rounds, len(self.strategy.nodes))
        if path.exists():
            log.info("teacher: %s", path)
            return load_teacher(path, self.spec)
        if params.teacher_checkpoint:
            raise FileNotFoundError(
                f"run-config key 'diffusion.teacher-checkpoint' = {params.teacher_checkpoint!r}: "
                "no such file (leave it empty to use, or train, the cached teacher)"
            )
        log.info(
            "no cached teacher (%s): training it first, %d federated rounds",
            path.name,
            params.teacher_rounds,
        )
        unet = build_unet(self.spec, derive_seed(cfg.seed, 0))
        arrays = state_to_arrays(unet.state_dict())
        start = time.perf_counter()
        losses: list[float] = []
        for teacher_round in range(1, params.teacher_rounds + 1):
            arrays, losses = self._round(grid, arrays, teacher_round, timeout)
            log.info(
                "teacher round %d/%d: loss %.4f",
                teacher_round,
                params.teacher_rounds,
                float(np.mean(losses)) if losses else float("nan"),
            )
        seconds = time.perf_counter() - start
        unet.load_state_dict(arrays_to_state(arrays), strict=True)
        save_teacher(path, unet, self.spec, {"run-dir": self.strategy.run_dir})
        recorder.append(
            [
                MetricRow(0, SERVER, ALL, "teacher-rounds", float(params.teacher_rounds)),
                MetricRow(0, SERVER, ALL, "teacher-seconds", seconds),
                MetricRow(0, SERVER, ALL, "teacher-loss", float(np.mean(losses))),
            ]
        )
        log.info("teacher cached at %s", path)
        return unet.eval()

    def _round(
        self, grid: Grid, arrays: ArrayRecord, teacher_round: int, timeout: float
    ) -> tuple[ArrayRecord, list[float]]:
        rounds = self.strategy.cfg.params(DiffusionParams).teacher_rounds
        config = ConfigRecord(
            {
                "server-round": teacher_round,
                "run-dir": self.strategy.run_dir,
                TEACHER_LR_KEY: teacher_round_lr(self.strategy.cfg, teacher_round, rounds),
            }
        )
        strategy = self.strategy
        messages = [
            Message(
                RecordDict({"arrays": arrays, "config": config}),
                message_type=TEACHER_ACTION,
                dst_node_id=node.node_id,
            )
            # Sampled as the base round loop samples (so fraction-train means the same).
            for node in strategy.sample(strategy.fraction_train, teacher_round, purpose=0)
        ]
        self.strategy.take_rows()  # the teacher phase records its own rows
        replies = self.strategy.valid_replies(
            teacher_round, self.strategy.exchange(grid, messages, teacher_round, timeout)
        )
        if not replies:
            raise RuntimeError(f"teacher round {teacher_round}: no client returned the teacher")
        if self.strategy.cfg.params(DiffusionParams).teacher_weighting == "uniform":
            weights = [1.0] * len(replies)
        else:
            weights = [float(r.content["metrics"]["num-examples"]) for r in replies]
        states = [arrays_to_state(r.content["arrays"]) for r in replies]
        total = sum(weights)
        averaged = {
            k: sum(w * s[k].double() for w, s in zip(weights, states, strict=True)) / total
            for k in states[0]
        }
        reference = arrays_to_state(arrays)
        merged = {k: v.to(reference[k].dtype) for k, v in averaged.items()}
        losses = [float(r.content["metrics"]["teacher-loss"]) for r in replies]
        return state_to_arrays(merged), losses
