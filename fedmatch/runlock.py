"""An exclusive lock on a run directory, so two runs of the same name never interleave.

The lock is ``fcntl.flock`` on ``<run-dir>/.lock``: the kernel releases it when the holder
closes the file or dies, so a crashed run never blocks the next one (a pid file alone would
outlive its process).  The holder writes its pid, host and start time into the file so a
refused opener can say who holds it.  flock locks belong to an open file, so a second lock in
the same process is refused too.  The descriptor is not inherited across ``exec``.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["LOCK_NAME", "RunDirLock", "RunLockedError"]

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another live process (or another recorder in this one) holds the run directory."""


class RunDirLock:
    """Holds the lock of one run directory from :meth:`acquire` until :meth:`release`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._file: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> None:
        """Take the lock now, or raise :class:`RunLockedError` naming the holder."""
        if self._file is not None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # "a+" creates the file without truncating the holder's details before we own it.
        handle = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RunLockedError(
                f"run directory {self.run_dir} is in use by {self._describe_holder()}: two runs "
                "must not write one directory. Wait for that run to end, or choose another "
                "run-name"
            ) from None
        except BaseException:
            handle.close()
            raise
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder) + "\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        """Give the lock up (idempotent).  The file stays: deleting it would let a third
        process lock a new file while a second still waits on the old one."""
        if self._file is None:
            return
        handle, self._file = self._file, None
        try:
            handle.seek(0)
            handle.truncate()
        finally:
            handle.close()  # closing the last descriptor releases the flock

    def holder_pid(self) -> int | None:
        """The pid the holder recorded, if it runs on this host (a lock file from another
        machine, on a shared file system, names a pid that means nothing here)."""
        try:
            holder: Any = json.loads(self.path.read_text(encoding="utf-8"))
            pid, host = holder["pid"], holder["host"]
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if type(pid) is not int or pid <= 0 or host != socket.gethostname():
            return None
        return pid

    def live_holder(self) -> int | None:
        """The pid of the process on this host that holds the lock now, or None (free, or
        held from another host).  Only for a lock this object does not hold."""
        try:
            self.acquire()
        except RunLockedError:
            return self.holder_pid()
        self.release()
        return None

    def _describe_holder(self) -> str:
        try:
            holder: Any = json.loads(self.path.read_text(encoding="utf-8"))
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder["since"])))
            return f"pid {int(holder['pid'])} on host {holder['host']} (since {since})"
        except (OSError, ValueError, TypeError, KeyError):
            # The holder took the lock but has not written its details yet.
            return "another process (its pid is not recorded yet)"
