"""Helpers for tests that run the real `flwr run` simulation."""

from __future__ import annotations

import json
from pathlib import Path

from fedmatch.localrun import REPO, PrivateFlower

__all__ = ["REPO", "PrivateFlower", "read_jsonl"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
