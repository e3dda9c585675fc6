"""Send messages to SuperNodes and collect the replies, telling lost nodes from failing ones.

Flower's ``grid.send_and_receive`` returns whatever replies arrived before its
timeout and nothing about the rest.  In a deployment that is not enough:

- a SuperNode that was stopped (SIGTERM) unregisters at once; the SuperLink
  refuses messages for it, ``HttpGrid.push_messages`` returns ``""`` for them,
  and ``send_and_receive`` then waits for a reply that cannot come until its
  timeout (an hour by default);
- a SuperNode that died (SIGKILL, machine lost) stays registered; once it has
  missed its heartbeats (2 x 30 s in Flower 1.42) the SuperLink answers
  messages for it with a ``NODE_UNAVAILABLE`` error reply whose source is the
  SuperLink, not the node;
- ``HttpGrid.send_and_receive`` sleeps 3 s between pulls, adding up to 3 s to
  every phase of every round.

``send_and_collect`` pushes the messages itself, pulls every ``PULL_INTERVAL``
seconds, or a tenth of the time waited so far when that is longer (at most
``MAX_PULL_INTERVAL``: a long phase is not slowed by more than about 10%, and a
long wait does not flood the SuperLink with requests), and reports per
destination node which ones are gone and why, so the strategy can drop them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

# Seconds between pulls of pending replies: the simulation grid's own interval,
# and cheap on a deployment (one small HTTP request to the SuperLink).
PULL_INTERVAL = 0.1
MAX_PULL_INTERVAL = 1.0

# Error codes the SuperLink puts on a reply when the destination node is gone
# (missed heartbeats, or removed from the federation with its messages).
NODE_GONE_CODES = frozenset({ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE})


@dataclass
class Collected:
    """The outcome of one exchange, keyed by destination node id."""

    replies: list[Message] = field(default_factory=list)
    # node id -> why it is gone (refused, unavailable, or no reply in time)
    gone: dict[int, str] = field(default_factory=dict)
    # node id -> error reason, for errors the SuperLink made up for a node that is
    # still there (e.g. an expired reply); errors a ClientApp raised stay in ``replies``
    failed: dict[int, str] = field(default_factory=dict)


def send_and_collect(
    grid: Grid,
    messages: Iterable[Message],
    timeout: float,
    pull_interval: float = PULL_INTERVAL,
) -> Collected:
    """Push ``messages`` and pull replies until all arrived or ``timeout`` seconds passed."""
    messages = list(messages)
    out = Collected()
    if not messages:
        return out
    pushed = set(grid.push_messages(messages))
    pending: dict[str, int] = {}
    for msg in messages:
        node = msg.metadata.dst_node_id
        # Both grids write the id into the message's metadata while pushing; the
        # SuperLink refuses (no id returned) messages for unregistered nodes.
        message_id = msg.metadata.message_id
        if message_id and message_id in pushed:
            pending[message_id] = node
        else:
            out.gone[node] = "the SuperLink refused a message for it (node unregistered)"

    start = time.monotonic()
    deadline = start + timeout
    while pending:
        for reply in grid.pull_messages(list(pending)):
            node = pending.pop(reply.metadata.reply_to_message_id, None)
            if node is None:
                continue
            if not reply.has_error():
                out.replies.append(reply)
            elif reply.error.code in NODE_GONE_CODES:
                out.gone[node] = reply.error.reason
            elif reply.metadata.src_node_id != node:
                out.failed[node] = reply.error.reason
            else:
                out.replies.append(reply)  # the ClientApp's own error reply
        if not pending:
            break
        if time.monotonic() >= deadline:
            for node in pending.values():
                out.gone[node] = f"no reply within {timeout:g} s (run-config key 'round-timeout')"
            break
        now = time.monotonic()
        interval = min(max(pull_interval, (now - start) / 10), MAX_PULL_INTERVAL)
        time.sleep(min(interval, max(0.0, deadline - now)))
    return out
