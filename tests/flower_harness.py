"""Helpers for tests that run the real `flwr run` simulation."""

from __future__ import annotations

import json
from pathlib import Path

from fedmatch.config import RunConfig
from fedmatch.legacy_keys import translate
from fedmatch.localrun import REPO, PrivateFlower

__all__ = ["REPO", "PrivateFlower", "make_config", "read_jsonl", "with_values"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_config(**values: object) -> RunConfig:
    """A validated RunConfig from Python-style names (``distill_method="ncfm"``).

    Common keys keep their names; a table's key may be given by its pre-table flat name
    (``ipc``, ``mmd_weight``), which ``fedmatch.legacy_keys`` maps to its table.
    """
    return RunConfig.from_flower(translate({k.replace("_", "-"): v for k, v in values.items()}))


def with_values(cfg: RunConfig, **values: object) -> RunConfig:
    """``cfg`` with ``values`` (named as for ``make_config``) applied and validated."""
    return cfg.replace(translate({k.replace("_", "-"): v for k, v in values.items()}))
