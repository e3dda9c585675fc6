"""The shell command that reruns a run, safe to paste whatever its config holds.

A run directory may be hostile, and a reader copies this command into a shell: every
argument is quoted with ``shlex.quote``, and each ``--run-config`` value is a TOML value
that Flower's parser (``flwr.common.config.parse_config_args``: ``key="..."`` pairs
split by a regular expression, then TOML) reads back as the value the run had.
"""

from __future__ import annotations

import json
import re
import shlex

from fedmatch.config import RunConfig
from fedmatch.report.runs import RunData

# Left out of reproduce commands: the reader picks where the new run goes.
NOT_IN_COMMAND = frozenset({"runs-dir", "run-name", "resume"})
# Shown unchanged; any other key is a quoted TOML key with every other character escaped.
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Flower's regex ends a "..." value at the first '"', even an escaped one: use \u0022.
_ESCAPES = {"\\": "\\\\", '"': "\\u0022", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(char: str) -> str:
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:  # a lone surrogate (JSON allows it) is no TOML character
        return "\\uFFFD"
    return f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}"


def toml_string(text: str) -> str:
    """A TOML basic string holding ``text``, with no '"', control or line-break character."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char == " " or char.isprintable():
            out.append(char)
        else:
            out.append(_escape(char))
    return '"' + "".join(out) + '"'


def toml_key(key: str) -> str:
    """A TOML key without whitespace, '=' or quotes inside (Flower splits pairs on those)."""
    if _BARE_KEY.fullmatch(key):
        return key
    return '"' + "".join(c if _BARE_KEY.fullmatch(c) else _escape(c) for c in key) + '"'


def toml_scalar(value: object) -> str:
    """``value`` as a TOML value; anything but bool, int, float or str as its JSON text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)  # TOML reads nan, inf and -inf as Python writes them
    if isinstance(value, str):
        return toml_string(value)
    return toml_string(json.dumps(value, sort_keys=True))


def reproduce_argv(run: RunData) -> list[str]:
    """The `flwr run` arguments (from the repository root) that rerun ``run``."""
    defaults = RunConfig().to_flower()
    always = ("strategy", "seed", "num-server-rounds")
    keys = [
        k
        for k, v in run.config.items()
        if k not in NOT_IN_COMMAND and (k in always or defaults.get(k, object()) != v)
    ]
    run_config = " ".join(f"{toml_key(k)}={toml_scalar(run.config[k])}" for k in keys)
    if run.cell and run.cell.get("federation-config"):
        federation = str(run.cell["federation-config"])
    else:
        federation = f"num-supernodes={run.info.get('num_nodes', '?')}"
    return [
        "flwr",
        "run",
        ".",
        "--stream",
        "--run-config",
        run_config,
        "--federation-config",
        federation,
    ]


def reproduce_command(run: RunData) -> str:
    """``reproduce_argv`` as shell lines, every argument quoted."""
    return "export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1\n" + " ".join(
        shlex.quote(arg) for arg in reproduce_argv(run)
    )
