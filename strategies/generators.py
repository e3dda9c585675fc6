"""Diffusion strategies: the federated teacher (``diffusion-teacher``), ``dmd2`` and ``disback``.

``diffusion-teacher``: FedAvg of the class-conditional diffusion UNet; each client runs
``teacher-steps`` DDPM steps per round (message ``train.teacher``).  At the end the teacher is
cached (``fedmatch.factories.diffusion``) for later generator runs.

``dmd2``: before round 1 the server loads the cached teacher, or trains it here first with
``teacher-rounds`` federated teacher rounds (rows at round 0).  The generator bundle
(generator, fake score, GAN head) starts from the teacher; every round each client runs
DMD2 locally (message ``train.generator``, the frozen teacher sent beside the bundle as
record ``real-score``) and the server averages generator, fake score and head (FedAvg,
weighted by local examples).

``disback``: as dmd2, plus DisBack's degradation recording on the server before round 1
(data-free: it trains a copy of the teacher on samples of the initial generator), the fake
score starting at the most degraded node, and the target sent to the clients moving back
along the recorded path, one stage per ``num-server-rounds / disback-nodes`` rounds, ending
at the teacher.

Server-side evaluation (every round, and round 0 = before training): FID-digits of
``fid-samples`` generated images per domain and pooled, precision/recall, time per image,
and a PNG grid (one row per class) in ``<run-dir>/samples/``.  No client evaluation phase.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp import Grid
from pydantic import Field, model_validator
from torch import nn

from fedmatch.config import RunConfig
from fedmatch.diffusion.disback import BacktrackController, record_degradation
from fedmatch.diffusion.dmd2 import generate
from fedmatch.diffusion.unet import build_unet
from fedmatch.factories.diffusion import (
    GENERATOR_ACTION,
    TARGET_KEY,
    TEACHER_ACTION,
    TEACHER_LR_KEY,
    GeneratorBundle,
    save_teacher,
    teacher_cache_path,
    teacher_round_lr,
)
from fedmatch.factories.diffusion_eval import ALL, Sampler
from fedmatch.params import DiffusionParams, GeneratorParams, ParamsTable
from fedmatch.records import arrays_to_state, state_to_arrays
from fedmatch.results import SERVER, MetricRow, RunRecorder
from fedmatch.seeding import derive_seed
from fedmatch.train import resolve_device
from strategies.base import NodeInfo, ServerEvaluate
from strategies.diffusion import DiffusionStrategy
from strategies.teacher import FederatedTeacher

log = logging.getLogger("fedmatch.strategy")

_DEGRADATION_TAG = 71
# The averaging weight of every teacher reply under teacher-weighting = "uniform".
EQUAL_WEIGHT_KEY = "equal-weight"


class DiffusionTeacherStrategy(DiffusionStrategy):
    """FedAvg of the diffusion teacher; caches it at the end for dmd2/disback runs."""

    name = "diffusion-teacher"
    train_message_type = TEACHER_ACTION

    def __init__(self, cfg: RunConfig, nodes: list[NodeInfo]) -> None:
        super().__init__(cfg, nodes)
        if cfg.params(DiffusionParams).teacher_weighting == "uniform":
            self.weighted_by_key = EQUAL_WEIGHT_KEY  # FedAvg's averaging key

    def valid_replies(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """The base's valid replies; with ``teacher-weighting = "uniform"`` each carries the
        weight 1 under ``EQUAL_WEIGHT_KEY``, set here (a client's own value is overwritten)
        and recorded with the reply's metrics."""
        valid = super().valid_replies(server_round, replies)
        if self.weighted_by_key == EQUAL_WEIGHT_KEY:
            for reply in valid:
                for record in reply.content.metric_records.values():
                    record[EQUAL_WEIGHT_KEY] = 1.0
        return valid

    def initial_model(self, init_seed: int) -> nn.Module:
        return build_unet(self.spec, init_seed)

    def sampler(self, model: nn.Module) -> Sampler:
        return self.teacher_sampler(model)

    def train_config(self, server_round: int) -> dict[str, int | float | str | bool]:
        lr = teacher_round_lr(self.cfg, server_round, self.cfg.num_server_rounds)
        return {TEACHER_LR_KEY: lr}

    def run_rounds(self, grid: Grid, arrays: ArrayRecord, **kwargs: Any) -> ArrayRecord:
        arrays = super().run_rounds(grid, arrays, **kwargs)
        unet = build_unet(self.spec, 0)
        unet.load_state_dict(arrays_to_state(arrays), strict=True)
        path = teacher_cache_path(self.cfg, self.cfg.num_server_rounds, self.num_clients)
        save_teacher(path, unet, self.spec, {"run-dir": self.run_dir})
        log.info(
            "teacher cached at %s (dmd2/disback with teacher-rounds=%d reuse it)",
            path,
            self.cfg.num_server_rounds,
        )
        return arrays


class DMD2Strategy(DiffusionStrategy):
    """Federated DMD2: clients distil the teacher into the bundle; FedAvg of the bundle."""

    name = "dmd2"
    train_message_type = GENERATOR_ACTION

    def __init__(self, cfg: RunConfig, nodes: list[NodeInfo]) -> None:
        super().__init__(cfg, nodes)
        self.teacher: nn.Module | None = None
        self._teacher_record: ArrayRecord | None = None

    def initial_model(self, init_seed: int) -> nn.Module:
        return GeneratorBundle(self.spec, init_seed)

    def sampler(self, model: nn.Module) -> Sampler:
        assert isinstance(model, GeneratorBundle)
        nfe = self.cfg.params(GeneratorParams).nfe
        return lambda labels, rng: generate(model.generator, labels, num_steps=nfe, rng=rng)

    def extra_samplers(self, model: nn.Module) -> dict[str, Sampler]:
        assert isinstance(model, GeneratorBundle)
        if self.cfg.params(GeneratorParams).nfe == 1:
            return {}
        return {
            "-1step": lambda labels, rng: generate(model.generator, labels, num_steps=1, rng=rng)
        }

    # ----------------------------------------------------------- the target score

    def target_state(self, server_round: int) -> dict[str, torch.Tensor]:
        assert self.teacher is not None
        return self.teacher.state_dict()

    def train_payload(self, server_round: int) -> dict[str, ArrayRecord]:
        return {TARGET_KEY: state_to_arrays(self.target_state(server_round))}

    def initial_fake(self) -> dict[str, torch.Tensor] | None:
        return None

    def prepare(self, recorder: RunRecorder) -> None:
        """Server-side work between the teacher and round 1 (DisBack's degradation)."""

    # ----------------------------------------------------------- the round loop

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
        self.teacher = FederatedTeacher(self).obtain(grid, recorder, timeout)
        self.prepare(recorder)
        if first_round == 1:
            bundle = self.initial_model(derive_seed(self.cfg.seed, 0))
            assert isinstance(bundle, GeneratorBundle)
            bundle.init_from(self.teacher, self.initial_fake())
            arrays = state_to_arrays(bundle.state_dict())
        return super().run_rounds(
            grid,
            arrays,
            first_round=first_round,
            recorder=recorder,
            server_evaluate=server_evaluate,
            timeout=timeout,
        )


class DisBackParams(ParamsTable):
    """``[tool.flwr.app.config.disback]``; the generator keys are the ``generator`` table."""

    table: ClassVar[str] = "disback"

    nodes: int = Field(4, ge=1)  # teacher-path nodes kept by the degradation
    """`disback`: snapshots N of the degradation path (targets N−1 … 0 = teacher)"""
    degradation_steps: int = Field(200, ge=1)
    """`disback`: server-side degradation steps (teacher copy trained on the initial generator's
    samples)"""
    # When the target moves back a node: Alg. 1's fixed schedule, or once converged.
    switch: Literal["schedule", "converged"] = "schedule"
    """`disback`: move the target one node back every `num-server-rounds / disback-nodes` rounds
    (Alg. 1), or once the round's mean DM-gradient norm stops improving by 1 % (forced when the
    rounds left equal the nodes left, so the last round distils the teacher)"""
    # The paper's released run spends ~10 % of its iterations on the path (10 nodes x 1,000 of
    # 100K); equal stages spend (N-1)/N of them there.
    path_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """`disback`: share of the rounds whose target is a degraded node, shared equally by nodes
    N−1 … 1, the teacher taking the rest (the released run: about 0.1); 0 = equal stages of
    `num-server-rounds / disback-nodes` rounds (switch = "schedule" only)"""

    @model_validator(mode="after")
    def _steps_per_node(self) -> DisBackParams:
        if self.path_fraction and self.switch == "converged":
            raise ValueError(
                f"disback.path-fraction = {self.path_fraction} needs disback.switch = "
                "'schedule' ('converged' moves the target when the generator stops improving)"
            )
        if self.degradation_steps < self.nodes:
            raise ValueError(
                f"disback.degradation-steps = {self.degradation_steps} is smaller than "
                f"disback.nodes={self.nodes}: one path node is kept every steps/nodes "
                "degradation steps"
            )
        return self


class DisBackStrategy(DMD2Strategy):
    """DMD2 along DisBack's backtracking path (degradation recorded on the server)."""

    name = "disback"

    def __init__(self, cfg: RunConfig, nodes: list[NodeInfo]) -> None:
        super().__init__(cfg, nodes)
        self.path: list[dict[str, torch.Tensor]] | None = None
        params = cfg.params(DisBackParams)
        self.controller = BacktrackController(
            params.nodes, cfg.num_server_rounds, params.switch, path_fraction=params.path_fraction
        )

    def prepare(self, recorder: RunRecorder) -> None:
        if self.path is not None:
            return  # restored from the checkpoint
        assert self.teacher is not None
        start = time.perf_counter()
        generator0 = build_unet(self.spec, 0)
        generator0.load_state_dict(self.teacher.state_dict())  # G_0 = the teacher copy
        self.path, history = record_degradation(
            self.teacher,
            generator0,
            steps=self.cfg.params(DisBackParams).degradation_steps,
            num_nodes=self.cfg.params(DisBackParams).nodes,
            lr=self.cfg.params(DiffusionParams).teacher_lr,
            batch_size=self.cfg.batch_size,
            nfe=self.cfg.params(GeneratorParams).nfe,
            seed=derive_seed(self.cfg.seed, _DEGRADATION_TAG),
            num_classes=self.spec.num_conditions,  # every (class, domain) when conditioned
            device=resolve_device(self.cfg.device),
            cond_dropout=self.cfg.params(DiffusionParams).teacher_cond_dropout,
            null_label=self.spec.null_label,
        )
        recorder.append(
            [
                MetricRow(
                    0, SERVER, ALL, "disback-degradation-seconds", time.perf_counter() - start
                ),
                MetricRow(0, SERVER, ALL, "disback-degradation-loss-first", history.losses[0]),
                MetricRow(0, SERVER, ALL, "disback-degradation-loss-last", history.losses[-1]),
            ]
        )

    def initial_fake(self) -> dict[str, torch.Tensor] | None:
        assert self.path is not None
        return self.path[-1]  # the most degraded node (not a fixed checkpoint: hazard (c))

    def target_index(self, server_round: int) -> int:
        return self.controller.target(server_round)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        norms = [
            r.value
            for r in self.round_rows
            if r.round == server_round and r.metric == "dm-grad-norm" and r.client != SERVER
        ]
        if norms:
            self.controller.observe(server_round, float(np.mean(norms)))
        return arrays, metrics

    def target_state(self, server_round: int) -> dict[str, torch.Tensor]:
        assert self.path is not None
        index = self.target_index(server_round)
        self.record([MetricRow(server_round, SERVER, ALL, "disback-target-node", float(index))])
        return self.path[index]

    def state_dict(self) -> dict:
        if self.path is None:
            return {}
        return {
            "path": [{k: v.numpy() for k, v in node.items()} for node in self.path],
            "controller": self.controller.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if "controller" in state:
            self.controller.load_state_dict(state["controller"])
        if "path" in state:
            self.path = [
                {k: torch.from_numpy(v) for k, v in node.items()} for node in state["path"]
            ]


__all__ = ["DMD2Strategy", "DiffusionTeacherStrategy", "DisBackStrategy"]
