"""What every fedmatch strategy shares: seeded sampling, ordered aggregation, recording.

``FedMatchStrategy`` derives from Flower's Message-API ``FedAvg`` and keeps its
weighted averaging of arrays and metrics.  It changes three things:

- node sampling is a pure function of (seed, round) over nodes ordered by
  partition id (Flower samples with the unseeded global ``random``), so runs
  repeat and a resumed run samples what the uninterrupted one would have;
- replies are sorted by partition id before averaging, so floating-point sums
  do not depend on the order replies arrive in;
- every reply's metrics become rows of ``metrics.jsonl`` (with the bytes each
  message carried), and ``run_rounds`` is the round loop, with checkpoints;
- messages go out through ``exchange``: a node that is gone (stopped, crashed,
  or silent for ``round-timeout`` seconds) is dropped with a ``dropped`` row and
  the run goes on with the others, down to ``min-available-nodes``.

Subclasses override ``outgoing_keys`` (which arrays travel to clients),
``train_config`` (what goes in the config record), ``train_payload`` (extra
array records sent with the model, e.g. SCAFFOLD's control variate) and
``state_dict`` / ``load_state_dict`` (server state a checkpoint must keep).
``bytes-down`` counts the model and the extra records; ``bytes-up`` counts
every array record a reply carries.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import nn

from fedmatch.config import RunConfig
from fedmatch.data.types import DomainArrays
from fedmatch.factories.models import model_from_config
from fedmatch.records import arrays_nbytes, arrays_to_numpy, arrays_to_state
from fedmatch.results import SERVER, MetricRow, RunRecorder
from fedmatch.seeding import derive_seed
from strategies.exchange import send_and_collect
from strategies.rounds import NonFiniteError, check_finite, progress_line

log = logging.getLogger("fedmatch.strategy")

# Server-side evaluation: (round, arrays) -> rows (one per domain and metric).
ServerEvaluate = Callable[[int, ArrayRecord], list[MetricRow]]


class NotEnoughNodesError(RuntimeError):
    """Fewer nodes remain than run-config key ``min-available-nodes`` asks for."""


@dataclass(frozen=True)
class NodeInfo:
    """What a client told the server about itself when the run started."""

    node_id: int
    partition_id: int
    domain: str
    num_train: int
    num_test: int
    device: str


class FedMatchStrategy(FedAvg):
    """FedAvg with deterministic sampling, per-client recording and a resumable round loop."""

    name = "fedavg"
    # The message type of the training phase (a workload route of the ClientApp).
    train_message_type: str = MessageType.TRAIN
    # False when part of the model stays on the clients (FedBN): the server's copy
    # of those layers is never trained, so server-side evaluation would mislead.
    global_model_is_complete = True

    def __init__(self, cfg: RunConfig, nodes: list[NodeInfo]) -> None:
        super().__init__(
            fraction_train=cfg.fraction_train,
            fraction_evaluate=cfg.fraction_evaluate,
            min_train_nodes=1,
            min_evaluate_nodes=0 if cfg.fraction_evaluate == 0 else 1,
            min_available_nodes=1,
        )
        self.cfg = cfg
        self.nodes = sorted(nodes, key=lambda n: n.partition_id)
        self.nodes_by_id = {n.node_id: n for n in self.nodes}
        # Nodes found gone during the run; they are never sampled again.
        self.dropped: list[NodeInfo] = []
        self.current_arrays: ArrayRecord | None = None
        self._rows: list[MetricRow] = []
        # Sent to clients so they can keep per-round state files beside the run's.
        self.run_dir = ""

    # ------------------------------------------------------------ hooks

    def outgoing_keys(self, arrays: ArrayRecord) -> list[str]:
        """Names of the arrays sent to clients (and averaged); all of them by default."""
        return list(arrays.keys())

    def train_config(self, server_round: int) -> dict[str, int | float | str | bool]:
        """Extra values for the train config record."""
        return {}

    def train_payload(self, server_round: int) -> dict[str, ArrayRecord]:
        """Array records sent to every training client beside the model (none for FedAvg)."""
        return {}

    def state_dict(self) -> dict:
        """Server-side state a checkpoint must keep (none for FedAvg)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        del state

    def initial_model(self, init_seed: int) -> nn.Module:
        """The global model before round 1 (the run's classifier unless overridden)."""
        return model_from_config(self.cfg, init_seed=init_seed)

    def make_server_evaluate(
        self, domains: list[DomainArrays], model: nn.Module
    ) -> ServerEvaluate | None:
        """The strategy's own server-side evaluation; None: per-domain test accuracy."""
        del domains, model
        return None

    def summary_extra(self) -> dict:
        """Extra entries for ``summary.json`` (none for FedAvg)."""
        return {}

    # ------------------------------------------------------------ this round's rows

    def record(self, rows: Iterable[MetricRow]) -> None:
        """Add rows to this round's metrics (written to ``metrics.jsonl`` when it ends)."""
        self._rows.extend(rows)

    @property
    def round_rows(self) -> tuple[MetricRow, ...]:
        """This round's rows so far (read-only; ``record``/``revise_rows`` change them)."""
        return tuple(self._rows)

    def revise_rows(self, change: Callable[[MetricRow], MetricRow]) -> None:
        """Replace every row of this round by ``change(row)`` (e.g. to add payload bytes)."""
        self._rows = [change(row) for row in self._rows]

    def take_rows(self) -> list[MetricRow]:
        """This round's rows, leaving none: for strategies that run their own round loop."""
        rows, self._rows = self._rows, []
        return rows

    # ------------------------------------------------------------ sampling

    def sample(self, fraction: float, server_round: int, purpose: int) -> list[NodeInfo]:
        """int(fraction·N) nodes (at least one) as Flower does; which ones depends on (seed, round).

        ``purpose`` (0 train, 1 evaluate) gives the two samplings of a round
        independent draws.
        """
        count = max(1, int(len(self.nodes) * fraction))
        if count >= len(self.nodes):
            return list(self.nodes)
        rng = random.Random(derive_seed(self.cfg.seed, server_round, purpose))
        return sorted(rng.sample(self.nodes, count), key=lambda n: n.partition_id)

    def build_messages(
        self, arrays: ArrayRecord, config: ConfigRecord, nodes: list[NodeInfo], kind: str
    ) -> list[Message]:
        keys = set(self.outgoing_keys(arrays))
        payload = ArrayRecord({k: v for k, v in arrays.items() if k in keys})
        # "train" and its sub-types ("train.teacher", ...) carry the payload and count bytes.
        is_train = kind.split(".")[0] == MessageType.TRAIN
        extra = self.train_payload(int(config["server-round"])) if is_train else {}
        down = arrays_nbytes(payload) + sum(arrays_nbytes(record) for record in extra.values())
        messages = []
        for node in nodes:
            messages.append(
                Message(
                    content=RecordDict({"arrays": payload, "config": config, **extra}),
                    message_type=kind,
                    dst_node_id=node.node_id,
                )
            )
            if is_train:
                row_round = int(config["server-round"])
                self._rows.append(
                    MetricRow(row_round, node.partition_id, node.domain, "bytes-down", down)
                )
        return messages

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current_arrays = arrays
        config = ConfigRecord({**dict(config), **self.train_config(server_round)})
        config["server-round"] = server_round
        config["run-dir"] = self.run_dir
        nodes = self.sample(self.fraction_train, server_round, purpose=0)
        log.debug(
            "round %d: training on partitions %s", server_round, [n.partition_id for n in nodes]
        )
        return self.build_messages(arrays, config, nodes, self.train_message_type)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.fraction_evaluate == 0:
            return []
        config = ConfigRecord(dict(config))
        config["server-round"] = server_round
        config["run-dir"] = self.run_dir
        nodes = self.sample(self.fraction_evaluate, server_round, purpose=1)
        return self.build_messages(arrays, config, nodes, MessageType.EVALUATE)

    # ------------------------------------------------------------ messaging

    def exchange(
        self, grid: Grid, messages: Iterable[Message], server_round: int, timeout: float
    ) -> list[Message]:
        """Send ``messages`` and return the replies; nodes found gone are dropped.

        A dropped node gets a ``dropped`` row for this round and is not sampled
        again: a SuperNode that comes back registers under a new node id, and
        resuming the run (``resume=true``) takes it in again.  Raises
        ``NotEnoughNodesError`` when fewer than ``min-available-nodes`` remain.
        Strategies with extra message phases should send through here too.
        """
        collected = send_and_collect(grid, messages, timeout)
        for node_id, reason in sorted(collected.failed.items()):
            node = self.nodes_by_id.get(node_id)
            log.warning("round %d: node %s failed: %s", server_round, node_id, reason)
            if node is not None:
                self._rows.append(
                    MetricRow(server_round, node.partition_id, node.domain, "failed", 1.0)
                )
        for node_id, reason in sorted(collected.gone.items()):
            self._drop(server_round, node_id, reason)
        if len(self.nodes) < self.cfg.min_available_nodes:
            raise NotEnoughNodesError(
                f"round {server_round}: {len(self.nodes)} client(s) remain after "
                f"partition(s) {[n.partition_id for n in self.dropped]} dropped out, fewer "
                f"than run-config key 'min-available-nodes' = {self.cfg.min_available_nodes}. "
                "The run directory holds every completed round: restart the lost SuperNodes "
                "and run again with resume=true and the same run-name."
            )
        return collected.replies

    def _drop(self, server_round: int, node_id: int, reason: str) -> None:
        node = self.nodes_by_id.get(node_id)
        if node is None or node not in self.nodes:
            return
        self.nodes.remove(node)
        self.dropped.append(node)
        log.warning(
            "round %d: dropping client %d (%s, node %d): %s; %d client(s) remain",
            server_round,
            node.partition_id,
            node.domain,
            node_id,
            reason,
            len(self.nodes),
        )
        self._rows.append(MetricRow(server_round, node.partition_id, node.domain, "dropped", 1.0))

    # ------------------------------------------------------------ aggregation

    def collect_models(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[list[Message], dict, list[dict]] | None:
        """For strategies with their own server step (SCAFFOLD, FedNova, FedDyn).

        Records every valid reply (with its bytes) and returns the valid replies in
        partition order, the model this round sent (x) and the models that came back
        (y_i), as state dicts; None when no client returned a model.
        """
        valid = self.valid_replies(server_round, replies)
        for reply in valid:
            self.record_reply(server_round, reply, with_bytes=True)
        if not valid or self.current_arrays is None:
            return None
        models = [arrays_to_state(reply.content["arrays"]) for reply in valid]
        return valid, arrays_to_state(self.current_arrays), models

    def valid_replies(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        valid = []
        for reply in replies:
            node = self.nodes_by_id.get(reply.metadata.src_node_id)
            if reply.has_error():
                log.warning(
                    "round %d: node %s (partition %s) failed: %s",
                    server_round,
                    reply.metadata.src_node_id,
                    node.partition_id if node else "?",
                    reply.error.reason,
                )
                if node:
                    self._rows.append(
                        MetricRow(server_round, node.partition_id, node.domain, "failed", 1.0)
                    )
                continue
            valid.append(reply)
        return sorted(valid, key=lambda r: self.nodes_by_id[r.metadata.src_node_id].partition_id)

    def record_reply(self, server_round: int, reply: Message, with_bytes: bool) -> None:
        node = self.nodes_by_id[reply.metadata.src_node_id]
        for name, value in reply.content["metrics"].items():
            if name in ("partition-id",) or not isinstance(value, int | float):
                continue
            self._rows.append(
                MetricRow(server_round, node.partition_id, node.domain, name, float(value))
            )
        if with_bytes:
            up = sum(arrays_nbytes(r) for r in reply.content.array_records.values())
            self._rows.append(
                MetricRow(server_round, node.partition_id, node.domain, "bytes-up", up)
            )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = self.valid_replies(server_round, replies)
        for reply in valid:
            self.record_reply(server_round, reply, with_bytes=True)
        aggregated, metrics = super().aggregate_train(server_round, valid)
        if aggregated is None or self.current_arrays is None:
            return aggregated, metrics
        # Arrays the clients did not send (FedBN's local layers) keep the server's copy.
        merged = ArrayRecord({k: aggregated.get(k, v) for k, v in self.current_arrays.items()})
        return merged, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        valid = self.valid_replies(server_round, replies)
        for reply in valid:
            self.record_reply(server_round, reply, with_bytes=False)
        return super().aggregate_evaluate(server_round, valid)

    # ------------------------------------------------------------ the round loop

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
        """Rounds ``first_round..num-server-rounds``; checkpoints after each one.

        ``timeout`` (seconds per phase) defaults to run-config key ``round-timeout``.
        """
        timeout = self.cfg.round_timeout if timeout is None else timeout
        last_round = self.cfg.num_server_rounds
        self.run_dir = str(recorder.run_dir)
        if first_round == 1 and server_evaluate is not None:
            recorder.append(server_evaluate(0, arrays))
        for server_round in range(first_round, last_round + 1):
            start = time.perf_counter()
            self._rows = []
            try:
                replies = self.exchange(
                    grid,
                    self.configure_train(server_round, arrays, ConfigRecord(), grid),
                    server_round,
                    timeout,
                )
                aggregated, _ = self.aggregate_train(server_round, replies)
                if aggregated is None:
                    raise RuntimeError(
                        f"round {server_round}: no client returned a model (all failed or "
                        "none sampled); see the warnings above"
                    )
                check_finite(server_round, aggregated, self._rows)
                arrays = aggregated
                replies = self.exchange(
                    grid,
                    self.configure_evaluate(server_round, arrays, ConfigRecord(), grid),
                    server_round,
                    timeout,
                )
            except NonFiniteError:
                recorder.append(self._rows)  # the diverged round's losses, as evidence
                raise
            except NotEnoughNodesError:
                # The round is incomplete (a resume truncates it), but which nodes
                # dropped out is worth keeping in the metrics.
                recorder.append([r for r in self._rows if r.metric == "dropped"])
                raise
            self.aggregate_evaluate(server_round, replies)
            rows = self._rows
            if server_evaluate is not None:
                rows.extend(server_evaluate(server_round, arrays))
            seconds = time.perf_counter() - start
            rows.append(MetricRow(server_round, SERVER, "all", "round-seconds", seconds))
            recorder.append(rows)
            recorder.save_checkpoint(server_round, arrays_to_numpy(arrays), self.state_dict())
            log.info(progress_line(server_round, last_round, rows, seconds))
        return arrays
