"""The suite file: pydantic models, validation, and error messages that name the key."""

from __future__ import annotations

import itertools
import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fedmatch.bench.planning import Cell, Scalar, cell_name
from fedmatch.config import (
    ConfigError,
    RunConfig,
    all_keys,
    flatten_keys,
    unknown_key_message,
)

# The runner sets these per cell; a suite may not.
RESERVED_KEYS = frozenset({"runs-dir", "run-name", "resume", "cells-file"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SuiteError(ValueError):
    """A suite file cannot be run; the message names the key, the value and what is allowed."""


def _to_key(name: str) -> str:
    return name.replace("_", "-")


class _Table(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=_to_key, populate_by_name=True
    )


class Federation(_Table):
    """``[federation]``: the simulated federation every cell runs on."""

    num_supernodes: int = Field(ge=1)
    cpus_per_client: float = Field(1, gt=0)
    gpus_per_client: float = Field(0, ge=0)
    # One Ray head for the whole grid (see the package docstring); false: Ray per cell.
    shared_ray: bool = True
    ray_num_cpus: int = Field(0, ge=0)  # 0: every core of this machine
    ray_num_gpus: int = Field(-1, ge=-1)  # -1: whatever Ray detects
    cell_timeout: float = Field(6 * 3600, gt=0)  # seconds; a cell past it is failed
    # Cells per `flwr run` (fedmatch/cells.py): 0 runs all pending cells in one, paying
    # the simulation's start-up once; 1 gives every cell its own `flwr run`.
    cells_per_run: int = Field(0, ge=0)


class ReportOptions(_Table):
    """``[report]``: options of the report built at the end of the grid."""

    # Rounds-to-target column; unset: 0.9 x the best final mean accuracy of the group.
    target_accuracy: float | None = Field(None, gt=0, le=1)


class Suite(_Table):
    """A benchmark suite file."""

    name: str
    description: str = ""
    federation: Federation
    report: ReportOptions = ReportOptions()
    base: dict[str, Scalar] = {}
    axes: dict[str, list[Scalar]] = {}

    @field_validator("name")
    @classmethod
    def _name_chars(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                "must start with a letter or digit and use only letters, digits, '._-'"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _flatten_tables(cls, data: Any) -> Any:
        # `fedka.mmd-weight = 0` in [base] (or [axes]) is a TOML dotted key: a nested table.
        if isinstance(data, Mapping):
            data = dict(data)
            for section in ("base", "axes"):
                if isinstance(data.get(section), Mapping):
                    data[section] = flatten_keys(data[section])
        return data

    @field_validator("base")
    @classmethod
    def _base_keys(cls, value: dict[str, Scalar]) -> dict[str, Scalar]:
        _check_run_config_keys(value, "base")
        return value

    @field_validator("axes")
    @classmethod
    def _axes_values(cls, value: dict[str, list[Scalar]]) -> dict[str, list[Scalar]]:
        _check_run_config_keys(value, "axes")
        for key, values in value.items():
            if not values:
                raise ValueError(f"axis {key!r} = []: give at least one value")
            seen = [json.dumps(v) for v in values]
            if len(set(seen)) != len(seen):
                raise ValueError(f"axis {key!r} = {values!r}: lists a value more than once")
        return value

    # ------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: Path) -> Suite:
        """Read and validate a suite file, including every cell's run config."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise SuiteError(f"suite file {path} does not exist") from None
        except tomllib.TOMLDecodeError as err:
            raise SuiteError(f"suite file {path} is not valid TOML: {err}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<suite>") -> Suite:
        try:
            suite = cls.model_validate(dict(data))
        except ValidationError as err:
            raise SuiteError(_format_suite_errors(err, data, source)) from None
        overlap = sorted(set(suite.base) & set(suite.axes))
        if overlap:
            raise SuiteError(
                f"suite {source}: key(s) {', '.join(map(repr, overlap))} are set in both "
                "[base] and [axes]; keep each key in one of them"
            )
        suite.cells(source)  # validates every cell's run config
        return suite

    # ------------------------------------------------------------ cells

    def cells(self, source: str = "<suite>") -> list[Cell]:
        """Every cell of the grid, in axis order (the first axis varies slowest)."""
        keys = list(self.axes)
        cells, problems = [], {}
        for values in itertools.product(*(self.axes[k] for k in keys)):
            axes = dict(zip(keys, values, strict=True))
            name = cell_name(axes) if axes else self.name
            overrides = {**self.base, **axes}
            try:
                cfg = RunConfig.from_flower({**overrides, "run-name": name})
                self._check_federation(cfg)
            except ConfigError as err:
                where = ", ".join(f"{k}={v!r}" for k, v in axes.items()) or "no axes"
                # The same [base] mistake would repeat for every cell: report it once.
                problems.setdefault(str(err), f"cell {name} ({where})")
                continue
            cells.append(Cell(name=name, axes=axes, overrides=overrides, cfg=cfg))
        if problems:
            details = "\n".join(f"{cell}: {msg}" for msg, cell in list(problems.items())[:10])
            raise SuiteError(f"suite {source}: invalid run config in [base]/[axes]:\n{details}")
        names = [c.name for c in cells]
        if len(set(names)) != len(names):  # only if two values sanitise and hash alike
            raise SuiteError(f"suite {source}: two cells share a name: {names}")
        return cells

    def _check_federation(self, cfg: RunConfig) -> None:
        from fedmatch.data.loaders import available_domains

        cfg.domain_names(available_domains(cfg.dataset))
        if cfg.min_available_nodes > self.federation.num_supernodes:
            raise ConfigError(
                f"run-config key 'min-available-nodes' = {cfg.min_available_nodes} exceeds "
                f"[federation] num-supernodes = {self.federation.num_supernodes}: the server "
                "would wait for SuperNodes that never come"
            )

    def federation_config(self) -> str:
        """The ``--federation-config`` value of every cell."""
        fed = self.federation
        return (
            f"num-supernodes={fed.num_supernodes} "
            f"client-resources-num-cpus={_number(fed.cpus_per_client)} "
            f"client-resources-num-gpus={_number(fed.gpus_per_client)}"
        )


def _check_run_config_keys(table: Mapping[str, Any], where: str) -> None:
    allowed = set(all_keys())
    for key in table:
        if key in RESERVED_KEYS:
            raise ValueError(
                f"key {key!r} is set by `fedmatch bench` for every cell (runs go to "
                "<out>/runs/<cell-name>, interrupted cells resume); remove it"
            )
        if key not in allowed:
            raise ValueError(f"[{where}]:{unknown_key_message(key).removeprefix('  -')}")


def _format_suite_errors(err: ValidationError, data: Mapping[str, Any], source: str) -> str:
    lines = [f"invalid suite file {source}:"]
    for item in err.errors():
        location = [str(part) for part in item.get("loc", ())]
        key = ".".join(location)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            table = _table_model(location[:-1])
            allowed = ", ".join(_to_key(name) for name in table.model_fields) if table else ""
            lines.append(f"  - unknown key {key!r}; allowed here: {allowed}")
        elif item["type"] == "missing":
            lines.append(f"  - key {key!r} is missing (required)")
        elif location in (["base"], ["axes"]):
            lines.append(f"  - [{location[0]}]: {message}")  # the message names the key
        else:
            value = _lookup(data, location)
            shown = f" = {value!r}" if value is not _MISSING else ""
            lines.append(f"  - key {key!r}{shown}: {message}")
    return "\n".join(lines)


_MISSING = object()


def _lookup(data: Any, location: list[str]) -> Any:
    for part in location:
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return _MISSING
    return data


def _table_model(location: list[str]) -> type[BaseModel] | None:
    tables: dict[tuple[str, ...], type[BaseModel]] = {
        (): Suite,
        ("federation",): Federation,
        ("report",): ReportOptions,
    }
    return tables.get(tuple(location))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
