"""Logging setup for the processes fedmatch runs in (ServerApp, ClientApp, CLI)."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: int = logging.INFO) -> logging.Logger:
    """Give the ``fedmatch`` logger one stderr handler (Flower streams stderr to `flwr run`)."""
    logger = logging.getLogger("fedmatch")
    if not any(getattr(h, "_fedmatch", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s fedmatch: %(message)s"))
        handler._fedmatch = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger
