"""A Flower deployment on one machine: a SuperLink and SuperNodes as local processes.

This is the deployment engine (not the simulation engine): each SuperNode is
its own process with its own Flower home, runs one ClientApp process per
message, and reaches the SuperLink over HTTP(S), exactly as on separate
machines; only the addresses are 127.0.0.1.  The tests use it for real
deployment runs (plain, TLS, SuperNode authentication, a node killed mid-run)
and ``fedmatch deploy-local`` (``make deploy-local``) for a multi-process run
without Docker.  The command lines are the ones docs/deployment.md gives;
``docker/generate-certs.sh`` and ``docker/generate-auth-keys.sh`` make the TLS
certificates and SuperNode keys (``fedmatch.deploy_certs``).  ``fedmatch deploy-local``
(``fedmatch.deploy_local``) uses TLS and SuperNode authentication unless told ``--insecure``.

Every process starts in a new session and ``stop`` (also on ``with`` exit)
ends each one with its children, SuperNodes first.  Linux only (``/proc``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

# SCRIPTS and the generate_* wrappers are re-exported (redundant aliases): tests and
# benchmarks import the whole deployment API from here.
from fedmatch.deploy_certs import SCRIPTS as SCRIPTS
from fedmatch.deploy_certs import DeploymentError, TlsFiles
from fedmatch.deploy_certs import generate_auth_keys as generate_auth_keys
from fedmatch.deploy_certs import generate_certs as generate_certs
from fedmatch.localrun import REPO, free_port, process_tree, stop_tree, toml_value

log = logging.getLogger("fedmatch.deploy")


@dataclass
class LocalDeployment:
    """One SuperLink and any number of SuperNodes on 127.0.0.1, each with free ports.

    ``root`` holds every process's Flower home and log (``<name>.log``) and the
    ``flwr`` CLI's home (``cli/config.toml`` with connection ``connection``).
    """

    root: Path
    tls: TlsFiles | None = None
    supernode_auth: bool = False
    # Torch threads per ClientApp process (OMP_NUM_THREADS); None leaves it unset.
    threads_per_node: int | None = None
    # "subprocess": the SuperLink and each SuperNode start their own SuperExec;
    # "process": separate `flower-superexec` processes, as docker-compose.yml runs them.
    isolation: Literal["subprocess", "process"] = "subprocess"
    connection: str = "fedmatch-local"
    superlink_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    runtime_ports: dict[str, int] = field(default_factory=dict)

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ processes

    @property
    def superlink_address(self) -> str:
        return f"127.0.0.1:{self.superlink_port}"

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        env.update(
            FLWR_HOME=str(home),
            FLWR_DISABLE_UPDATE_CHECK="1",
            # The SuperLink side reads this too; the flag below says it again.
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            # Flower's commands must come from this environment (and spawn its binaries).
            PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        )
        env.update(extra)
        return env

    def _start(self, name: str, command: list[str], **extra_env: str) -> subprocess.Popen[bytes]:
        if name in self.processes:
            raise ValueError(f"a process named {name!r} is already running")
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        with (self.root / f"{name}.log").open("ab") as out:
            process = subprocess.Popen(
                command,
                cwd=home,
                env=self.env(home, **extra_env),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes[name] = process
        log.info("started %s (pid %d): %s", name, process.pid, " ".join(command))
        return process

    def start_superlink(self, timeout: float = 60.0) -> None:
        """Start the SuperLink (state in ``superlink/state.db``) and wait until it answers."""
        command = [
            "flower-superlink",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.superlink_port),
            "--database",
            str(self.root / "superlink" / "state.db"),
            # ServerApps use this environment; `uv sync` per run would need internet.
            "--disable-runtime-dependency-installation",
        ]
        if self.tls is None:
            command.append("--insecure")
        else:
            command += self.tls.serve_flags()
        if self.supernode_auth:
            command.append("--enable-supernode-auth")
        command += ["--isolation", self.isolation]
        self._start("superlink", command)
        self.write_cli_config()
        self.wait_healthy("superlink", self.superlink_port, timeout)
        if self.isolation == "process":
            self._start_superexec("superexec-serverapp", self.superlink_address)

    def _start_superexec(self, name: str, runtime_api_address: str, **extra_env: str) -> None:
        """A SuperExec that runs the apps of one SuperLink or SuperNode (process isolation)."""
        command = ["flower-superexec", "--runtime-api-address", runtime_api_address]
        if self.tls is None:
            command.append("--insecure")
        else:
            command += ["--root-certificates", str(self.tls.ca_cert)]
        self._start(name, command, **extra_env)

    def start_supernode(
        self,
        partition_id: int,
        num_partitions: int,
        auth_key: Path | None = None,
        node_config: Mapping[str, object] | None = None,
        wait: bool = True,
        trust: Path | Literal["deployment", "public"] = "deployment",
        superexec: bool = True,
    ) -> str:
        """Start the SuperNode of one partition; returns its name ``supernode-<partition>``.

        Its ClientApps read ``partition-id``/``num-partitions`` (and anything in
        ``node_config``) from ``--node-config``.  ``wait`` polls its ``/health``.
        ``trust`` is the CA it verifies the SuperLink with (TLS only): ``"deployment"``
        this deployment's, ``"public"`` no ``--root-certificates`` (Flower then trusts the
        public CAs of certifi's bundle), or another CA certificate.  ``superexec=False``
        starts no SuperExec for it (process isolation), for a node expected to be refused.
        """
        if self.tls is None and trust != "deployment":
            raise ValueError(f"trust={trust!r} needs a TLS deployment")
        name = f"supernode-{partition_id}"
        port = free_port()
        self.runtime_ports[name] = port
        config = {"partition-id": partition_id, "num-partitions": num_partitions}
        config.update(node_config or {})
        command = [
            "flower-supernode",
            "--superlink",
            self.superlink_address,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--node-config",
            " ".join(f"{k}={toml_value(v)}" for k, v in config.items()),
        ]
        if self.tls is None:
            command.append("--insecure")
        else:
            if trust != "public":
                ca = self.tls.ca_cert if trust == "deployment" else trust
                command += ["--root-certificates", str(ca)]
            # Its own Runtime API (ClientApp processes <-> SuperNode) over TLS too.
            command += self.tls.serve_flags(supernode=partition_id + 1)
        if auth_key is not None:
            command += ["--auth-supernode-private-key", str(auth_key)]
        command += ["--isolation", self.isolation]
        extra = {}
        if self.threads_per_node is not None:
            extra["OMP_NUM_THREADS"] = str(self.threads_per_node)
        self._start(name, command, **extra)
        if self.isolation == "process" and superexec:
            self._start_superexec(f"superexec-{partition_id}", f"127.0.0.1:{port}", **extra)
        if wait:
            self.wait_healthy(name, port, timeout=60.0)
        return name

    def start_supernodes(
        self, num_partitions: int, auth_keys: Sequence[Path] | None = None
    ) -> list[str]:
        """One SuperNode per partition ``0..num_partitions-1``, started together."""
        if auth_keys is not None and len(auth_keys) != num_partitions:
            raise ValueError(f"{len(auth_keys)} auth keys for {num_partitions} SuperNodes")
        names = [
            self.start_supernode(
                i, num_partitions, auth_key=None if auth_keys is None else auth_keys[i], wait=False
            )
            for i in range(num_partitions)
        ]
        for name in names:
            self.wait_healthy(name, self.runtime_ports[name], timeout=60.0)
        return names

    def wait_healthy(self, name: str, port: int, timeout: float) -> None:
        """Poll the process's ``/health`` endpoint (SuperLink and SuperNode both serve one)."""
        scheme = "http" if self.tls is None else "https"
        context = (
            None if self.tls is None else ssl.create_default_context(cafile=str(self.tls.ca_cert))
        )
        deadline = time.monotonic() + timeout
        while True:
            self._raise_if_exited(name)
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                url = f"{scheme}://127.0.0.1:{port}/health"
                with urllib.request.urlopen(url, timeout=2, context=context) as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"{name} did not answer on port {port} within {timeout:.0f} s:\n"
                    + self.log_tail(name)
                )
            time.sleep(0.2)

    def _raise_if_exited(self, name: str) -> None:
        code = self.processes[name].poll()
        if code is not None:
            raise DeploymentError(f"{name} exited with status {code}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, chars: int = 4000) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    def kill_node(self, partition_id: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to a SuperNode, its SuperExec and their children (SIGKILL: machine lost)."""
        for name in (f"supernode-{partition_id}", f"superexec-{partition_id}"):
            if name not in self.processes:
                continue
            for pid in process_tree(self.processes[name].pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            self.processes[name].wait(timeout=30)

    def stop(self) -> None:
        """Stop every process this deployment started, SuperNodes before the SuperLink."""
        for name in sorted(self.processes, key=lambda n: n == "superlink"):
            process = self.processes.pop(name)
            if process.poll() is None:
                stop_tree(process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)

    # ------------------------------------------------------------ the flwr CLI

    @property
    def cli_home(self) -> Path:
        return self.root / "cli"

    def write_cli_config(self) -> Path:
        """``cli/config.toml``: the Flower connection ``connection`` to this SuperLink, with
        this deployment's CA (TLS) or ``insecure = true``; it is the CLI's default."""
        self.cli_home.mkdir(parents=True, exist_ok=True)
        path = self.cli_home / "config.toml"
        path.write_text(f'[superlink]\ndefault = "{self.connection}"\n')
        if self.tls is None:
            self.add_connection(self.connection, insecure=True)
        else:
            self.add_connection(self.connection, root_certificates=self.tls.ca_cert)
        return path

    def add_connection(
        self, name: str, *, root_certificates: Path | None = None, insecure: bool = False
    ) -> None:
        """Add connection ``name`` to this SuperLink to ``cli/config.toml``.

        ``root_certificates`` is the CA the ``flwr`` CLI verifies the SuperLink with; without
        it (and not ``insecure``) the CLI uses HTTPS trusting public CAs only (certifi's
        bundle).  The tests use connections that lack the CA to see what is turned away.
        """
        lines = ["", f"[superlink.{name}]", f'address = "{self.superlink_address}"']
        if insecure:
            lines.append("insecure = true")
        if root_certificates is not None:
            lines.append(f'root-certificates = "{root_certificates}"')
        with (self.cli_home / "config.toml").open("a") as config:
            config.write("\n".join(lines) + "\n")

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a ``flwr`` CLI command against this deployment."""
        return subprocess.run(
            ["flwr", *args],
            cwd=REPO,
            env=self.env(self.cli_home),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def register_supernode(self, public_key: Path) -> None:
        """``flwr supernode register``: allow the SuperNode with this key (auth enabled)."""
        result = self.flwr("supernode", "register", str(public_key), self.connection)
        if result.returncode != 0:
            raise DeploymentError(
                f"flwr supernode register {public_key} failed:\n{result.stdout}{result.stderr}"
            )

    def node_statuses(self) -> dict[int, str]:
        """Each SuperNode the SuperLink knows, by node ID: ``registered`` (never connected),
        ``online``, ``offline`` or ``unregistered``, from ``flwr supernode list``."""
        result = self.flwr("supernode", "list", self.connection, "--format", "json")
        try:
            nodes = json.loads(result.stdout)["nodes"]
        except (json.JSONDecodeError, KeyError):
            raise DeploymentError(
                f"flwr supernode list failed:\n{result.stdout}{result.stderr}"
            ) from None
        return {int(node["node-id"]): node["status"] for node in nodes}

    def online_nodes(self) -> int:
        """How many SuperNodes the SuperLink reports online."""
        return sum(1 for status in self.node_statuses().values() if status == "online")

    def wait_for_nodes(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while (online := self.online_nodes()) < count:
            for name in self.processes:
                self._raise_if_exited(name)
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"only {online} of {count} SuperNodes online after {timeout:.0f} s"
                )
            time.sleep(0.5)

    def run_command(self, run_config: Mapping[str, object]) -> list[str]:
        """``flwr run <repo> <connection> --stream --run-config ...``."""
        return [
            "flwr",
            "run",
            str(REPO),
            self.connection,
            "--stream",
            "--run-config",
            " ".join(f"{k}={toml_value(v)}" for k, v in run_config.items()),
        ]

    def run(
        self, run_config: Mapping[str, object], timeout: float = 600.0
    ) -> subprocess.CompletedProcess[str]:
        """Submit the app and stream its log to the end (``flwr run`` exits 0 even on failure)."""
        return subprocess.run(
            self.run_command(run_config),
            cwd=REPO,
            env=self.env(self.cli_home),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(self, run_config: Mapping[str, object]) -> subprocess.Popen[str]:
        """``run`` without waiting; stdout and stderr merged."""
        return subprocess.Popen(
            self.run_command(run_config),
            cwd=REPO,
            env=self.env(self.cli_home),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
