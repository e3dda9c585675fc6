"""Which partition a node serves, from its node config."""

from __future__ import annotations

from flwr.app import Context


def node_partition(context: Context) -> tuple[int, int]:
    """(partition-id, num-partitions) from the node config, with a clear error if absent."""
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as err:
        raise ValueError(
            f"node config lacks {err.args[0]!r}: start each SuperNode with "
            "--node-config 'partition-id=<i> num-partitions=<n>'"
        ) from None
