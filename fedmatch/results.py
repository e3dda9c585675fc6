"""The run directory: config, metrics, checkpoints, summary, final model, and resume.

Layout of ``<runs-dir>/<run-name>/``::

    config.json      the validated run config and the versions that produced the run
    metrics.jsonl    one JSON object per (round, client, domain, metric, value)
    checkpoint.pt    model arrays and strategy state after the last completed round
    clients/         per-client state files (FedBN's local layers, ...), per round
    summary.json     final per-domain accuracies, communication and time totals; status
                     "done" or "failed" (fedmatch.run_status)
    interrupted.json the user stopped the run (``fedmatch run``, Ctrl-C); resume continues it
    model.pt         the final global model's state dict
    .lock            held (flock) by the process writing the run, see fedmatch.runlock

Every file but metrics.jsonl is written atomically (temp file + ``os.replace``), so a run
killed at any moment leaves either the previous or the new version, never half of one.
metrics.jsonl is appended one round at a time; a kill mid-append can tear only its last line,
which readers drop (with a warning) and the next append rewrites away.  Checkpoints load with
``torch.load(weights_only=True)``: nothing in a run directory is unpickled.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmatch import __version__, failpoints
from fedmatch.atomic import atomic_torch_save, atomic_write_bytes
from fedmatch.checkpoint import read_checkpoint, write_checkpoint
from fedmatch.config import ConfigError, RunConfig
from fedmatch.resume import check_resume, reopen
from fedmatch.run_status import CHECKPOINT, SUMMARY
from fedmatch.runlock import RunDirLock

log = logging.getLogger(__name__)

SERVER = "server"
METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class MetricRow:
    round: int
    client: int | str  # partition id, or "server" for server-side values
    domain: str
    metric: str
    value: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "round": self.round,
                "client": self.client,
                "domain": self.domain,
                "metric": self.metric,
                "value": self.value,
            }
        )


def default_run_name(cfg: RunConfig) -> str:
    # The clock only names the directory; it never seeds anything.
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{cfg.strategy}-{cfg.partitioning}-seed{cfg.seed}-{stamp}"


class MetricsError(ValueError):
    """A metrics.jsonl line other than the last one that is not a metric row."""


def read_metrics(run_dir: Path) -> list[MetricRow]:
    """The rows of ``run_dir/metrics.jsonl``; an unparseable last line is dropped (warning)."""
    return _read_metrics_file(Path(run_dir) / METRICS)[0]


def _read_metrics_file(path: Path) -> tuple[list[MetricRow], bool]:
    """The file's rows, and whether it must be rewritten before more rows are appended.

    Appends are one ``write`` of whole lines, but a run killed mid-write can leave the last
    line torn: it is dropped with a warning.  A bad line elsewhere was not made by a torn
    append, so it is an error naming the line.
    """
    if not path.exists():
        return [], False
    try:
        data = path.read_bytes()
    except OSError as err:  # a folder, unreadable, ...
        raise MetricsError(f"{path}: cannot be read ({err.strerror or err})") from None
    lines = data.split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows = []
    dropped = False
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(MetricRow(**json.loads(line)))
        except (ValueError, TypeError, RecursionError) as error:
            if index != last:
                raise MetricsError(
                    f"{path}:{index + 1}: not a metric row ({error}): {line[:80]!r}; only a torn "
                    "last line (a run killed mid-write) is dropped automatically"
                ) from None
            log.warning(
                "%s:%d: dropping the unparseable last line %r (a run killed while writing it)",
                path,
                index + 1,
                line[:80],
            )
            dropped = True
    return rows, dropped or (bool(data) and not data.endswith(b"\n"))


class RunRecorder:
    """Writes one run directory; ``open`` creates it or reopens it to resume.

    A recorder from :meth:`open` holds the directory's lock until :meth:`close` (or the end of
    a ``with`` block, or its process): a second run of the same name is refused meanwhile.
    """

    def __init__(self, run_dir: Path, cfg: RunConfig) -> None:
        self.run_dir = run_dir
        self.cfg = cfg
        rows, self._needs_rewrite = _read_metrics_file(run_dir / METRICS)
        self._rows: list[MetricRow] = rows
        self._lock: RunDirLock | None = None

    @classmethod
    def open(cls, cfg: RunConfig, extra_info: Mapping[str, Any] | None = None) -> RunRecorder:
        """Create the run directory (or reopen it when ``resume=true``) and write config.json.

        Raises :class:`RunLockedError` while another recorder holds the directory.
        """
        run_dir = cfg.runs_path / (cfg.run_name or default_run_name(cfg))
        config_path = run_dir / "config.json"
        if cfg.resume and not config_path.exists():
            raise ConfigError(
                f"run-config key 'resume' = true but {run_dir} holds no run to resume "
                f"(no config.json): check run-name={cfg.run_name!r} and runs-dir="
                f"{cfg.runs_dir!r}"
            )
        lock = RunDirLock(run_dir)
        try:
            lock.acquire()
        except OSError as err:  # runs-dir or the run directory is a file, a dead link, ...
            key = "run-name" if cfg.runs_path.is_dir() else "runs-dir"
            raise ConfigError(
                f"run-config key '{key}': cannot use {run_dir} as a run directory "
                f"({err.strerror or err}: {err.filename or run_dir})"
            ) from None
        try:
            # Checked under the lock, so two runs cannot both find the name free.
            if cfg.resume:
                check_resume(run_dir, cfg)
                reopen(run_dir)
            elif config_path.exists():
                raise ConfigError(
                    f"run-config key 'run-name' = {cfg.run_name!r}: {run_dir} already holds a "
                    "run. Set resume=true to continue it, or choose another run-name"
                )
            info = {
                "run_config": cfg.to_flower(),
                "run_dir": str(run_dir),
                "versions": _versions(),
                **(dict(extra_info) if extra_info else {}),
            }
            atomic_write_bytes(config_path, json.dumps(info, indent=2, sort_keys=True).encode())
            recorder = cls(run_dir, cfg)
        except BaseException:
            lock.release()
            raise
        recorder._lock = lock
        return recorder

    def close(self) -> None:
        """Release the run directory's lock (idempotent); the files stay as written."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- metrics

    @property
    def rows(self) -> list[MetricRow]:
        return list(self._rows)

    def append(self, rows: Iterable[MetricRow]) -> None:
        """Append rows to metrics.jsonl (called once per round, before the checkpoint)."""
        rows = list(rows)
        self._rows.extend(rows)
        if self._needs_rewrite:
            # A torn last line is still on disk: appending after it would glue the rows on.
            self._rewrite_metrics()
            return
        with (self.run_dir / METRICS).open("ab") as handle:
            # One write of whole lines, so a kill can tear only the last line.
            data = "".join(row.to_json() + "\n" for row in rows).encode()
            failpoints.write(handle, data, "metrics-append")
            handle.flush()
            os.fsync(handle.fileno())

    def truncate_after(self, last_round: int) -> None:
        """Drop rows of rounds after ``last_round`` (written by a round that never finished)."""
        kept = [row for row in self._rows if row.round <= last_round]
        dropped = len(self._rows) - len(kept)
        if dropped:
            log.info("resume: dropping %d metric rows of the unfinished round", dropped)
        self._rows = kept
        self._rewrite_metrics()

    def _rewrite_metrics(self) -> None:
        data = "".join(row.to_json() + "\n" for row in self._rows).encode()
        atomic_write_bytes(self.run_dir / METRICS, data)
        self._needs_rewrite = False

    # ------------------------------------------------------------- checkpoints

    def save_checkpoint(
        self, server_round: int, arrays: Mapping[str, np.ndarray], strategy_state: Mapping
    ) -> None:
        write_checkpoint(self.run_dir / CHECKPOINT, server_round, arrays, strategy_state)

    def load_checkpoint(self) -> dict[str, Any] | None:
        path = self.run_dir / CHECKPOINT
        return read_checkpoint(path) if path.exists() else None

    def save_model(self, state: Mapping[str, torch.Tensor]) -> Path:
        path = self.run_dir / "model.pt"
        atomic_torch_save(dict(state), path)
        return path

    # ----------------------------------------------------------------- summary

    def write_summary(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        summary = summarize(self._rows)
        summary.update(dict(extra or {}))
        atomic_write_bytes(
            self.run_dir / SUMMARY, json.dumps(summary, indent=2, sort_keys=True).encode()
        )
        return summary


def summarize(rows: list[MetricRow]) -> dict[str, Any]:
    """Final-round accuracies per domain (server- and client-side) and per-run totals."""
    rounds = [row.round for row in rows if row.round > 0]
    final = max(rounds, default=0)

    def per_domain(source_is_server: bool, metric: str) -> dict[str, float]:
        values: dict[str, list[float]] = {}
        for row in rows:
            if (
                row.round == final
                and row.metric == metric
                and (row.client == SERVER) == (source_is_server)
            ):
                values.setdefault(row.domain, []).append(row.value)
        return {d: float(np.mean(v)) for d, v in sorted(values.items())}

    def total(metric: str) -> float:
        return float(sum(row.value for row in rows if row.metric == metric))

    round_seconds = [row.value for row in rows if row.metric == "round-seconds"]
    server_acc = per_domain(True, "test-accuracy")
    client_acc = per_domain(False, "test-accuracy")
    headline = client_acc or server_acc
    return {
        "final_round": final,
        "server_accuracy_per_domain": server_acc,
        "client_accuracy_per_domain": client_acc,
        "mean_accuracy": float(np.mean(list(headline.values()))) if headline else None,
        "worst_domain_accuracy": float(min(headline.values())) if headline else None,
        "bytes_down_total": total("bytes-down"),
        "bytes_up_total": total("bytes-up"),
        "seconds_per_round": float(np.mean(round_seconds)) if round_seconds else None,
    }


def format_domain_table(summary: Mapping[str, Any]) -> str:
    """A plain-text per-domain accuracy table of a summary."""
    server = summary.get("server_accuracy_per_domain", {})
    client = summary.get("client_accuracy_per_domain", {})
    domains = sorted(set(server) | set(client))
    width = max([len("domain"), *map(len, domains)])
    lines = [
        f"{'domain':<{width}}  {'global model':>12}  {'client models':>13}",
        f"{'-' * width}  {'-' * 12}  {'-' * 13}",
    ]

    def cell(values: Mapping[str, float], domain: str, size: int) -> str:
        return f"{values[domain]:>{size}.4f}" if domain in values else f"{'-':>{size}}"

    for domain in domains:
        lines.append(f"{domain:<{width}}  {cell(server, domain, 12)}  {cell(client, domain, 13)}")
    mean = summary.get("mean_accuracy")
    worst = summary.get("worst_domain_accuracy")
    if mean is not None:
        source = "client models" if client else "global model"
        lines.append(f"mean {mean:.4f}  worst domain {worst:.4f}  ({source})")
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    return {
        "fedmatch": __version__,
        "flwr": importlib.metadata.version("flwr"),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
