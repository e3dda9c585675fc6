"""FedLGD (Huang, Jin, Zhao, Xu & Li, TMLR 2024): local virtual data by DM, global virtual data by
federated gradient matching (strategy ``fedlgd``; client side in ``clients/fedlgd.py``, the math
in ``fedmatch.distill.fedlgd``).

Schedule, with t = server round − 1 (the official code's 0-based round):

- before round 1, the server asks every client for its per-class, per-channel image statistics
  (``query.class_stats``) and initialises ``fedlgd-server-ipc`` global virtual images per class
  from the pooled statistics;
- every round, the sampled clients get the current global model and the global virtual images,
  and train one local pass on their local ∪ global virtual data;
- *refresh rounds* are those with t % ``fedlgd-refresh-every`` == 0 and t ≤
  ``fedlgd-refresh-until`` (the code's 0, 5, …, 50).  In them the clients first refresh their
  local virtual data by DM in the global model's features (not in round 1, which follows the
  warm-up), train with cross-entropy only, and after FedAvg the server updates the global
  virtual images by gradient matching (``fedlgd-server-steps`` steps) against the
  pseudo-gradient (θ_old − θ_new)/lr, or, with ``fedlgd-gm-target='client-gradients'``, against
  the per-class gradients of the clients' local virtual data at θ_old (an extra upload);
- in the other rounds local training adds λ · L_reg (``fedlgd-regulariser``: SupCon, MMD or
  nothing) against the global virtual images' features.

Departures from the official code (docs/methods/fedlgd.md): sampled clients always start from the
current global model (the code lets unsampled clients keep stale models and train from them
later); aggregation weighs clients by their training-set size (equal whenever every client
holds every class, as in the paper's setting); the server's initial statistics are the pooled
moments of all clients' images, not the average of their means and standard deviations.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from typing import ClassVar, Literal

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from pydantic import Field

from fedmatch.data.types import IMAGE_SHAPE, NUM_CLASSES
from fedmatch.distill.fedlgd import match_global_virtual, pseudo_gradient
from fedmatch.distill.fedlgd_wire import (
    CLASS_GRADS_FLAG,
    CLASS_GRADS_KEY,
    GLOBAL_VIRTUAL_KEY,
    REFRESH_FLAG,
    REGULARISE_FLAG,
    STATS_KEY,
    STATS_MESSAGE_TYPE,
    class_grads_from_record,
    stats_from_record,
    virtual_images_dir,
)
from fedmatch.distill.stats import pool_class_stats, sample_from_stats
from fedmatch.distill.wire import synthetic_record
from fedmatch.factories.models import model_from_config
from fedmatch.images import save_class_grid
from fedmatch.params import ParamsTable
from fedmatch.records import arrays_nbytes, arrays_to_state
from fedmatch.results import SERVER, MetricRow
from fedmatch.seeding import derive_seed
from fedmatch.train import resolve_device
from strategies.base import FedMatchStrategy

log = logging.getLogger("fedmatch.strategy")

_INIT_TAG = 61  # seed stream of the global virtual images' initial noise


class FedLGDParams(ParamsTable):
    """``[tool.flwr.app.config.fedlgd]``: the server's global virtual data and its schedule.

    Local IPC, the DM warm-up and its init are ``distill.ipc``/``steps``/``virtual-init``;
    local training is ``lr``/``batch-size``.  Defaults: the CPU schedule
    (``presets/fedlgd-paper.toml`` holds the paper's).
    """

    table: ClassVar[str] = "fedlgd"

    refresh_every: int = Field(5, ge=1)  # local virtual data refreshed every this many rounds
    """FedLGD: refresh period; round r is a refresh round when (r − 1) % every = 0 and r − 1 ≤
    `fedlgd-refresh-until`"""
    refresh_until: int = Field(10, ge=0)  # ... up to this round
    """FedLGD: last refresh round (as r − 1; the paper's 50 of 100 rounds)"""
    local_steps: int = Field(50, ge=0)  # DM steps of a refresh
    """FedLGD: DM steps of a client's local refresh in the global model's features (paper 100)"""
    server_steps: int = Field(100, ge=0)  # gradient-matching steps of the server per round
    """FedLGD: server gradient-matching steps per refresh round (paper 500)"""
    server_ipc: int = Field(10, ge=1)  # global virtual images per class
    """FedLGD: global virtual images per class"""
    image_lr: float = Field(1.0, gt=0, le=1e4)
    """FedLGD: SGD learning rate (momentum 0.5) of the server's gradient matching on pixels"""
    regulariser: Literal["supcon", "mmd", "none"] = "supcon"
    """FedLGD: L_reg of non-refresh rounds: SupCon against the global virtual features, MK-MMD, or
    none (the ablation)"""
    lambda_: float = Field(10.0, ge=0, le=1e4)  # weight of the regulariser (Eq. 8)
    """FedLGD: weight λ of L_reg (the official DIGITS command; code default 1)"""
    temperature: float = Field(0.07, gt=0, le=1e3)
    """FedLGD: SupCon temperature τ"""
    gm_target: Literal["pseudo-gradient", "client-gradients"] = "pseudo-gradient"
    """FedLGD: match (θ_old − θ_new)/lr of the aggregated model (TMLR code; nothing extra uploaded)
    or the mean per-class gradients of the clients' local virtual data at θ_old (pre-release
    code; one extra model-sized upload per class)"""
    gm_distance: Literal["ours", "mse", "cos"] = "ours"
    """FedLGD: gradient distance (DC's layer-wise Σ(1 − cos), summed squares, one global cosine)"""
    save_images: bool = False
    """FedLGD: write PNG grids (one row per class) of the global virtual images and every client's
    local virtual images at initialisation and each refresh to `<run dir>/virtual-images/`"""


class FedLGDStrategy(FedMatchStrategy):
    """FedAvg plus the server's global virtual data, initialised from statistics and updated by
    gradient matching in refresh rounds."""

    name = "fedlgd"

    def __init__(self, cfg, nodes) -> None:
        super().__init__(cfg, nodes)
        self.global_images: torch.Tensor | None = None
        self.global_labels: torch.Tensor | None = None

    # ------------------------------------------------------------ schedule

    def is_refresh_round(self, server_round: int) -> bool:
        t = server_round - 1
        return (
            t % self.cfg.params(FedLGDParams).refresh_every == 0
            and t <= self.cfg.params(FedLGDParams).refresh_until
        )

    def train_config(self, server_round: int) -> dict[str, int | float | str | bool]:
        refresh = self.is_refresh_round(server_round)
        return {
            # Round 1's local data was just warmed up: nothing to refresh yet.
            REFRESH_FLAG: refresh and server_round > 1,
            REGULARISE_FLAG: not refresh,
            CLASS_GRADS_FLAG: refresh
            and self.cfg.params(FedLGDParams).gm_target == "client-gradients",
        }

    def train_payload(self, server_round: int) -> dict[str, ArrayRecord]:
        assert self.global_images is not None and self.global_labels is not None
        return {GLOBAL_VIRTUAL_KEY: synthetic_record(self.global_images, self.global_labels)}

    # ------------------------------------------------------------ state (checkpoints)

    def state_dict(self) -> dict:
        if self.global_images is None:
            return {}
        return {"global-images": self.global_images, "global-labels": self.global_labels}

    def load_state_dict(self, state: dict) -> None:
        if "global-images" in state:
            self.global_images = state["global-images"]
            self.global_labels = state["global-labels"]

    # ------------------------------------------------------------ initialisation

    def _initialise(self, grid: Grid, server_round: int) -> None:
        """Global virtual images from the pooled per-class statistics of every client."""
        messages = [
            Message(
                RecordDict({"config": ConfigRecord({"server-round": server_round})}),
                message_type=STATS_MESSAGE_TYPE,
                dst_node_id=node.node_id,
            )
            for node in self.nodes
        ]
        replies = self.exchange(grid, messages, server_round, self.cfg.round_timeout)
        parts = []
        for reply in self.valid_replies(server_round, replies):
            node = self.nodes_by_id[reply.metadata.src_node_id]
            record = reply.content.array_records.get(STATS_KEY)
            if record is None:
                raise RuntimeError(
                    f"client {node.partition_id} replied to {STATS_MESSAGE_TYPE} without its "
                    f"statistics (record {STATS_KEY!r})"
                )
            parts.append(stats_from_record(record))
        if not parts:
            raise RuntimeError("no client sent its class statistics: cannot initialise FedLGD")
        pooled = pool_class_stats(parts)
        classes = [c for c in range(NUM_CLASSES) if int(pooled.counts[c]) > 0]
        generator = torch.Generator().manual_seed(derive_seed(self.cfg.seed, _INIT_TAG))
        self.global_images, self.global_labels = sample_from_stats(
            pooled, classes, self.cfg.params(FedLGDParams).server_ipc, IMAGE_SHAPE[1:], generator
        )
        log.info(
            "FedLGD: %d global virtual images (%d classes) from the statistics of %d clients",
            len(self.global_labels),
            len(classes),
            len(parts),
        )
        self._save_images(0)

    def _save_images(self, server_round: int) -> None:
        if not (self.cfg.params(FedLGDParams).save_images and self.run_dir):
            return
        assert self.global_images is not None and self.global_labels is not None
        save_class_grid(
            self.global_images,
            self.global_labels,
            virtual_images_dir(self.run_dir) / f"server-round-{server_round}.png",
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.global_images is None:
            self._initialise(grid, server_round)
        return super().configure_train(server_round, arrays, config, grid)

    # ------------------------------------------------------------ aggregation + matching

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        old = self.current_arrays
        # Flower's FedAvg averages replies that carry exactly one ArrayRecord: take the
        # per-class gradients out first (their bytes still count as uploaded).
        class_grads = self._take_class_grads(replies)
        aggregated, metrics = super().aggregate_train(server_round, replies)
        self._count_upload(server_round, class_grads)
        if aggregated is None or old is None or not self.is_refresh_round(server_round):
            return aggregated, metrics
        if self.cfg.params(FedLGDParams).server_steps > 0:
            self._match(server_round, old, aggregated, class_grads)
        return aggregated, metrics

    def _take_class_grads(self, replies: list[Message]) -> dict[int, ArrayRecord]:
        out = {}
        for reply in replies:
            if not reply.has_error() and CLASS_GRADS_KEY in reply.content.array_records:
                out[reply.metadata.src_node_id] = reply.content.array_records[CLASS_GRADS_KEY]
                del reply.content[CLASS_GRADS_KEY]
        return out

    def _count_upload(self, server_round: int, class_grads: dict[int, ArrayRecord]) -> None:
        extra = {
            self.nodes_by_id[node_id].partition_id: arrays_nbytes(record)
            for node_id, record in class_grads.items()
        }
        self.revise_rows(
            lambda row: (
                dataclasses.replace(row, value=row.value + extra[row.client])
                if row.metric == "bytes-up" and row.client in extra
                else row
            )
        )

    def _match(
        self,
        server_round: int,
        old: ArrayRecord,
        new: ArrayRecord,
        class_grads: dict[int, ArrayRecord],
    ) -> None:
        assert self.global_images is not None and self.global_labels is not None
        device = resolve_device(self.cfg.device)
        model = model_from_config(self.cfg)
        old_state = arrays_to_state(old)
        model.load_state_dict(old_state)
        model.to(device)
        if self.cfg.params(FedLGDParams).gm_target == "pseudo-gradient":
            target = pseudo_gradient(model, old_state, arrays_to_state(new), self.cfg.lr)
        else:
            target = self._mean_class_gradients(server_round, class_grads)
        start = time.perf_counter()
        self.global_images, history = match_global_virtual(
            model,
            self.global_images,
            self.global_labels,
            target,
            steps=self.cfg.params(FedLGDParams).server_steps,
            lr=self.cfg.params(FedLGDParams).image_lr,
            metric=self.cfg.params(FedLGDParams).gm_distance,
            device=device,
        )
        seconds = time.perf_counter() - start
        log.info(
            "round %d: gradient matching on %d global virtual images, %d steps, %.1f s, "
            "distance %.4f -> %.4f",
            server_round,
            len(self.global_labels),
            self.cfg.params(FedLGDParams).server_steps,
            seconds,
            history.initial_loss,
            history.final_loss,
        )
        for metric, value in (
            ("fedlgd-gm-initial-distance", history.initial_loss),
            ("fedlgd-gm-final-distance", history.final_loss),
            ("fedlgd-gm-seconds", seconds),
        ):
            self.record([MetricRow(server_round, SERVER, "all", metric, value)])
        self._save_images(server_round)

    def _mean_class_gradients(
        self, server_round: int, class_grads: dict[int, ArrayRecord]
    ) -> dict[int, list[torch.Tensor]]:
        """Per class: the mean of the gradients of the clients that hold it (weights 1/N_c)."""
        if not class_grads:
            raise RuntimeError(
                f"round {server_round}: no client sent per-class gradients (record "
                f"{CLASS_GRADS_KEY!r}) for fedlgd-gm-target='client-gradients'"
            )
        sums: dict[int, list[torch.Tensor]] = {}
        counts: dict[int, int] = {}
        for node_id in sorted(class_grads, key=lambda n: self.nodes_by_id[n].partition_id):
            for c, grads in class_grads_from_record(class_grads[node_id]).items():
                if c in sums:
                    sums[c] = [a + b for a, b in zip(sums[c], grads, strict=True)]
                else:
                    sums[c] = [g.clone() for g in grads]
                counts[c] = counts.get(c, 0) + 1
        return {c: [g / counts[c] for g in grads] for c, grads in sums.items()}
