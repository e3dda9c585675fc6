"""What a grid starts before its cells: the app snapshot and the shared Ray head."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedmatch.localrun import cmdline, free_port, is_alive, process_tree, stop_tree

log = logging.getLogger("fedmatch.bench")


def short_tmp(prefix: str) -> Path:
    # Ray puts unix sockets under its temp dir; their paths must stay under ~107 bytes.
    base = "/tmp" if Path("/tmp").is_dir() else tempfile.gettempdir()
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


@dataclass
class RayHead:
    """A private single-node Ray cluster (``ray start --head --block``) for one grid.

    Its own temp dir keeps it away from other users' Ray instances: ``ray.init()``
    without an address reads ``<temp-dir>/ray_current_cluster``, and this one is not
    under the default ``/tmp/ray``.  ``--block`` keeps the ``ray start`` process as the
    parent of every Ray process, so ``stop`` ends exactly this cluster (``ray stop``
    would end every Ray instance on the machine).
    """

    process: subprocess.Popen[bytes]
    temp_dir: Path
    address: str
    log_path: Path

    @classmethod
    def start(
        cls,
        log_path: Path,
        *,
        num_cpus: int = 0,
        num_gpus: int = -1,
        env: Mapping[str, str] | None = None,
        timeout: float = 180,
    ) -> RayHead:
        temp_dir = short_tmp("fmray-")
        command = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--temp-dir={temp_dir}",
            "--port=0",
            f"--num-cpus={num_cpus or os.cpu_count() or 1}",
            "--include-dashboard=false",
            # Fixed defaults (52365, 10001) would collide with another Ray on this machine.
            f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            # Workers and drivers bind ports the OS picks: the default range starts at 10002
            # in every cluster, so two grids started together both gave their first driver
            # port 10002 and one simulation died before its first round.
            "--min-worker-port=0",
            "--max-worker-port=0",
            "--disable-usage-stats",
        ]
        if num_gpus >= 0:
            command.append(f"--num-gpus={num_gpus}")
        run_env = dict(env if env is not None else os.environ)
        run_env.pop("RAY_ADDRESS", None)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                command, env=run_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        address_file = temp_dir / "ray_current_cluster"
        deadline = time.monotonic() + timeout
        while not address_file.exists() or not address_file.read_text().strip():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                shutil.rmtree(temp_dir, ignore_errors=True)
                raise RuntimeError(
                    f"`ray start --head` did not come up (exit {process.poll()}); its log "
                    f"{log_path}:\n{log_path.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.1)
        head = cls(process, temp_dir, address_file.read_text().strip(), log_path)
        log.info("Ray head at %s (temp dir %s)", head.address, temp_dir)
        return head

    def attached_jobs(self) -> int:
        """How many drivers (one per cell's simulation) have attached to this cluster."""
        return len(list(self.temp_dir.glob("session_latest/logs/python-core-driver-*.log")))

    def stop(self) -> None:
        stop_tree(self.process.pid)
        self.process.wait()
        # Anything that outlived its parent still names our temp dir on its command line.
        marker = str(self.temp_dir)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and marker in cmdline(int(entry.name)):
                pid = int(entry.name)
                if is_alive(pid):
                    for child in process_tree(pid):
                        stop_tree(child, timeout=2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


# ------------------------------------------------------------------------- app snapshot

# Files Flower may put in an app bundle; the app's `fab-include` narrows them further.
_BUNDLE_SUFFIXES = frozenset({".py", ".toml", ".md", ".yaml", ".yml", ".json", ".jsonl"})
_BUNDLE_NAMES = frozenset({"LICENSE", ".gitignore"})
_NOT_APP_DIRS = frozenset({"runs", "build", "dist", "__pycache__", "node_modules"})


def snapshot_app(source: Path, dest: Path) -> Path:
    """Copy what `flwr run` may bundle from the app directory ``source`` into ``dest``.

    Two reasons to run a grid from a copy: `flwr run` walks and resolves every file
    under the app directory before filtering (the repository's .venv alone is ~47,000
    files, seconds per cell on 2 cores), and every cell of one grid then runs the same
    code even if the working tree changes while the grid runs.
    """
    for dirpath, dirnames, filenames in os.walk(source):
        here = Path(dirpath)
        dirnames[:] = [
            d
            for d in dirnames
            if not d.startswith(".")
            and d not in _NOT_APP_DIRS
            and not d.endswith(".egg-info")
            and not (here / d / "pyvenv.cfg").exists()
        ]
        for filename in filenames:
            path = here / filename
            if path.is_symlink():
                continue
            if path.suffix in _BUNDLE_SUFFIXES or filename in _BUNDLE_NAMES:
                target = dest / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    return dest
