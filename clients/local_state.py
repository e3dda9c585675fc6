"""Arrays a client keeps between rounds (FedBN's normalisation layers, ...).

They live in ``context.state`` (Flower keeps it per node across rounds) and,
so that a resumed run finds them after the processes were killed, in a file
per round under the run directory on the client's machine.  Files are keyed
by round so a resumed round ``r`` reads exactly the state round ``r - 1`` left.
"""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context

from fedmatch.records import arrays_to_state, state_to_arrays
from fedmatch.results import atomic_torch_save

_ARRAYS = "local-arrays"
_META = "local-meta"
_KEEP_ROUNDS = 2


def _path(run_dir: str, partition_id: int, server_round: int) -> Path:
    return Path(run_dir) / "clients" / f"partition-{partition_id}" / f"round-{server_round}.pt"


def save_local_state(
    context: Context,
    run_dir: str,
    partition_id: int,
    server_round: int,
    state: dict[str, torch.Tensor],
) -> None:
    context.state[_ARRAYS] = state_to_arrays(state)
    context.state[_META] = ConfigRecord({"round": server_round})
    if not run_dir:
        return
    atomic_torch_save(state, _path(run_dir, partition_id, server_round))
    # Keep the newest two: a run killed after this save but before the server's
    # checkpoint of this round resumes from the previous one.
    for old in _saved_rounds(run_dir, partition_id)[:-_KEEP_ROUNDS]:
        _path(run_dir, partition_id, old).unlink(missing_ok=True)


def _saved_rounds(run_dir: str, partition_id: int) -> list[int]:
    folder = _path(run_dir, partition_id, 0).parent
    return sorted(int(p.stem.split("-")[1]) for p in folder.glob("round-*.pt"))


def load_local_state(
    context: Context, run_dir: str, partition_id: int, server_round: int
) -> dict[str, torch.Tensor] | None:
    """The newest state saved at or before ``server_round`` (memory first, then disk)."""
    meta = context.state.config_records.get(_META)
    if meta is not None and int(meta["round"]) <= server_round:
        record = context.state.array_records.get(_ARRAYS)
        if isinstance(record, ArrayRecord):
            return arrays_to_state(record)
    if not run_dir:
        return None
    rounds = [r for r in _saved_rounds(run_dir, partition_id) if r <= server_round]
    if not rounds:
        return None
    return torch.load(_path(run_dir, partition_id, rounds[-1]), weights_only=True)
