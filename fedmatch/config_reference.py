"""What the params classes say about the keys, as text: pyproject defaults, docs, listings.

Each key is defined once, in its params class; the ``[tool.flwr.app.config]`` block of
``pyproject.toml`` and ``docs/config.md`` are generated from the classes here
(``fedmatch config pyproject`` / ``fedmatch config docs``), and a test checks both
against the classes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fedmatch import methods as registry
from fedmatch.config import RunConfig
from fedmatch.params import to_key

PYPROJECT_BEGIN = "# BEGIN generated run config (fedmatch config pyproject)"
PYPROJECT_END = "# END generated run config"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def _fields(cls: type[BaseModel]) -> Iterator[tuple[str, FieldInfo]]:
    for name, info in cls.model_fields.items():
        if name != "tables":
            yield to_key(name), info


def _tables_in_order() -> list[tuple[str, type[BaseModel]]]:
    return list(registry.tables().items())


def defaults_toml() -> str:
    """The ``[tool.flwr.app.config]`` tables with every key's default."""
    lines = [PYPROJECT_BEGIN, "[tool.flwr.app.config]"]
    lines += [f"{key} = {_toml_value(info.default)}" for key, info in _fields(RunConfig)]
    for name, cls in _tables_in_order():
        lines += ["", f"[tool.flwr.app.config.{name}]"]
        lines += [f"{key} = {_toml_value(info.default)}" for key, info in _fields(cls)]
    lines.append(PYPROJECT_END)
    return "\n".join(lines) + "\n"


def allowed(info: FieldInfo) -> str:
    """The values a key accepts, in words (type, choices, range)."""
    annotation = info.annotation
    if get_origin(annotation) is Literal:
        return ", ".join(repr(choice) for choice in get_args(annotation))
    kind = getattr(annotation, "__name__", str(annotation))
    bounds = []
    for item in info.metadata:
        for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            bound = getattr(item, attr, None)
            if bound is not None:
                bounds.append(f"{symbol} {bound}")
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def _meaning(info: FieldInfo) -> str:
    return (info.description or "").replace("|", "\\|").replace("\n", " ")


def readers() -> dict[str, list[str]]:
    """Table name -> the methods that read it."""
    found: dict[str, list[str]] = {name: [] for name in registry.tables()}
    for method in registry.methods().values():
        for table in method.table_names():
            found[table].append(method.name)
    return found


def reference_markdown() -> str:
    """``docs/config.md``: every key with its default and allowed values, table by table."""
    out = [
        "# Run-config keys",
        "",
        "Generated from the params classes by `fedmatch config docs`; do not edit by hand "
        '(a test checks it). Set keys with `flwr run . --run-config "key=value '
        'table.key=value"` (TOML values: strings need quotes).',
        "",
        "## Common keys",
        "",
        "| key | default | allowed | meaning |",
        "|---|---|---|---|",
    ]
    out += [
        f"| `{key}` | `{_toml_value(info.default)}` | {allowed(info)} | {_meaning(info)} |"
        for key, info in _fields(RunConfig)
    ]
    out.append("")
    out.append("`strategy` is one of: " + ", ".join(f"`{m}`" for m in registry.method_names()))
    read_by = readers()
    for name, cls in _tables_in_order():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        out += ["", f"## `{name}`", "", doc, "", f"Read by: {', '.join(read_by[name]) or '-'}."]
        out += ["", "| key | default | allowed | meaning |", "|---|---|---|---|"]
        out += [
            f"| `{name}.{key}` | `{_toml_value(info.default)}` | {allowed(info)} "
            f"| {_meaning(info)} |"
            for key, info in _fields(cls)
        ]
    return "\n".join(out) + "\n"


def method_listing(method_name: str | None = None) -> str:
    """``fedmatch config list``: the methods, or one method's keys with defaults."""
    if method_name is None:
        width = max(len(name) for name in registry.method_names())
        rows = [f"{m.name:<{width}}  {m.summary}" for m in registry.methods().values()]
        return "\n".join(rows) + "\n"
    method = registry.get_method(method_name)
    lines = [f"{method.name}: {method.summary}", f"  strategy: {method.strategy}"]
    lines.append(f"  client workload: {method.train}")
    for table in method.table_names():
        cls = registry.tables()[table]
        lines.append(f"  [{table}]")
        lines += [
            f"    {table}.{key} = {_toml_value(info.default)}    # {allowed(info)}"
            for key, info in _fields(cls)
        ]
    return "\n".join(lines) + "\n"
