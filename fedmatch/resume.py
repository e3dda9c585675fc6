"""Resuming a run: what may change, the checks before a run directory is reopened, and
reading old run configs with the keys added since.

``RunRecorder.open`` (fedmatch.results) calls :func:`check_resume` and :func:`reopen` under the
run directory's lock; reports and benchmark grids compare saved configs with
:func:`changed_config_keys` and :func:`with_new_keys`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedmatch.atomic import stale_temp_files
from fedmatch.checkpoint import read_checkpoint
from fedmatch.config import ConfigError, RunConfig
from fedmatch.legacy_keys import translate
from fedmatch.run_status import CHECKPOINT, INTERRUPTED, SUMMARY

log = logging.getLogger("fedmatch.results")

# Keys a resumed run may change: it continues the same experiment for longer (and
# ``cells-file`` only says how the run was launched, alone or with others).
RESUMABLE_KEYS = frozenset({"num-server-rounds", "resume", "cells-file"})


def check_resume(run_dir: Path, cfg: RunConfig) -> None:
    """Raise ConfigError unless ``cfg`` continues the run saved in ``run_dir``."""
    _check_same_experiment(_saved_run_config(run_dir / "config.json"), cfg)
    _check_rounds_ahead(run_dir, cfg)


def with_new_keys(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A saved run config completed with the defaults of the keys added since it was saved.

    A new key's default reproduces the behaviour from before it existed (see
    :func:`changed_config_keys`), so this is the config the old run actually ran with; reports
    compare and group runs of different fedmatch versions through it.
    """
    return {**RunConfig().to_flower(), **translate(saved)}


def changed_config_keys(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The run-config keys whose value differs between a saved run and ``current``.

    ``RESUMABLE_KEYS`` never count.  A key the saved run lacks counts only when ``current``
    gives it a value other than its default: a later fedmatch added the key, and a new key's
    default always reproduces the behaviour from before it existed, so an old run stays
    resumable (and an old benchmark grid stays valid) across upgrades.
    """
    defaults = RunConfig().to_flower()
    # Runs saved before the namespaced tables spell their keys flat (legacy_keys.py).
    saved, current = translate(saved), translate(current)
    changed = []
    for key in set(saved) | set(current):
        if key in RESUMABLE_KEYS:
            continue
        if key not in saved and key in defaults and current.get(key) == defaults[key]:
            continue
        if saved.get(key) != current.get(key):
            changed.append(key)
    return sorted(changed)


def _check_rounds_ahead(run_dir: Path, cfg: RunConfig) -> None:
    """Resume continues a run to ``num-server-rounds``; it never cuts completed rounds off.

    More rounds than before continue the run (its metrics and checkpoint go on); fewer than
    it already completed would leave rows and a checkpoint beyond the config's end.
    """
    path = run_dir / CHECKPOINT
    if not path.exists():
        return
    done = int(read_checkpoint(path)["round"])
    if done > cfg.num_server_rounds:
        raise ConfigError(
            f"run-config key 'num-server-rounds' = {cfg.num_server_rounds}: {run_dir} already "
            f"completed {done} rounds. Resume with num-server-rounds >= {done} (more rounds "
            "continue the run), or start a new run-name"
        )


def _saved_run_config(path: Path) -> dict[str, Any]:
    """The run config a run directory's config.json saved; ConfigError naming it otherwise."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))["run_config"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        raise ConfigError(f"{path}: not a fedmatch run's config.json ({err!r})") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path}: 'run_config' is a {type(saved).__name__}, not an object")
    return saved


def reopen(run_dir: Path) -> None:
    """Make a stopped run directory a running one again (under its lock).

    Its interrupted.json and summary.json no longer describe it (the resumed run rewrites the
    summary from all its metrics when it ends), and temp files of writes a killed process never
    finished are debris: no process is writing them while we hold the lock.
    """
    for name in (INTERRUPTED, SUMMARY):
        (run_dir / name).unlink(missing_ok=True)
    for debris in stale_temp_files(run_dir):
        log.info("resume: removing %s, left by a write that never finished", debris.name)
        debris.unlink(missing_ok=True)


def _check_same_experiment(saved: Mapping[str, Any], cfg: RunConfig) -> None:
    current = cfg.to_flower()
    changed = changed_config_keys(saved, current)
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ConfigError(
            f"resume=true but the run config differs from the saved run's ({details}); only "
            f"{', '.join(sorted(RESUMABLE_KEYS))} may change when resuming"
        )
