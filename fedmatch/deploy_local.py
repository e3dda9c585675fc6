"""``fedmatch deploy-local``: one run of the app on a fresh local deployment.

Secure by default (TLS, SuperNode authentication with every key registered), as the
compose file is; ``--insecure`` is the explicit opt-out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import TextIO

from fedmatch.deploy import LocalDeployment
from fedmatch.deploy_certs import TlsFiles, generate_auth_keys, generate_certs
from fedmatch.localrun import REPO
from fedmatch.run_status import mark_stopped, run_state
from fedmatch.runlock import RunDirLock

log = logging.getLogger("fedmatch.deploy")

_RUN_DIR_LINE = re.compile(r"run directory: (\S+)")


def deploy_local(
    num_nodes: int,
    run_config: str,
    workdir: Path,
    *,
    insecure: bool = False,
    out: TextIO | None = None,
) -> int:
    """Run the app once on a fresh local deployment of ``num_nodes`` SuperNodes.

    By default over TLS with SuperNode authentication (certificates and keys made in
    ``workdir``, every key registered); ``insecure`` runs plain HTTP with no authentication.
    SuperNode ``i`` serves partition ``i``; ``min-available-nodes`` is set to
    ``num_nodes`` before ``run_config`` (a ``--run-config`` string) is applied.
    The run's log streams to ``out`` (default: stdout).  Returns 0 when the
    ServerApp wrote its ``summary.json``, else 1.  Every process is stopped
    before returning.
    """
    out = sys.stdout if out is None else out
    if num_nodes < 1:
        raise ValueError(f"--nodes = {num_nodes}: need at least one SuperNode")
    workdir.mkdir(parents=True, exist_ok=True)
    if insecure:
        log.warning(
            "--insecure: no TLS and no SuperNode authentication; any local user can reach "
            "this deployment's ports, submit runs and join as a SuperNode"
        )
    certs = None if insecure else generate_certs(workdir / "certs", supernodes=num_nodes)
    threads = max(1, (os.cpu_count() or 1) // num_nodes)
    # SIGTERM and SIGHUP end like Ctrl-C: every process stopped, the run marked interrupted.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    seen: list[Path] = []  # the run directory, once the ServerApp logged it
    try:
        _run(num_nodes, run_config, workdir, certs, insecure, threads, out, seen)
    except KeyboardInterrupt:
        # The deployment (ServerApp included) is stopped by now: its `with` block has exited.
        run_dir = seen[0] if seen else None
        if run_dir is None or not (run_dir / "config.json").exists():
            out.write("\ninterrupted before the run directory was created\n")
            return 130
        state = mark_stopped(run_dir, "stopped by its user (fedmatch deploy-local, Ctrl-C)")
        out.write(f"\nrun {run_dir} {state.status} after round {state.completed_round or 0}\n")
        return 130
    return _outcome(seen[0] if seen else None, workdir, out)


def _run(
    num_nodes: int,
    run_config: str,
    workdir: Path,
    certs: TlsFiles | None,
    insecure: bool,
    threads: int,
    out: TextIO,
    seen: list[Path],
) -> None:
    """Start the deployment, run the app once (its run directory into ``seen``), stop every
    process."""
    with LocalDeployment(
        workdir, tls=certs, supernode_auth=not insecure, threads_per_node=threads
    ) as deployment:
        deployment.start_superlink()
        keys = None
        if not insecure:
            keys = generate_auth_keys(workdir / "keys", num_nodes)
            for key in keys:
                deployment.register_supernode(key.with_name(key.name + ".pub"))
        deployment.start_supernodes(num_nodes, auth_keys=keys)
        out.write(
            f"deployment in {workdir}: SuperLink {deployment.superlink_address}"
            f"{' (INSECURE)' if insecure else ' (TLS, SuperNode authentication)'}, "
            f"{num_nodes} SuperNodes; logs: {workdir}/*.log\n"
        )
        command = deployment.run_command({"min-available-nodes": num_nodes})
        if run_config.strip():
            command += ["--run-config", run_config]
        try:
            with subprocess.Popen(
                command,
                cwd=REPO,
                env=deployment.env(deployment.cli_home),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ) as process:
                assert process.stdout is not None
                for line in process.stdout:
                    out.write(line)
                    if not seen and (match := _RUN_DIR_LINE.search(line)):
                        seen.append(Path(match.group(1)))
        except KeyboardInterrupt:
            # Kill the ServerApp before the deployment stops the rest: a ServerApp that
            # outlived its clients could record a round of dropped clients.
            if seen and (holder := RunDirLock(seen[0]).live_holder()):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(holder, signal.SIGKILL)
            raise


def _outcome(run_dir: Path | None, workdir: Path, out: TextIO) -> int:
    if run_dir is None:
        out.write(f"the run did not start; see the log above and {workdir}/superlink.log\n")
        return 1
    state = run_state(run_dir)
    if state.status != "done":
        out.write(f"the run is {state.status}: {state.detail}; see {workdir}/superlink.log\n")
        return 1
    out.write(f"run directory: {run_dir}\n")
    return 0
