"""Hostile arguments to docker/generate-certs.sh and generate-auth-keys.sh, run with bash: each
is refused before anything is written, with an error naming the argument and what is allowed,
or does what it says and nothing else."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fedmatch.deploy import SCRIPTS
from tests.test_deploy_scripts import sans

pytestmark = pytest.mark.hostile("cert-scripts")


def run(name: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # SUPERNODES=0 by default: refusals come before any key is made, acceptances stay quick.
    return subprocess.run(
        ["bash", str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "SUPERNODES": "0", **env},
        timeout=60,
    )


def refused(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and fragment in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "command not found" not in result.stderr


@pytest.mark.parametrize(
    "san",
    [
        "DNS:a;touch x",
        "DNS:a|touch x",
        "DNS:a&&touch x",
        "DNS:a>x",
        "DNS:$HOME",
        "DNS:a b",
        "DNS:a\tb",
        "DNS:a\x1b[2Jb",  # a terminal escape
        "DNS:*.example.org",
        "DNS:a..b",
        "DNS:a.",
        "DNS:é.example.org",
        "DNS:" + "a" * 64 + ".org",  # a label over 63 characters
        "DNS:" + ".".join(["a" * 60] * 5),  # 304 characters in all
        "IP:1.2.3",
        "IP:01.2.3.4",
        "IP:::1/128",
        "IP:",
        "IP:1.2.3.4\n",
        "dns:lower.case",
        "",
    ],
)
def test_a_bad_san_is_refused_and_nothing_is_written(tmp_path: Path, san: str) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    for out in (existing, tmp_path / "new"):
        refused(run("generate-certs.sh", str(out), san, cwd=tmp_path), f"SAN '{san}'")
    assert list(existing.iterdir()) == [] and not (tmp_path / "new").exists()
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("script", ["generate-certs.sh", "generate-auth-keys.sh"])
@pytest.mark.parametrize("kind", ["a file", "a dead link", "empty"])
def test_an_out_dir_that_is_no_folder_is_refused(tmp_path: Path, script: str, kind: str) -> None:
    out = tmp_path / "out"
    if kind == "a file":
        out.write_text("mine")
    elif kind == "a dead link":
        out.symlink_to(tmp_path / "nowhere")
    result = run(script, "" if kind == "empty" else str(out), cwd=tmp_path)
    refused(result, "OUT_DIR is empty" if kind == "empty" else f"OUT_DIR '{out}' exists and is")
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if kind == "empty" else ["out"])
    assert kind != "a file" or out.read_text() == "mine"
    assert not (SCRIPTS / "certs").exists() and not (SCRIPTS / "keys").exists()


@pytest.mark.parametrize("count", ["00", "1001", "99999999999999999999", "-1", "1e3", " 3", ""])
def test_auth_keys_refuse_a_count_out_of_range(tmp_path: Path, count: str) -> None:
    refused(run("generate-auth-keys.sh", str(tmp_path / "k"), count, cwd=tmp_path), "COUNT")
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SUPERNODES", "1001"),
        ("SUPERNODES", "two"),
        ("CERT_DAYS", "0"),
        ("CERT_DAYS", "36501"),
        ("CERT_DAYS", "99999999999"),
    ],
)
def test_certs_refuse_counts_and_days_out_of_range(tmp_path: Path, name: str, value: str) -> None:
    result = run("generate-certs.sh", str(tmp_path / "c"), cwd=tmp_path, **{name: value})
    refused(result, f"{name} must be an integer in")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("out", ["-rf", "with space", "new\nline"])
def test_an_odd_but_valid_out_dir_is_the_folder_written(tmp_path: Path, out: str) -> None:
    result = run("generate-auth-keys.sh", out, "007", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    names = {p.name for p in (tmp_path / out).iterdir()}
    assert names == {f"supernode-{i}{ext}" for i in range(1, 8) for ext in ("", ".pub")}
    assert sorted(p.name for p in tmp_path.iterdir()) == [out]


def test_certs_into_a_linked_folder_and_the_longest_label(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    label = "a" * 63 + ".example.org"
    result = run("generate-certs.sh", str(tmp_path / "link"), f"DNS:{label}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "link").is_symlink()  # followed, as the user named it
    assert label in sans(target / "server.pem")
