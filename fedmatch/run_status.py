"""What became of a run: done, failed, interrupted by its user, or incomplete.

A run directory says it through two files:

    summary.json       written when the run ends, with ``status`` "done" or "failed"
    interrupted.json   written by ``fedmatch run`` after the user stopped the run (Ctrl-C),
                       with the last completed round; removed when the run is resumed

A directory with neither is a run still going on, or one whose process died (a crash, a
lost machine, ``kill -9``): "incomplete".  Both interrupted and incomplete runs continue from
their last checkpoint with ``resume=true``.  Every file is read as untrusted: a damaged one
gives status "damaged" naming the file and what is wrong, never an exception.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fedmatch.atomic import atomic_write_bytes

__all__ = [
    "CHECKPOINT",
    "INTERRUPTED",
    "SUMMARY",
    "RunState",
    "mark_interrupted",
    "mark_stopped",
    "run_state",
]

SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
INTERRUPTED = "interrupted.json"

Status = Literal["done", "failed", "interrupted", "incomplete", "damaged", "missing"]


@dataclass(frozen=True)
class RunState:
    status: Status
    detail: str = ""  # the error of a failed run, what is wrong with a damaged file, ...
    completed_round: int | None = None  # interrupted: the last round the checkpoint holds


def _json_object(path: Path) -> dict[str, Any]:
    """``path``'s JSON object; ValueError naming the file and the problem otherwise."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value


def run_state(run_dir: Path) -> RunState:
    """The state of the run in ``run_dir`` (see the module docstring)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        return RunState("missing", f"{run_dir} holds no run (no config.json)")
    try:
        if (run_dir / INTERRUPTED).exists():
            marker = _json_object(run_dir / INTERRUPTED)
            completed = marker.get("completed_round")
            if completed is not None and (type(completed) is not int or completed < 0):
                raise ValueError(
                    f"{run_dir / INTERRUPTED}: completed_round = {completed!r}, expected a "
                    "round number"
                )
            return RunState("interrupted", str(marker.get("detail", "")), completed)
        if not (run_dir / SUMMARY).exists():
            return RunState(
                "incomplete", f"{run_dir / SUMMARY} does not exist (the run is going on or died)"
            )
        summary = _json_object(run_dir / SUMMARY)
    except (OSError, ValueError) as err:
        return RunState("damaged", str(err))
    status = summary.get("status", "done")  # summaries of older versions had no status
    if status == "failed":
        return RunState("failed", str(summary.get("error", "")))
    if status != "done":
        return RunState(
            "damaged", f"{run_dir / SUMMARY}: status = {status!r}, expected 'done' or 'failed'"
        )
    return RunState("done")


def mark_interrupted(run_dir: Path, completed_round: int | None, detail: str) -> Path:
    """Write ``interrupted.json``; call it only while holding the run directory's lock."""
    path = Path(run_dir) / INTERRUPTED
    marker = {"completed_round": completed_round, "detail": detail, "at": time.time()}
    atomic_write_bytes(path, json.dumps(marker, indent=2, sort_keys=True).encode())
    return path


def mark_stopped(run_dir: Path, detail: str) -> RunState:
    """After its process was stopped: mark the run interrupted unless it had ended anyway.

    Takes the run directory's lock (raises :class:`~fedmatch.runlock.RunLockedError` if a
    process still holds it) and returns the run's state afterwards.
    """
    from fedmatch.runlock import RunDirLock

    lock = RunDirLock(run_dir)
    lock.acquire()
    try:
        state = run_state(run_dir)
        if state.status != "incomplete":
            return state
        completed = _completed_round(Path(run_dir))
        mark_interrupted(run_dir, completed, detail)
        return RunState("interrupted", detail, completed)
    finally:
        lock.release()


def _completed_round(run_dir: Path) -> int | None:
    """The round the checkpoint holds (None: no readable checkpoint, the run restarts)."""
    from fedmatch.checkpoint import CheckpointError, read_checkpoint

    path = run_dir / CHECKPOINT
    try:
        return int(read_checkpoint(path)["round"]) if path.exists() else None
    except (CheckpointError, OSError, KeyError, TypeError, ValueError):
        return None
