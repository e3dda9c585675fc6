"""Run `flwr run` in a private Flower home, and find and stop what it leaves behind.

`flwr run .` with the default ``:local:`` connection starts a detached
``flower-superlink`` (and, per run, a SuperExec, a simulation process and Ray
workers).  Flower has no command to stop it, and it keeps the environment it
was started with, so after changing environment variables or the virtualenv
it has to be stopped.  Linux ``/proc`` only; no extra dependency.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, parents first."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(_children(current))
    return tree


def local_superlinks(flwr_home: str | Path | None = None, port: int | None = None) -> list[int]:
    """PIDs of local simulation SuperLinks, optionally only of one FLWR_HOME or HTTP port.

    `flwr run` reuses whatever SuperLink answers on its local port, whichever
    FLWR_HOME started it, so the port is what decides which one a run meets.
    """
    marker = None if flwr_home is None else str(Path(flwr_home).expanduser() / "local-superlink")
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        cmd = cmdline(int(entry.name))
        if "flower-superlink" not in cmd or "--simulation" not in cmd:
            continue
        if marker is not None and marker not in cmd:
            continue
        if port is not None and f"--port {port} " not in cmd + " ":
            continue
        pids.append(int(entry.name))
    return pids


def local_superlink_port() -> int:
    """The port `flwr run` uses for its local SuperLink (Flower's default or override)."""
    return int(os.environ.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "39091"))


def process_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
    return dict(pairs)


def stale_reason(pid: int, venv_bin: str) -> str | None:
    """Why a running SuperLink cannot run fedmatch correctly, or None if it can.

    It must have runtime dependency installation off (else every run does a
    `uv sync` that needs internet) and this virtualenv first on its PATH (else
    its simulations import another environment's packages).
    """
    env = process_environ(pid)
    if not env:
        return None  # not ours to inspect
    if env.get("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION") != "1":
        return "it was started without FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1"
    if env.get("PATH", "").split(os.pathsep)[0] != venv_bin:
        return f"its PATH does not start with {venv_bin}"
    return None


def stop_tree(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM ``pid`` and its descendants, then SIGKILL what is still alive."""
    tree = process_tree(pid)
    for p in tree:
        _signal(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(is_alive(p) for p in tree):
        time.sleep(0.2)
    for p in tree:
        _signal(p, signal.SIGKILL)


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


# --------------------------------------------------------------------------- private runs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def toml_value(value: object) -> str:
    """A Python value as `--run-config` wants it (TOML: strings quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    return str(value)


@dataclass
class PrivateFlower:
    """`flwr run` against a local SuperLink of its own FLWR_HOME and ports.

    Tests and benchmarks use it so that they never meet (or are slowed by) a
    SuperLink the user started; ``stop`` ends the SuperLink and all it spawned.
    """

    home: Path
    env: dict[str, str]
    app: Path = REPO  # the Flower app directory `flwr run` bundles

    @classmethod
    def create(
        cls,
        home: Path,
        extra_env: Mapping[str, str] | None = None,
        *,
        ray_address: str | None = None,
        app: Path = REPO,
    ) -> PrivateFlower:
        """``ray_address``: attach every simulation to this running Ray cluster.

        The SuperLink (started by the first ``flwr run``) passes its environment on to
        each simulation, and Flower's Ray backend calls ``ray.init()`` only when Ray is
        not initialised, which then attaches to ``RAY_ADDRESS`` instead of starting Ray.

        ``app``: the directory `flwr run` bundles (default: this repository).  `flwr run`
        lists every file under it before filtering, .venv included (seconds per run).
        """
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        if ray_address:
            env["RAY_ADDRESS"] = ray_address
        env.update(
            FLWR_HOME=str(home),
            FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
            FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            FLWR_DISABLE_UPDATE_CHECK="1",
            RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
            PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        )
        env.update(extra_env or {})
        return cls(home=home, env=env, app=app)

    def command(
        self,
        run_config: Mapping[str, object],
        num_supernodes: int,
        cpus_per_client: float = 1,
        gpus_per_client: float = 0,
    ) -> list[str]:
        return [
            "flwr",
            "run",
            str(self.app),
            "--stream",
            "--run-config",
            " ".join(f"{k}={toml_value(v)}" for k, v in run_config.items()),
            "--federation-config",
            f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client} "
            f"client-resources-num-gpus={gpus_per_client}",
        ]

    def run(
        self,
        run_config: Mapping[str, object],
        *,
        num_supernodes: int = 3,
        cpus_per_client: float = 1,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        """Run to the end; returns the CLI's output (`flwr run` exits 0 even on failure)."""
        return subprocess.run(
            self.command(run_config, num_supernodes, cpus_per_client),
            cwd=self.app,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def popen(
        self, run_config: Mapping[str, object], *, num_supernodes: int = 3
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(run_config, num_supernodes),
            cwd=self.app,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def stop(self) -> None:
        for pid in local_superlinks(self.home):
            stop_tree(pid)
