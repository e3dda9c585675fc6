"""Run the real `flwr run` simulation from tests, isolated from the user's Flower setup.

Each test session gets its own FLWR_HOME and free ports, so the background
SuperLink it starts never meets one the user (or `make demo`) started, and it
is stopped, with everything it spawned, when the session ends.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fedmatch.localrun import local_superlinks, stop_tree

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    return str(value)


@dataclass
class FlowerEnv:
    home: Path
    env: dict[str, str]

    def run(
        self,
        run_config: dict[str, object],
        *,
        num_supernodes: int = 3,
        timeout: float = 400,
    ) -> subprocess.CompletedProcess[str]:
        overrides = " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())
        command = [
            "flwr",
            "run",
            ".",
            "--stream",
            "--run-config",
            overrides,
            "--federation-config",
            f"num-supernodes={num_supernodes} client-resources-num-cpus=1 "
            "client-resources-num-gpus=0",
        ]
        return subprocess.run(
            command, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def popen(self, run_config: dict[str, object], *, num_supernodes: int = 3):
        overrides = " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())
        command = [
            "flwr",
            "run",
            ".",
            "--stream",
            "--run-config",
            overrides,
            "--federation-config",
            f"num-supernodes={num_supernodes} client-resources-num-cpus=1 "
            "client-resources-num-gpus=0",
        ]
        return subprocess.Popen(
            command,
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def stop(self) -> None:
        for pid in local_superlinks(self.home):
            stop_tree(pid)


def make_flower_env(home: Path) -> FlowerEnv:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(
        FLWR_HOME=str(home),
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_DISABLE_UPDATE_CHECK="1",
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
    )
    return FlowerEnv(home=home, env=env)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
