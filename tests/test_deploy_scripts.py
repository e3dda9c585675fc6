"""The shipped certificate and key scripts (docker/generate-*.sh), run for real with bash.

They must leave a folder the user passed as it was (only a folder they create is made
private) and refuse any SAN that is not a plain DNS name or IP address before writing
anything, since the SANs go into an openssl config file.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from fedmatch.deploy import SCRIPTS


def run_script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "SUPERNODES": "2"},
        timeout=60,
    )


def sans(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(ext.get_values_for_type(x509.DNSName)) | {
        str(ip) for ip in ext.get_values_for_type(x509.IPAddress)
    }


def verify(ca: Path, cert: Path) -> None:
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca), str(cert)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_certs_into_an_existing_folder_keep_its_mode(tmp_path: Path):
    out = tmp_path / "mine"
    out.mkdir()
    out.chmod(0o751)
    result = run_script(
        "generate-certs.sh",
        str(out),
        "DNS:link.example.org",
        "IP:10.0.0.5",
        "IP:fd00::5",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == 0o751
    expected = {"ca.crt", "ca.key", "server.pem", "server.key"}
    expected |= {f"supernode-{i}-runtime.{ext}" for i in (1, 2) for ext in ("pem", "key")}
    assert {p.name for p in out.iterdir()} == expected
    assert (out / "ca.key").stat().st_mode & 0o777 == 0o600
    assert {"superlink", "127.0.0.1", "link.example.org", "10.0.0.5", "fd00::5"} <= sans(
        out / "server.pem"
    )
    for i in (1, 2):
        cert = out / f"supernode-{i}-runtime.pem"
        verify(out / "ca.crt", cert)
        assert sans(cert) == {f"supernode-{i}", "localhost", "127.0.0.1", "::1"}
    verify(out / "ca.crt", out / "server.pem")


def test_certs_make_a_new_folder_private(tmp_path: Path):
    out = tmp_path / "new" / "certs"
    assert run_script("generate-certs.sh", str(out), cwd=tmp_path).returncode == 0
    assert out.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    "san",
    [
        "DNS:foo,DNS:evil",
        "DNS:a\nb",
        "DNS:$(touch x)",
        "DNS:a\nsubjectAltName=DNS:evil",
        "IP:fe80::1%eth0,DNS:evil",
        "IP:10.0.0.300",
        "DNS:",
        "DNS:-leading-dash",
        "URI:http://evil",
        "foo",
    ],
)
@pytest.mark.hostile("cert-scripts")
def test_certs_refuse_a_bad_san_and_write_nothing(tmp_path: Path, san: str):
    existing = tmp_path / "existing"
    existing.mkdir()
    for out in (existing, tmp_path / "new"):
        result = run_script("generate-certs.sh", str(out), "DNS:ok.example.org", san, cwd=tmp_path)
        assert result.returncode != 0
        assert f"SAN '{san}'" in result.stderr, result.stderr
    assert list(existing.iterdir()) == []
    assert not (tmp_path / "new").exists()
    assert not (tmp_path / "x").exists()


def test_auth_keys_into_an_existing_folder_keep_its_mode(tmp_path: Path):
    out = tmp_path / "keys"
    out.mkdir()
    out.chmod(0o755)
    result = run_script("generate-auth-keys.sh", str(out), "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == 0o755
    names = {p.name for p in out.iterdir()}
    assert names == {f"supernode-{i}{ext}" for i in (1, 2, 3) for ext in ("", ".pub")}
    for i in (1, 2, 3):
        assert (out / f"supernode-{i}").read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY")
        assert (out / f"supernode-{i}.pub").read_text().startswith("ecdsa-sha2-nistp384 ")

    fresh = tmp_path / "fresh"
    assert run_script("generate-auth-keys.sh", str(fresh), "1", cwd=tmp_path).returncode == 0
    assert fresh.stat().st_mode & 0o777 == 0o700


@pytest.mark.hostile("cert-scripts")
def test_auth_keys_refuse_a_bad_count(tmp_path: Path):
    result = run_script("generate-auth-keys.sh", str(tmp_path / "k"), "2; touch x", cwd=tmp_path)
    assert result.returncode != 0 and "COUNT must be a positive integer" in result.stderr
    assert not (tmp_path / "k").exists() and not (tmp_path / "x").exists()
