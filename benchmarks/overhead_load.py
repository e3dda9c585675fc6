"""Machine load over the timed phases of ``overhead.py`` (and ``grid_overhead.py``).

The machine is shared: :class:`ForeignCpu` samples how many CPU seconds processes that are not
the benchmark's use, and :class:`Phase` reports them over one timed phase.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

# Every process the benchmark starts (flwr run, its SuperLink, Ray workers) inherits this.
TAG_VAR = "FEDMATCH_OVERHEAD_TAG"


class ForeignCpu:
    """CPU seconds used by processes that are not this benchmark's, sampled from /proc.

    A process is ours when it is this process or carries ``TAG_VAR=<tag>`` in its
    environment (everything ``flwr run`` starts inherits it).  Processes that start and end
    between two samples are missed, so this is a lower bound.
    """

    def __init__(self, tag: str, interval: float = 1.0) -> None:
        self.tag = f"{TAG_VAR}={tag}".encode()
        self.interval = interval
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.foreign_seconds = 0.0
        self._last: dict[int, float] = {}
        self._ours: dict[int, bool] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _is_ours(self, pid: int) -> bool:
        if pid not in self._ours:
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                env = b""
            self._ours[pid] = pid == os.getpid() or self.tag in env.split(b"\0")
        return self._ours[pid]

    def _sample(self) -> None:
        current: dict[int, float] = {}
        foreign = 0.0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            cpu = (int(fields[11]) + int(fields[12])) / self.ticks  # utime + stime
            current[pid] = cpu
            if pid in self._last and not self._is_ours(pid):
                foreign += max(0.0, cpu - self._last[pid])
        with self._lock:
            self.foreign_seconds += foreign
        self._last = current
        self._ours = {pid: ours for pid, ours in self._ours.items() if pid in current}

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> ForeignCpu:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def read(self) -> float:
        with self._lock:
            return self.foreign_seconds


class Phase:
    """Wall time and other people's CPU seconds over one timed phase."""

    def __init__(self, sampler: ForeignCpu, label: str) -> None:
        self.sampler, self.label = sampler, label

    def __enter__(self) -> Phase:
        self.start, self.cpu0 = time.perf_counter(), self.sampler.read()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.start
        self.foreign = self.sampler.read() - self.cpu0

    def describe(self) -> str:
        share = self.foreign / (self.wall * (os.cpu_count() or 1))
        return (
            f"{self.label}: {self.foreign:.1f} CPU-s by other processes in {self.wall:.0f} s "
            f"({share:.0%} of the machine)"
        )
