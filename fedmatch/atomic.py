"""Atomic file writes: a temp file in the same directory, fsync, then ``os.replace``.

A process killed at any moment leaves either the previous or the new version of the file.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from fedmatch import failpoints

__all__ = ["TMP_SUFFIX", "atomic_torch_save", "atomic_write_bytes", "stale_temp_files"]

TMP_SUFFIX = ".tmp"


def atomic_write_bytes(path: Path, data: bytes, failpoint: str = "") -> None:
    """Write ``data`` to ``path`` so that a reader (or a crash) sees the old or the new file.

    ``failpoint`` names this write for the crash tests (see :mod:`fedmatch.failpoints`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            failpoints.write(handle, data, failpoint)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path, failpoint: str = "") -> None:
    """``torch.save`` through :func:`atomic_write_bytes` (synced before the rename)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue(), failpoint)


def stale_temp_files(folder: Path) -> list[Path]:
    """Temp files of writes a killed process never finished (safe to delete only while no
    other process writes ``folder``, e.g. under the run directory's lock)."""
    return sorted(p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file())
