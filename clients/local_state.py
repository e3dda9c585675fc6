"""Arrays a client keeps between rounds (FedBN's normalisation layers, ...).

They live in ``context.state`` (Flower keeps it per node across rounds) and,
so that a resumed run finds them after the processes were killed, in a file
per round under the run directory on the client's machine.  Files are keyed
by round so a resumed round ``r`` reads exactly the state round ``r - 1`` left.

``slot`` keeps independent kinds of state apart (the default slot holds the
model's local layers; SCAFFOLD's control variate, FedDyn's gradient state and
MOON's previous model each have their own), each saved and pruned on its own.
"""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context

from fedmatch.atomic import atomic_torch_save
from fedmatch.records import arrays_to_state, state_to_arrays

_ARRAYS = "local-arrays"
_META = "local-meta"
_KEEP_ROUNDS = 2


def _path(run_dir: str, partition_id: int, server_round: int, slot: str = "") -> Path:
    folder = Path(run_dir) / "clients" / f"partition-{partition_id}"
    if slot:
        folder = folder / slot
    return folder / f"round-{server_round}.pt"


def _record_names(slot: str) -> tuple[str, str]:
    if not slot:
        return _ARRAYS, _META
    return f"{_ARRAYS}-{slot}", f"{_META}-{slot}"


def save_local_state(
    context: Context,
    run_dir: str,
    partition_id: int,
    server_round: int,
    state: dict[str, torch.Tensor],
    *,
    slot: str = "",
) -> None:
    arrays_name, meta_name = _record_names(slot)
    context.state[arrays_name] = state_to_arrays(state)
    context.state[meta_name] = ConfigRecord({"round": server_round})
    if not run_dir:
        return
    atomic_torch_save(state, _path(run_dir, partition_id, server_round, slot))
    # Keep the newest two: a run killed after this save but before the server's
    # checkpoint of this round resumes from the previous one.
    for old in _saved_rounds(run_dir, partition_id, slot)[:-_KEEP_ROUNDS]:
        _path(run_dir, partition_id, old, slot).unlink(missing_ok=True)


def _saved_rounds(run_dir: str, partition_id: int, slot: str = "") -> list[int]:
    folder = _path(run_dir, partition_id, 0, slot).parent
    return sorted(int(p.stem.split("-")[1]) for p in folder.glob("round-*.pt"))


def load_local_state(
    context: Context, run_dir: str, partition_id: int, server_round: int, *, slot: str = ""
) -> dict[str, torch.Tensor] | None:
    """The newest state saved at or before ``server_round`` (memory first, then disk)."""
    arrays_name, meta_name = _record_names(slot)
    meta = context.state.config_records.get(meta_name)
    if meta is not None and int(meta["round"]) <= server_round:
        record = context.state.array_records.get(arrays_name)
        if isinstance(record, ArrayRecord):
            return arrays_to_state(record)
    if not run_dir:
        return None
    rounds = [r for r in _saved_rounds(run_dir, partition_id, slot) if r <= server_round]
    if not rounds:
        return None
    return torch.load(_path(run_dir, partition_id, rounds[-1], slot), weights_only=True)
