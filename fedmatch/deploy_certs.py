"""TLS certificates and SuperNode keys for a Flower deployment, from the shipped scripts.

``docker/generate-certs.sh`` and ``docker/generate-auth-keys.sh`` are what the docs tell
operators to run; the local deployment and the tests call the same scripts (not a Python
copy of them), so what is tested is what is shipped.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedmatch.localrun import REPO

SCRIPTS = REPO / "docker"


class DeploymentError(RuntimeError):
    """A deployment process failed to start or to become ready; the message has its log tail."""


@dataclass(frozen=True)
class TlsFiles:
    """A CA certificate, the SuperLink's certificate/key it signed (PEM), and beside them
    each SuperNode's Runtime API certificate/key (``supernode-<i>-runtime.pem``/``.key``)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    def runtime_cert(self, index: int) -> tuple[Path, Path]:
        """Certificate and key of SuperNode ``index`` (1-based, as the script numbers them)."""
        folder = self.server_cert.parent
        cert = folder / f"supernode-{index}-runtime.pem"
        key = folder / f"supernode-{index}-runtime.key"
        if not (cert.exists() and key.exists()):
            raise DeploymentError(
                f"no Runtime API certificate for SuperNode {index} in {folder} (expected "
                f"{cert.name} and {key.name}); make it with SUPERNODES={index} or more "
                "docker/generate-certs.sh"
            )
        return cert, key

    def serve_flags(self, supernode: int | None = None) -> list[str]:
        """``--ssl-*`` flags to serve HTTPS: the SuperLink's certificate, or with ``supernode``
        that SuperNode's Runtime API certificate (a SuperNode never holds the SuperLink's key).
        """
        if supernode is None:
            cert, key = self.server_cert, self.server_key
        else:
            cert, key = self.runtime_cert(supernode)
        flags = {"--ssl-certfile": cert, "--ssl-keyfile": key, "--ssl-ca-certfile": self.ca_cert}
        return [arg for flag, path in flags.items() for arg in (flag, str(path))]


def generate_certs(out_dir: Path, extra_sans: Sequence[str] = (), supernodes: int = 5) -> TlsFiles:
    """Run ``docker/generate-certs.sh``: a CA, the SuperLink's certificate and ``supernodes``
    SuperNode Runtime API certificates, all valid for 127.0.0.1/localhost.

    ``extra_sans`` are further subjectAltName entries of the SuperLink's certificate
    (``DNS:host``, ``IP:addr``); the script refuses malformed ones.
    """
    _run_script("generate-certs.sh", str(out_dir), *extra_sans, SUPERNODES=str(supernodes))
    return TlsFiles(out_dir / "ca.crt", out_dir / "server.pem", out_dir / "server.key")


def generate_auth_keys(out_dir: Path, count: int) -> list[Path]:
    """Run ``docker/generate-auth-keys.sh``: ``count`` SuperNode key pairs (ECDSA P-384).

    Returns the private keys; each public key is beside it with ``.pub`` appended.
    """
    _run_script("generate-auth-keys.sh", str(out_dir), str(count))
    return [out_dir / f"supernode-{i}" for i in range(1, count + 1)]


def _run_script(name: str, *args: str, **env: str) -> None:
    result = subprocess.run(
        ["bash", str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env},
    )
    if result.returncode != 0:
        raise DeploymentError(f"{name} failed ({result.returncode}):\n{result.stderr[-3000:]}")
