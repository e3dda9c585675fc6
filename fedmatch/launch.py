"""``fedmatch run``: ``flwr run`` that Ctrl-C really stops, and whose exit status says how
the run ended.

``flwr run --stream`` only follows a run's log.  Ctrl-C ends the following while the run
goes on in the background (the SuperLink keeps its simulation process and Ray workers), and
it exits 0 whether the run finished, failed or never started.  ``fedmatch run`` validates the
run config, starts the same ``flwr run``, streams its log, and

* exits 0 when the run wrote a summary with status "done", 1 when it failed or ended without
  one, 2 when the run config is invalid (nothing is started then);
* on Ctrl-C (SIGINT, also SIGTERM and SIGHUP): kills the process running the ServerApp (the
  holder of the run directory's lock; before the directory exists, the simulation process the
  local SuperLink started for this run) and its Ray workers, tells the SuperLink the run is
  stopped (``flwr stop``), marks the run directory interrupted (``interrupted.json`` with the
  last completed round) and prints the command that continues it; exits 130.

The local SuperLink itself stays up, idle, for the next run (``fedmatch stop-superlink``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from fedmatch.config import ConfigError, RunConfig
from fedmatch.localrun import (
    cmdline,
    local_superlink_port,
    local_superlinks,
    process_tree,
    stale_reason,
    stop_tree,
)
from fedmatch.run_status import mark_stopped, run_state
from fedmatch.runlock import RunDirLock, RunLockedError

log = logging.getLogger("fedmatch.launch")

__all__ = ["load_run_config", "run"]

_STARTED = re.compile(r"Successfully started run (\d+)")
_RUN_DIR = re.compile(r"run directory: (\S+)")
INTERRUPTED_EXIT = 130


def merged_overrides(run_config: Sequence[str]) -> dict[str, Any]:
    """The ``--run-config`` items, TOML files and ``key=value`` strings alike, as one flat
    dict in which a later item wins key by key.

    ``flwr run`` refuses a TOML file beside key-value pairs, and merges repeated items table
    by table (a later ``diffusion.x=1`` drops every other ``diffusion.*`` key given before),
    so the wrapper merges them itself and hands Flower one string (:func:`override_string`).
    """
    import tomllib

    from flwr.common.config import flatten_dict, parse_config_args

    merged: dict[str, Any] = {}
    for item in run_config:
        try:
            if item.strip().endswith(".toml") and "=" not in item:
                path = Path(item.strip()).expanduser()
                merged.update(flatten_dict(tomllib.loads(path.read_text())))
            else:
                merged.update(parse_config_args([item]))
        except Exception as err:  # OS, TOML and Flower's click errors alike
            raise ConfigError(f"--run-config {item!r}: {err}") from None
    return merged


def _toml_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str) and "\n" not in value:
        if "'" not in value:
            return f"'{value}'"  # a TOML literal string: no escapes
        if '"' not in value and "\\" not in value:
            return f'"{value}"'
    raise ConfigError(
        f"run-config key {key!r} = {value!r}: Flower's --run-config carries only booleans, "
        "numbers and one-line strings without both kinds of quote"
    )


def override_string(overrides: dict[str, Any]) -> str:
    """``overrides`` as the one ``key=value ...`` string ``flwr run --run-config`` parses back
    to the same values."""
    return " ".join(f"{key}={_toml_value(key, value)}" for key, value in overrides.items())


def load_run_config(app: Path, run_config: Sequence[str]) -> RunConfig:
    """The run config ``flwr run <app> --run-config ...`` would give the ServerApp, validated.

    Raises :class:`ConfigError` naming the bad key (or the file/flag) and what is allowed.
    """
    import tomllib

    from flwr.common.config import flatten_dict

    from fedmatch.data.loaders import available_domains

    pyproject = Path(app) / "pyproject.toml"
    try:
        table = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{pyproject}: no [tool.flwr.app.config] table ({err})") from None
    overrides = merged_overrides(run_config)
    override_string(overrides)  # refuses a value Flower could not carry, before anything runs
    cfg = RunConfig.from_flower({**flatten_dict(table), **overrides})
    cfg.source_domains(available_domains(cfg.dataset))
    return cfg


@dataclass
class _Run:
    """What the wrapper learns about its run from ``flwr run``'s output."""

    run_id: str | None = None
    run_dir: Path | None = None
    simulations_before: set[int] = field(default_factory=set)


def _local_simulations() -> set[int]:
    """``flwr-simulation`` processes of the local SuperLink ``flwr run`` would use."""
    found: set[int] = set()
    for link in local_superlinks(port=local_superlink_port()):
        found |= {p for p in process_tree(link) if "flwr-simulation" in cmdline(p)}
    return found


def run(
    app: Path,
    run_config: Sequence[str],
    *,
    connection: str | None = None,
    federation_config: str | None = None,
    out: TextIO | None = None,
) -> int:
    """Run the app once with ``flwr run`` and follow it (see the module docstring)."""
    out = sys.stdout if out is None else out
    try:
        cfg = load_run_config(app, run_config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if connection is None:
        _restart_stale_superlink(out)
    command = ["flwr", "run", str(app), *([connection] if connection else []), "--stream"]
    overrides = override_string(merged_overrides(run_config))
    if overrides:
        command += ["--run-config", overrides]
    if federation_config:
        command += ["--federation-config", federation_config]
    state = _Run(simulations_before=_local_simulations() if connection is None else set())
    # Termination of any kind ends in the KeyboardInterrupt handler below (shells start
    # background jobs with SIGINT ignored, so it is set explicitly too).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    # Its own session: a terminal's Ctrl-C reaches only this process, which stops the run,
    # not `flwr run`, which would only stop following it.
    process = subprocess.Popen(
        command,
        cwd=app,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            out.write(line)
            out.flush()
            if state.run_id is None and (match := _STARTED.search(line)):
                state.run_id = match.group(1)
            if state.run_dir is None and (match := _RUN_DIR.search(line)):
                state.run_dir = Path(match.group(1))
        returncode = process.wait()
    except KeyboardInterrupt:
        return _interrupt(process, state, cfg, app, run_config, connection, out)
    return _outcome(returncode, state, out)


def _outcome(returncode: int, state: _Run, out: TextIO) -> int:
    if state.run_dir is None:
        print(
            f"error: the run did not start or did not report its run directory (flwr run exit "
            f"{returncode}); see the log above",
            file=sys.stderr,
        )
        return 1
    result = run_state(state.run_dir)
    if result.status == "done":
        out.write(f"run directory: {state.run_dir}\n")
        return 0
    print(f"error: run {state.run_dir} is {result.status}: {result.detail}", file=sys.stderr)
    return 1


def _interrupt(
    process: subprocess.Popen[str],
    state: _Run,
    cfg: RunConfig,
    app: Path,
    run_config: Sequence[str],
    connection: str | None,
    out: TextIO,
) -> int:
    out.write(f"\ninterrupted: stopping run {state.run_id or '(not started yet)'}...\n")
    out.flush()
    with contextlib.suppress(ProcessLookupError):
        process.kill()  # only follows the log
    process.wait()
    _end_server_app(state)
    if state.run_id is not None:
        # The SuperLink records the run as stopped (it would end it itself at a heartbeat when
        # the ServerApp runs elsewhere, as on a remote deployment).
        subprocess.run(
            ["flwr", "stop", state.run_id, *([connection] if connection else [])],
            cwd=app,
            capture_output=True,
            timeout=60,
            check=False,
        )
    run_dir = state.run_dir
    if run_dir is None:
        run_dir = cfg.runs_path / cfg.run_name if cfg.run_name else None
    if run_dir is None or not (run_dir / "config.json").exists():
        out.write("stopped before the run directory was created: nothing to resume\n")
        return INTERRUPTED_EXIT
    try:
        result = mark_stopped(run_dir, "stopped by its user (fedmatch run, Ctrl-C)")
    except RunLockedError as err:
        out.write(f"error: could not mark {run_dir} interrupted: {err}\n")
        return INTERRUPTED_EXIT
    if result.status in ("done", "failed"):
        out.write(f"the run had already ended ({result.status}): {run_dir}\n")
        return 0 if result.status == "done" else 1
    completed = result.completed_round
    resume = [
        "fedmatch",
        "run",
        str(app),
        *(arg for item in run_config for arg in ("--run-config", item)),
        "--run-config",
        f"resume=true run-name='{run_dir.name}' runs-dir='{run_dir.parent}'",
    ]
    out.write(
        f"run {run_dir} interrupted after round {completed or 0} of {cfg.num_server_rounds}; "
        f"continue it with:\n  {shlex.join(resume)}\n"
    )
    return INTERRUPTED_EXIT


def _end_server_app(state: _Run) -> None:
    """Kill the process running the ServerApp, then its children (Ray and its workers).

    SIGKILL first, and no grace: a ServerApp that went on after Ctrl-C could finish a round
    with its clients already gone and write it as a round with dropped clients.  Killed, it
    writes nothing more, and a run directory survives a kill at any point (atomic files, a
    metrics file whose torn last line is dropped), so resume continues from the checkpoint.
    """
    pids: list[int] = []
    if state.run_dir is not None and (holder := RunDirLock(state.run_dir).live_holder()):
        pids = [holder]
    else:
        new = sorted(_local_simulations() - state.simulations_before)
        if len(new) == 1:  # more would include another user's run: leave them to flwr stop
            pids = new
    for pid in pids:
        children = process_tree(pid)[1:]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        for child in children:
            stop_tree(child, timeout=10.0)


def _restart_stale_superlink(out: TextIO) -> None:
    """Stop a local SuperLink whose environment cannot run fedmatch (the next run restarts it)."""
    venv_bin = str(Path(sys.executable).parent)
    for pid in local_superlinks(port=local_superlink_port()):
        reason = stale_reason(pid, venv_bin)
        if reason is not None:
            out.write(f"restarting the local SuperLink (pid {pid}): {reason}\n")
            stop_tree(pid)
