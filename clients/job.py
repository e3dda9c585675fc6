"""The receive -> work -> reply skeleton every client workload shares.

``ClientJob.receive`` turns a message and the node's context into what a workload starts
from: the run config validated once (hyperparameters come from here, never from the
message), this node's partition and data, the round, the run directory and the device.
A workload does its work and answers with ``job.reply(...)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients.node import node_partition
from fedmatch.config import RunConfig
from fedmatch.data.loaders import ClientData, load_client_data
from fedmatch.train import resolve_device

Record = ArrayRecord | MetricRecord | ConfigRecord


@dataclass
class ClientJob:
    """One message's work on this node."""

    msg: Message
    context: Context
    cfg: RunConfig
    partition_id: int
    num_partitions: int

    @classmethod
    def receive(cls, msg: Message, context: Context) -> ClientJob:
        partition_id, num_partitions = node_partition(context)
        return cls(
            msg=msg,
            context=context,
            cfg=RunConfig.from_flower(context.run_config),
            partition_id=partition_id,
            num_partitions=num_partitions,
        )

    @property
    def config(self) -> ConfigRecord:
        """The message's per-round values (round, run directory, the strategy's flags)."""
        return self.msg.content.config_records.get("config", ConfigRecord())

    @property
    def server_round(self) -> int:
        return int(self.config.get("server-round", 0))

    @property
    def run_dir(self) -> str:
        return str(self.config.get("run-dir", ""))

    @cached_property
    def data(self) -> ClientData:
        """This node's partition (loaded from the cache on first use)."""
        return load_client_data(self.cfg, self.partition_id, self.num_partitions)

    @cached_property
    def device(self) -> torch.device:
        return resolve_device(self.cfg.device)

    def reply(self, records: Mapping[str, Record]) -> Message:
        """The reply to this job's message, carrying ``records``."""
        return Message(RecordDict(dict(records)), reply_to=self.msg)
