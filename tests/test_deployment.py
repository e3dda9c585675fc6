"""Flower's deployment engine for real, on loopback: a SuperLink and SuperNode processes.

No Docker engine exists here, so the compose files are checked statically
(``test_compose_*``) and the same topology runs as local processes: ``fedmatch
deploy-local`` (TLS and SuperNode authentication by default), and TLS with SuperNode
authentication and separate SuperExecs (as docker-compose.yml runs it) with a SuperNode
killed mid-run, and in the same deployment who it turns away (SuperNodes and ``flwr``
users without the CA, an unregistered SuperNode).  Every test stops every process it
started, also on failure.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import Result
from cryptography import x509
from flwr.cli.app import app as flwr_app
from flwr.proto.control_pb2 import ListRunsRequest
from flwr.supercore.control.control_http_client import ControlHttpClient
from typer.testing import CliRunner

from fedmatch import cli
from fedmatch.data.loaders import available_domains
from fedmatch.deploy import LocalDeployment, generate_auth_keys, generate_certs
from fedmatch.localrun import (
    REPO,
    is_alive,
    process_environ,
    process_tree,
    stop_tree,
    toml_value,
)
from tests.flower_harness import read_jsonl

DOMAINS = "mnist,optdigits,font-digits"


def tiny(runs: Path, cache: Path, run_name: str, **overrides) -> dict[str, object]:
    config: dict[str, object] = {
        "domains": DOMAINS,
        "train-subset": 200,
        "model-width": 16,
        "lr": 0.05,
        "num-server-rounds": 2,
        "min-available-nodes": 3,
        "runs-dir": str(runs),
        "cache-dir": str(cache),
        "run-name": run_name,
        "seed": 7,
    }
    config.update(overrides)
    return config


def stop_and_check(deployment: LocalDeployment) -> None:
    """Stop the deployment and check that nothing it started is left running."""
    pids = {p for proc in deployment.processes.values() for p in process_tree(proc.pid)}
    deployment.stop()
    assert not [p for p in pids if is_alive(p)], "processes left running"


def finished(output: str, run_dir: Path, deployment: LocalDeployment) -> dict:
    logs = "\n".join(f"--- {n}\n{deployment.log_tail(n, 1500)}" for n in deployment.processes)
    assert (run_dir / "summary.json").exists(), output[-6000:] + logs
    return json.loads((run_dir / "summary.json").read_text())


def clients_by_round(rows: list[dict], metric: str) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for r in rows:
        if r["metric"] == metric and r["client"] != "server":
            out.setdefault(r["round"], set()).add(r["client"])
    return out


def processes_under(root: Path) -> list[int]:
    """Live processes whose Flower home is under ``root`` (children inherit it)."""
    pids = (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    return [
        pid
        for pid in pids
        if process_environ(pid).get("FLWR_HOME", "").startswith(str(root)) and is_alive(pid)
    ]


@pytest.mark.e2e
@pytest.mark.deployment
def test_loopback_deployment_runs_fedavg_on_three_supernodes(
    tmp_path: Path, data_cache: Path, capsys: pytest.CaptureFixture[str]
):
    """`fedmatch deploy-local`: a SuperLink and three SuperNode processes, FedAvg, 1 round,
    over TLS with SuperNode authentication (its default).

    One round: every round costs a ClientApp process start per message and node (seconds
    each on two cores); the TLS test below runs two rounds on the same engine.
    """
    workdir = tmp_path / "deploy"
    config = tiny(tmp_path / "runs", data_cache, "plain", **{"num-server-rounds": 1})
    del config["min-available-nodes"]  # deploy-local sets it to --nodes
    start = time.perf_counter()
    status = cli.main(
        [
            "deploy-local",
            "--nodes",
            "3",
            "--workdir",
            str(workdir),
            "--run-config",
            " ".join(f"{k}={toml_value(v)}" for k, v in config.items()),
        ]
    )
    seconds = time.perf_counter() - start
    output = capsys.readouterr().out
    assert not processes_under(workdir), "processes left running"
    run_dir = tmp_path / "runs" / "plain"
    assert status == 0, output[-6000:]
    assert f"run directory: {run_dir}" in output

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_round"] == 1
    rows = read_jsonl(run_dir / "metrics.jsonl")
    for metric in ("train-loss", "test-accuracy", "bytes-up"):
        assert clients_by_round(rows, metric) == {1: {0, 1, 2}}, metric
    # Each SuperNode served its own partition: partition i holds the i-th domain.
    domains = {r["client"]: r["domain"] for r in rows if r["metric"] == "train-loss"}
    assert domains == dict(enumerate(DOMAINS.split(",")))
    run_info = json.loads((run_dir / "config.json").read_text())
    assert run_info["num_nodes"] == 3 and run_info["run_config"]["min-available-nodes"] == 3
    assert not [r for r in rows if r["metric"] in ("failed", "dropped")]
    # It ran on the deployment engine: each SuperNode started ClientApp processes.
    for i in range(3):
        log = (workdir / f"supernode-{i}.log").read_text()
        assert "Start `flwr-clientapp` process" in log
    # Secure by default: TLS with its own certificates, every SuperNode with its own key.
    assert "(TLS, SuperNode authentication)" in output
    link_log = (workdir / "superlink.log").read_text()
    assert (workdir / "certs" / "ca.crt").exists() and (workdir / "keys" / "supernode-3").exists()
    assert "--insecure" not in link_log
    with capsys.disabled():
        print(f"\nloopback deployment test: {seconds:.1f} s")


# What the flwr CLI prints for any transport failure: it hides the TLS error behind it.
UNAVAILABLE = "Connection to the SuperLink is unavailable"


def flwr_in_process(deployment: LocalDeployment, *args: str) -> Result:
    """``flwr <args>`` with the deployment's CLI home, run in this process: the code of the
    ``flwr`` console script without its start-up, which costs seconds per command on two
    cores.  Human-readable output only (``--format json`` writes past the capture)."""
    env = {"FLWR_HOME": str(deployment.cli_home), "FLWR_DISABLE_UPDATE_CHECK": "1"}
    return CliRunner().invoke(flwr_app, list(args), env=env)


def check_refused_commands(deployment: LocalDeployment, stranger_key: Path) -> None:
    """The ``flwr`` commands of someone without the CA: each is refused."""
    deployment.add_connection("no-ca")  # HTTPS trusting public CAs only
    deployment.add_connection("plain", insecure=True)  # HTTP
    attempts = {
        "run without the CA": ("run", str(REPO), "no-ca"),
        "run with insecure = true": ("run", str(REPO), "plain"),
        "register without the CA": ("supernode", "register", f"{stranger_key}.pub", "no-ca"),
        "ls without the CA": ("ls", "no-ca"),
    }
    for name, args in attempts.items():
        result = flwr_in_process(deployment, *args)
        assert result.exit_code == 1 and UNAVAILABLE in result.output, (name, result.output)


def check_control_api_tls(deployment: LocalDeployment, ca_cert: Path) -> None:
    """Why the CLI said "unavailable", with the CLI's own client and the same settings: the
    CA is what lets a client trust the SuperLink, not a credential the SuperLink checks."""
    address = deployment.superlink_address

    def list_runs(insecure: bool, root_certificates: bytes | None) -> dict:
        client = ControlHttpClient.from_server_address(
            address, insecure, root_certificates, interceptors=[]
        )
        with contextlib.closing(client):
            return dict(client.ListRuns(ListRunsRequest()).run_dict)

    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        list_runs(insecure=False, root_certificates=None)  # public CAs only
    # Plain HTTP on the TLS port: the handshake never starts, the SuperLink hangs up.
    with pytest.raises(httpx.RemoteProtocolError, match="disconnected without sending"):
        list_runs(insecure=True, root_certificates=None)
    assert list_runs(insecure=False, root_certificates=ca_cert.read_bytes()) == {}  # no run yet
    # Flower 1.42 OSS has no Control API login and asks for no client certificate: a client
    # that skips verification is served.  Only the network keeps strangers out (docs).
    with contextlib.closing(ControlHttpClient(f"https://{address}", verify=False)) as unverified:
        assert dict(unverified.ListRuns(ListRunsRequest()).run_dict) == {}


@pytest.mark.e2e
@pytest.mark.deployment
# The refused `flwr run`s run in this process; Flower reads .gitignore with pathspec's
# deprecated pattern class (one warning per line).
@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")
def test_tls_deployment_with_auth_survives_a_killed_supernode(tmp_path: Path, data_cache: Path):
    """TLS, SuperNode authentication and separate SuperExecs (as docker-compose.yml runs
    them), and the machine of partition 1 lost after round 1.

    Who is turned away: a SuperNode whose key is not registered; SuperNodes with a
    registered key but without our CA (public CAs only, or another CA); ``flwr`` commands
    whose connection lacks the CA or says ``insecure = true``.  None of them leaves a trace
    in the SuperLink's state: one run, the registered nodes only.

    One deployment covers all of it because each deployment costs a minute or more of process
    start-ups on two cores; the checks of each part are independent of the others.
    """
    root = tmp_path / "deploy"
    run_dir = tmp_path / "runs" / "tls-kill"
    certs = generate_certs(root / "certs", supernodes=6)  # the shipped docker/generate-certs.sh
    other_ca = generate_certs(root / "other-certs", supernodes=1).ca_cert  # someone else's CA
    keys = generate_auth_keys(root / "keys", 6)  # the shipped docker/generate-auth-keys.sh
    # keys[:3]: the three SuperNodes; keys[3]: never registered; keys[4:]: registered, no CA.
    deployment = LocalDeployment(
        root, tls=certs, supernode_auth=True, threads_per_node=1, isolation="process"
    )
    config = tiny(
        tmp_path / "runs",
        data_cache,
        "tls-kill",
        **{
            "min-available-nodes": 2,
            "fraction-evaluate": 0.0,
            "server-eval": False,
            "round-timeout": 300.0,
        },
    )
    run: subprocess.Popen[str] | None = None
    try:
        deployment.start_superlink()
        check_refused_commands(deployment, keys[3])
        check_control_api_tls(deployment, certs.ca_cert)
        for key in (*keys[:3], *keys[4:]):
            registered = flwr_in_process(
                deployment, "supernode", "register", f"{key}.pub", deployment.connection
            )
            assert registered.exit_code == 0, registered.output
        # Turned away, so they need no SuperExec: the unregistered key, and two registered
        # keys whose SuperNodes trust public CAs only, or another CA.
        deployment.start_supernode(3, 6, auth_key=keys[3], wait=False, superexec=False)
        for partition, trust in ((4, "public"), (5, other_ca)):
            deployment.start_supernode(
                partition, 6, auth_key=keys[partition], wait=False, trust=trust, superexec=False
            )
        deployment.start_supernodes(3, auth_keys=keys[:3])
        # The SuperLink speaks TLS only: plain HTTP fails, HTTPS with the CA works.
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://{deployment.superlink_address}/health", timeout=5)
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        url = f"https://{deployment.superlink_address}/health"
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            assert response.status == 200

        run = deployment.popen(config)
        deadline = time.monotonic() + 400
        while not (run_dir / "checkpoint.pt").exists():
            assert run.poll() is None, run.communicate()[0][-6000:]
            assert time.monotonic() < deadline, "round 1 did not finish"
            time.sleep(0.5)
        # The machine of partition 1 is lost: no clean shutdown, no more heartbeats.
        deployment.kill_node(1, signal.SIGKILL)
        output = run.communicate(timeout=500)[0]
        summary = finished(output, run_dir, deployment)

        intruder = deployment.processes["supernode-3"]
        assert intruder.wait(timeout=60) != 0
        assert "[code: 2004] Failed to activate SuperNode" in deployment.log_tail("supernode-3")
        for name in ("supernode-4", "supernode-5"):
            assert deployment.processes[name].wait(timeout=60) != 0, name
            log = deployment.log_tail(name)
            assert "Failed to initialize the connection to the SuperLink" in log, log
            assert "[SSL: CERTIFICATE_VERIFY_FAILED]" in log, log
        with ThreadPoolExecutor(2) as pool:
            statuses = pool.submit(deployment.node_statuses)
            listed = pool.submit(deployment.flwr, "ls", deployment.connection, "--format", "json")
            statuses, listed = statuses.result(), listed.result()
    finally:
        if run is not None and run.poll() is None:
            stop_tree(run.pid)
        stop_and_check(deployment)

    assert summary["final_round"] == 2
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert clients_by_round(rows, "train-loss") == {1: {0, 1, 2}, 2: {0, 2}}
    assert [(r["round"], r["client"], r["domain"]) for r in rows if r["metric"] == "dropped"] == [
        (2, 1, "optdigits")
    ]
    assert "dropping client 1 (optdigits" in output

    # The five registered keys only (the refused `register` added none).  The three that
    # trained came online (the killed one is offline now); the two without our CA are still
    # "registered": never online.
    assert Counter(statuses.values()) == {"online": 2, "offline": 1, "registered": 2}, statuses
    # Exactly the one real run; the refused `flwr run`s created none.
    runs = json.loads(listed.stdout)["runs"]
    assert [r["status"] for r in runs] == ["finished:completed"], listed.stdout
    # Server side: the refused commands never reached the Control API (its access log).
    link_log = (root / "superlink.log").read_text()
    assert link_log.count('"POST /v1/control/start-run HTTP/1.1"') == 1
    assert link_log.count('"POST /v1/control/register-node HTTP/1.1"') == 5


# ---------------------------------------------------------------- compose files (static)

COMPOSE = "docker-compose.yml"
INSECURE_OVERLAY = "docker-compose.insecure.yml"
# The Dockerfile's ENTRYPOINT: services that do not set one run a SuperExec.
DEFAULT_BINARY = "flower-superexec"
# Compose's `${VAR:-default}` in a published port: the address it binds when VAR is unset.
BIND_DEFAULT = re.compile(r"^\$\{FEDMATCH_BIND:-([^}]+)\}:(\d+):(\d+)$")


class _Reset:
    """Compose's `!reset` tag: the overlay removes the key."""


class ComposeLoader(yaml.SafeLoader):
    pass


ComposeLoader.add_constructor("!reset", lambda loader, node: _Reset())


def load_compose(*names: str) -> dict:
    """The files merged as `docker compose -f a -f b` does for the keys they use."""
    merged: dict = {}
    for name in names:
        merge_compose(merged, yaml.load((REPO / name).read_text(), Loader=ComposeLoader))
    return merged


def merge_compose(base: dict, overlay: dict) -> None:
    for key, value in overlay.items():
        if isinstance(value, _Reset):
            base.pop(key, None)
            continue
        if key != "services":
            if isinstance(value, dict):
                base.setdefault(key, {}).update(value)
            else:
                base[key] = value
            continue
        for name, service in value.items():
            target = base.setdefault("services", {}).setdefault(name, {})
            for field_name, field_value in service.items():
                if isinstance(field_value, _Reset):
                    target.pop(field_name, None)
                elif field_name in ("secrets", "volumes", "ports"):
                    # Compose merges these lists (by target); command/entrypoint are replaced.
                    old = target.get(field_name, [])
                    target[field_name] = list(dict.fromkeys([*old, *field_value]))
                elif field_name == "healthcheck":
                    target[field_name] = {**target.get(field_name, {}), **field_value}
                else:
                    target[field_name] = field_value


@functools.cache
def help_options(binary: str) -> dict[str, str]:
    """Each option of ``binary --help`` with its help text."""
    text = subprocess.run(
        [binary, "--help"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    text = text[text.index("options:") :]
    options: dict[str, str] = {}
    current: list[str] = []
    for line in text.splitlines()[1:]:
        if match := re.match(r"^  (-\w, )?(--[a-z0-9-]+)", line):
            current = [line]
            options[match.group(2)] = ""
        elif current:
            current.append(line)
        if current:
            options[list(options)[-1]] = " ".join(current)
    return options


def command(service: dict) -> list[str]:
    return [str(arg) for arg in service.get("command", [])]


def binary(service: dict) -> str:
    return service.get("entrypoint", [DEFAULT_BINARY])[0]


def flag(service: dict, name: str) -> str:
    args = command(service)
    assert args.count(name) == 1, f"{name} in {args}"
    return args[args.index(name) + 1]


def services_of(compose: dict, prefix: str) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if n.startswith(prefix)}


ALL_VARIANTS = [(COMPOSE,), (COMPOSE, INSECURE_OVERLAY)]


@pytest.mark.parametrize("files", ALL_VARIANTS, ids=["secure", "insecure"])
def test_compose_uses_only_current_flower_flags(files: tuple[str, ...]):
    compose = load_compose(*files)
    for name, service in compose["services"].items():
        options = help_options(binary(service))
        for arg in command(service):
            if not arg.startswith("--"):
                continue
            assert arg in options, f"{name}: {binary(service)} has no {arg}"
            text = options[arg].lower()
            assert "deprecated" not in text and "ignored" not in text, f"{name}: {arg}: {text}"
        isolation = "--isolation" in command(service) and flag(service, "--isolation")
        if binary(service) in ("flower-superlink", "flower-supernode"):
            # The apps run in the SuperExec services, not in subprocesses of these.
            assert isolation == "process", name


@pytest.mark.parametrize("files", ALL_VARIANTS, ids=["secure", "insecure"])
def test_compose_ports_and_addresses_agree(files: tuple[str, ...]):
    compose = load_compose(*files)
    services = compose["services"]
    link = services["superlink"]
    assert binary(link) == "flower-superlink"
    port = flag(link, "--port")
    assert flag(link, "--host") == "0.0.0.0"  # reachable from the other containers
    # Published on the host's loopback unless FEDMATCH_BIND says otherwise.
    published = [BIND_DEFAULT.match(str(entry)) for entry in link["ports"]]
    assert [m.groups() if m else None for m in published] == [("127.0.0.1", port, port)]
    for name, service in services.items():
        if name != "superlink":
            assert "ports" not in service, f"{name} publishes {service['ports']}"
    assert f"127.0.0.1:{port}/health" in " ".join(link["healthcheck"]["test"])
    assert flag(services["superexec-serverapp"], "--runtime-api-address") == f"superlink:{port}"

    supernodes = services_of(compose, "supernode-")
    clientapps = services_of(compose, "superexec-clientapp-")
    assert sorted(n.split("-")[-1] for n in clientapps) == sorted(
        n.split("-")[-1] for n in supernodes
    )
    for name, node in supernodes.items():
        assert binary(node) == "flower-supernode"
        assert flag(node, "--superlink") == f"superlink:{port}"
        assert flag(node, "--host") == "0.0.0.0"
        node_port = flag(node, "--port")
        assert f"127.0.0.1:{node_port}/health" in " ".join(node["healthcheck"]["test"])
        clientapp = services[f"superexec-clientapp-{name.split('-')[-1]}"]
        assert binary(clientapp) == DEFAULT_BINARY
        assert flag(clientapp, "--runtime-api-address") == f"{name}:{node_port}"
        assert name in clientapp["depends_on"]
    for name, service in services.items():
        assert service["deploy"]["resources"]["limits"]["cpus"], f"{name} has no CPU limit"
        assert service["image"] == services["superlink"]["image"], name


def test_compose_has_one_supernode_per_digit_domain_with_distinct_node_config():
    compose = load_compose(COMPOSE)
    domains = available_domains("embedded")
    configs = []
    for node in services_of(compose, "supernode-").values():
        pairs = dict(item.split("=") for item in flag(node, "--node-config").split())
        configs.append((int(pairs["partition-id"]), int(pairs["num-partitions"])))
    assert sorted(configs) == [(i, len(domains)) for i in range(len(domains))]
    for variant in ALL_VARIANTS[1:]:
        nodes = services_of(load_compose(*variant), "supernode-").values()
        assert sorted(flag(n, "--node-config") for n in nodes) == sorted(
            flag(n, "--node-config") for n in services_of(compose, "supernode-").values()
        )


def test_compose_volumes_match_the_image_and_the_readme():
    compose = load_compose(COMPOSE)
    services = compose["services"]
    named = set(compose["volumes"])

    def mounts(service: dict) -> dict[str, str]:
        pairs = (v.split(":")[:2] for v in service.get("volumes", []))
        return {target: source for source, target in pairs}

    state_dir = str(Path(flag(services["superlink"], "--database")).parent)
    assert mounts(services["superlink"])[state_dir] in named
    section = (REPO / "docs" / "deployment.md").read_text()
    runs_dir = re.search(r"runs-dir='(/[^']+)'", section).group(1)
    cache_dir = re.search(r"cache-dir='(/[^']+)'", section).group(1)
    for name, service in services.items():
        if name.startswith("superexec-"):
            assert mounts(service).get(runs_dir) in named, name
            assert mounts(service).get(cache_dir) in named, name
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    mkdir = next(line for line in dockerfile.splitlines() if "mkdir -p" in line)
    for path in (state_dir, runs_dir, cache_dir):
        assert path in mkdir  # owned by the image's user, so new volumes are writable


def test_dockerfile_pins_the_installed_flower_and_drops_only_its_line():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.M).group(1)
    version = importlib.metadata.version("flwr")
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    assert base.startswith(f"flwr/superexec:{version}-{python}-"), base
    assert f'ENTRYPOINT ["{DEFAULT_BINARY}"]' in dockerfile
    pattern = re.search(r"sed -i '/(.+)/d' pyproject.toml", dockerfile).group(1)
    pyproject = (REPO / "pyproject.toml").read_text().splitlines()
    dropped = [line for line in pyproject if re.search(pattern.replace("\\[", r"\["), line)]
    assert len(dropped) == 1 and dropped[0].strip().startswith('"flwr['), dropped


def secrets_of(service: dict) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}


def test_compose_default_is_tls_with_supernode_auth_from_the_shipped_scripts(tmp_path: Path):
    compose = load_compose(COMPOSE)
    services = compose["services"]
    secret_files = {name: s["file"] for name, s in compose["secrets"].items()}
    for name, service in services.items():
        args = command(service)
        assert "--insecure" not in args, name
        for arg in args:
            if arg.startswith("/run/secrets/"):
                assert arg.removeprefix("/run/secrets/") in secrets_of(service), (name, arg)
        if binary(service) != "flower-superlink":
            assert flag(service, "--root-certificates") == "/run/secrets/ca-cert", name
        # Secrets are single files; no folder of them is bind-mounted.
        for volume in service.get("volumes", []):
            assert "docker/" not in volume and "/run/secrets" not in volume, (name, volume)
    link = services["superlink"]
    assert flag(link, "--ssl-certfile") == "/run/secrets/superlink-cert"
    assert flag(link, "--ssl-keyfile") == "/run/secrets/superlink-key"
    assert flag(link, "--ssl-ca-certfile") == "/run/secrets/ca-cert"
    assert "--enable-supernode-auth" in command(link)
    assert secrets_of(link) == {"ca-cert", "superlink-cert", "superlink-key"}

    supernodes = services_of(compose, "supernode-")
    for name, node in supernodes.items():
        own = {f"{name}-runtime-cert", f"{name}-runtime-key", f"{name}-auth-key"}
        # The CA certificate and its own keys: not the SuperLink's key, no other node's key.
        assert secrets_of(node) == {"ca-cert", *own}, name
        assert flag(node, "--auth-supernode-private-key") == f"/run/secrets/{name}-auth-key"
        assert flag(node, "--ssl-keyfile") == f"/run/secrets/{name}-runtime-key"
        assert secret_files[f"{name}-auth-key"] == f"./docker/keys/{name}"
    for name, service in services_of(compose, "superexec-").items():
        assert secrets_of(service) == {"ca-cert"}, name
    assert not [f for f in secret_files.values() if f.endswith("ca.key")]

    # Every secret file is one the shipped scripts write.
    certs = generate_certs(tmp_path / "docker" / "certs", supernodes=len(supernodes))
    generate_auth_keys(tmp_path / "docker" / "keys", len(supernodes))
    for name, file in secret_files.items():
        assert (tmp_path / file).is_file(), (name, file)

    # Each certificate names the hosts the services reach it by, and 127.0.0.1.
    def names(path: Path) -> set[str]:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found = set(sans.get_values_for_type(x509.DNSName))
        return found | {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}

    assert {"superlink", "127.0.0.1"} <= names(certs.server_cert)
    for name, node in supernodes.items():
        assert flag(node, "--superlink") == "superlink:8000"
        cert = tmp_path / secret_files[f"{name}-runtime-cert"]
        assert {name, "127.0.0.1"} <= names(cert), name
        assert "superlink" not in names(cert), name


def test_compose_insecure_overlay_says_so_and_drops_every_secret():
    text = (REPO / INSECURE_OVERLAY).read_text()
    assert text.startswith("# INSECURE overlay")
    assert "trusted machine" in text[:600]
    compose = load_compose(COMPOSE, INSECURE_OVERLAY)
    assert "secrets" not in compose
    for name, service in compose["services"].items():
        assert "--insecure" in command(service), name
        assert "secrets" not in service, name
        assert "/run/secrets/" not in " ".join(command(service)), name
        assert "https" not in " ".join(service.get("healthcheck", {}).get("test", [])), name
