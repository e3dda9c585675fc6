"""``fedmatch deploy-local``: one run of the app on a fresh local deployment.

Secure by default (TLS, SuperNode authentication with every key registered), as the
compose file is; ``--insecure`` is the explicit opt-out.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TextIO

from fedmatch.deploy import LocalDeployment
from fedmatch.deploy_certs import generate_auth_keys, generate_certs
from fedmatch.localrun import REPO

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
        run_dir = None
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
                if match := _RUN_DIR_LINE.search(line):
                    run_dir = Path(match.group(1))
    summary_path = None if run_dir is None else run_dir / "summary.json"
    if summary_path is None or not summary_path.exists():
        out.write(f"the run did not finish; see the log above and {workdir}/superlink.log\n")
        return 1
    if json.loads(summary_path.read_text()).get("status") == "failed":
        out.write(f"the run failed (see {summary_path}); run directory: {run_dir}\n")
        return 1
    out.write(f"run directory: {run_dir}\n")
    return 0
