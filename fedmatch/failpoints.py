"""Crash points: SIGKILL this process in the middle of one write, for the crash tests.

A run must survive ``kill -9`` at any moment, including in the middle of appending to
``metrics.jsonl`` or writing ``checkpoint.pt``.  Waiting for a random kill to land inside a
write that lasts microseconds would make that untestable, so the two writes go through
:func:`write`, which the tests can arm: ``FEDMATCH_FAILPOINT_FILE`` names a file holding
``<point> <fraction>`` (for example ``metrics-append 0.5``); the next write at that point
writes that fraction of its bytes, syncs them to disk and kills its own process with SIGKILL,
exactly as a power cut or ``kill -9`` would leave it.  The file is deleted before the kill, so
each arming fires once.  Unset (always, outside the tests), :func:`write` is a plain write.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import BinaryIO

__all__ = ["ENV", "POINTS", "write"]

ENV = "FEDMATCH_FAILPOINT_FILE"
POINTS = ("metrics-append", "checkpoint-write")


def _armed(point: str) -> float | None:
    """The fraction of bytes to write before dying at ``point``, if the tests armed it."""
    spec_path = os.environ.get(ENV)
    if not spec_path:
        return None
    try:
        name, fraction = Path(spec_path).read_text().split()
    except (OSError, ValueError):
        return None
    if name != point:
        return None
    Path(spec_path).unlink(missing_ok=True)
    return min(max(float(fraction), 0.0), 1.0)


def write(handle: BinaryIO, data: bytes, point: str) -> None:
    """``handle.write(data)``, or, armed for ``point``, part of it and then SIGKILL."""
    fraction = _armed(point)
    if fraction is None:
        handle.write(data)
        return
    handle.write(data[: int(len(data) * fraction)])
    handle.flush()
    os.fsync(handle.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
