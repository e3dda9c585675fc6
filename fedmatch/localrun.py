"""Find and stop the background processes `flwr run` leaves behind on this machine.

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
import time
from pathlib import Path


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
