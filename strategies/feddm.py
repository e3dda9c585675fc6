"""One-shot federated learning from distilled data (strategy ``feddm``).

Round 1: every sampled client distils its local data (message ``train.distill``, DM or NCFM,
``ipc`` images per class) and sends its synthetic set back, once.  The server trains the global
model on the union of the sets with the synthetic-set evaluation protocol
(``fedmatch.distill.evaluate``: SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256,
``eval-epochs`` epochs with lr × 0.1 at half, DSA on every batch), starting from the run's
seeded initial model; the model is then evaluated per domain like every other strategy
(server-side on each domain's test split, client-side on each client's test split).

Rounds 2..num-server-rounds (optional) are plain FedAvg rounds on the clients' real data,
starting from the model trained on the synthetic union: "distil once, then fine-tune".  With
``num-server-rounds=1`` the run is purely one-shot, with one upload per client.

This is the one-shot baseline of distilled-data FL (e.g. Zhou et al., "Distilled One-Shot
Federated Learning", 2020, with DM/NCFM as the distiller), not the iterative FedDM algorithm
of Xiong et al. (CVPR 2023), whose clients re-distil against the current global model every
round.  Communication: nothing but a config record goes down in round 1; each client's
synthetic set goes up (``bytes-up`` = its float32 images and int64 labels).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedmatch.data.types import IMAGE_SHAPE, NUM_CLASSES
from fedmatch.distill.evaluate import train_on_set
from fedmatch.distill.wire import MESSAGE_TYPE, RETURN_FLAG, SYNTHETIC_KEY, synthetic_from_record
from fedmatch.factories.distill import eval_protocol
from fedmatch.factories.models import model_from_config
from fedmatch.records import arrays_nbytes, arrays_to_state, state_to_arrays
from fedmatch.results import SERVER, MetricRow
from fedmatch.seeding import derive_seed
from fedmatch.train import resolve_device
from strategies.base import FedMatchStrategy

log = logging.getLogger("fedmatch.strategy")

DISTILL_ROUND = 1
_SERVER_TRAIN_TAG = 41  # separates the server's training seed from the clients' streams


class FedDMStrategy(FedMatchStrategy):
    """Round 1: collect synthetic sets and train on their union; later rounds: FedAvg."""

    name = "feddm"

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if server_round != DISTILL_ROUND:
            return super().configure_train(server_round, arrays, config, grid)
        self.current_arrays = arrays
        config = ConfigRecord(
            {
                **dict(config),
                "server-round": server_round,
                "run-dir": self.run_dir,
                RETURN_FLAG: True,
            }
        )
        nodes = self.sample(self.fraction_train, server_round, purpose=0)
        messages = []
        for node in nodes:
            # No model goes down: the clients distil from their data alone.
            messages.append(
                Message(
                    RecordDict({"config": config}),
                    message_type=MESSAGE_TYPE,
                    dst_node_id=node.node_id,
                )
            )
            self.record([MetricRow(server_round, node.partition_id, node.domain, "bytes-down", 0)])
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if server_round != DISTILL_ROUND:
            return super().aggregate_train(server_round, replies)
        images, labels = [], []
        for reply in self.valid_replies(server_round, replies):
            node = self.nodes_by_id[reply.metadata.src_node_id]
            self.record_reply(server_round, reply, with_bytes=False)
            record = reply.content.array_records.get(SYNTHETIC_KEY)
            if record is None:
                raise RuntimeError(
                    f"round {server_round}: client {node.partition_id} replied to "
                    f"{MESSAGE_TYPE} without its synthetic set (record {SYNTHETIC_KEY!r})"
                )
            self.record(
                [
                    MetricRow(
                        server_round,
                        node.partition_id,
                        node.domain,
                        "bytes-up",
                        arrays_nbytes(record),
                    )
                ]
            )
            x, y = synthetic_from_record(record)
            _check_synthetic(x, y, node.partition_id)
            images.append(x.float())
            labels.append(y.long())
        if not images or self.current_arrays is None:
            return None, None
        return self._train_on_union(server_round, torch.cat(images), torch.cat(labels))

    def _train_on_union(
        self, server_round: int, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[ArrayRecord, MetricRecord]:
        assert self.current_arrays is not None
        model = model_from_config(self.cfg)
        model.load_state_dict(arrays_to_state(self.current_arrays))
        protocol = eval_protocol(self.cfg)
        seed = derive_seed(self.cfg.seed, server_round, _SERVER_TRAIN_TAG)
        start = time.perf_counter()
        results = train_on_set(
            model, images, labels, protocol, seed=seed, device=resolve_device(self.cfg.device)
        )
        seconds = time.perf_counter() - start
        loss = results[-1].loss
        log.info(
            "round %d: trained the global model on %d synthetic images (%d epochs) in %.1f s, "
            "final train loss %.4f",
            server_round,
            len(labels),
            protocol.epochs,
            seconds,
            loss,
        )
        for metric, value in (
            ("server-train-images", float(len(labels))),
            ("server-train-seconds", seconds),
            ("server-train-loss", loss),
        ):
            self.record([MetricRow(server_round, SERVER, "all", metric, value)])
        state = {k: v.cpu() for k, v in model.state_dict().items()}
        arrays = state_to_arrays(state, self.current_arrays.keys())
        return arrays, MetricRecord({"server-train-images": len(labels)})


def _check_synthetic(images: torch.Tensor, labels: torch.Tensor, partition_id: int) -> None:
    if images.dim() != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise RuntimeError(
            f"client {partition_id} sent synthetic images of shape {tuple(images.shape)}; "
            f"expected (N, {', '.join(map(str, IMAGE_SHAPE))})"
        )
    if labels.shape != (images.shape[0],) or (
        labels.numel() and (labels.min() < 0 or labels.max() >= NUM_CLASSES)
    ):
        raise RuntimeError(
            f"client {partition_id} sent {tuple(labels.shape)} labels for {images.shape[0]} "
            f"images, or labels outside 0..{NUM_CLASSES - 1}"
        )
