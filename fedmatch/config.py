"""The run configuration: common keys at the top level, each method's keys in its table.

Flower hands the ServerApp and every ClientApp ``context.run_config``: the
``[tool.flwr.app.config]`` table of ``pyproject.toml`` with ``--run-config`` overrides,
flattened to dotted keys (``fedka.mmd-weight``).  ``RunConfig.from_flower`` validates
the common keys here and every table with its params class (``fedmatch/params.py`` and
the methods' own, found through ``fedmatch/methods.py``), and refuses unknown keys (with
did-you-mean) and bad values in one message that names each key, the value given and what
is allowed, so that a typo stops the run before any client trains.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from fedmatch import methods as registry
from fedmatch.legacy_keys import LEGACY_KEYS
from fedmatch.params import RUN_CONFIG_MODEL, ParamsTable, RunConfigModel, expand_home, to_key

_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Run names become directory names; 128 leaves room under the usual 255-byte file-name
# limit for suffixes (bench cells add their axes).
RUN_NAME_MAX = 128

P = TypeVar("P", bound=ParamsTable)


class ConfigError(ValueError):
    """A run-config key has a value fedmatch cannot use; the message says which and why."""


def _default_tables() -> dict[str, ParamsTable]:
    return {name: cls() for name, cls in registry.tables().items()}


class RunConfig(RunConfigModel):
    """The validated run config: the common keys as fields, every table in ``tables``.

    Field names are the dashed run-config keys with ``_`` for ``-``; ``docs/config.md``
    documents every key.  Read a method's table with ``cfg.params(FedKAParams)``.
    """

    model_config = RUN_CONFIG_MODEL

    # What to run: a registered method (fedmatch/methods.py).
    strategy: str = "fedavg"
    """server strategy (see Methods)"""
    num_server_rounds: int = Field(5, ge=1)
    """rounds; may grow when resuming"""
    seed: int = Field(0, ge=0)
    """seeds model init, partitioning, sampling and client shuffling"""

    # Data.
    dataset: Literal["embedded", "digit-five", "torchvision"] = "embedded"
    """data source (see Data)"""
    data_root: str = ""
    """where `digit-five` / `torchvision` files are"""
    domains: str = "all"
    """which domains take part, in that order"""
    partitioning: Literal["domain", "dirichlet", "iid"] = "domain"
    """how clients are formed (see Data)"""
    alpha: float = Field(0.5, gt=0)  # Dirichlet concentration of partitioning='dirichlet'
    """Dirichlet concentration (smaller = more label skew)"""
    train_subset: int = Field(0, ge=0)
    """cap each client's training set (0 = all); for quick runs"""
    # Hold one domain out of the clients for any method (leave-one-domain-out); FedKA's
    # server keeps its unlabelled training split, and FedAvg gives the source-only baseline.
    target_domain: str = ""
    """hold this domain out of the clients (leave-one-domain-out; any strategy); required by
    `fedka`"""

    # Model.
    model: Literal["convnet", "resnet18", "fedka-cnn"] = "convnet"
    """network (`fedka-cnn`: FedKA's DANN-style digit CNN)"""
    model_width: int = Field(64, ge=1)
    """ConvNet channels (DM/FedLGD use 128)"""
    model_depth: int = Field(3, ge=1, le=4)
    """ConvNet blocks"""
    model_norm: Literal["instancenorm", "batchnorm", "groupnorm", "none"] = "instancenorm"
    """normalisation layers"""

    # Local training of the classifier methods.
    local_epochs: int = Field(1, ge=1)
    """local epochs per round"""
    max_local_steps: int = Field(0, ge=0)
    """cap local SGD steps per round (0 = no cap)"""
    batch_size: int = Field(32, ge=1)
    """local batch size"""
    lr: float = Field(0.01, gt=0, le=100)
    """local SGD"""
    momentum: float = Field(0.9, ge=0, lt=1)
    """local SGD"""
    weight_decay: float = Field(5e-4, ge=0, le=1)
    """local SGD"""
    # What local training runs on: the real partition, or the client's local virtual data
    # (distilled once per run with the distill.* keys; the FedLGD protocol).
    train_data: Literal["real", "distilled"] = "real"
    """what local training runs on: the client's real partition, or its **local virtual data** (the
    FedLGD protocol: initialised from `virtual-init`, warmed up once per run with `distill-
    method` for `distill-steps` steps, `ipc` images per class and the other `distill-*` keys,
    kept in node state, reused every round; the same set `fedlgd` starts from; evaluation stays
    on real test data). Any classifier strategy (`fedavg` … `vhl`); not `feddm` or `fedka`;
    `fedlgd` always trains on virtual data"""

    # Participation.
    fraction_train: float = Field(1.0, gt=0, le=1)
    """share of clients sampled per round (seeded by round)"""
    fraction_evaluate: float = Field(1.0, ge=0, le=1)
    """share of clients evaluating per round (0 = none)"""
    min_available_nodes: int = Field(2, ge=1)
    """SuperNodes to wait for before starting; the run stops (resumable) if fewer remain"""
    # Seconds a round's training (or evaluation) phase waits for replies; a node
    # that has not replied by then is dropped from the run (see strategies/exchange.py).
    round_timeout: float = Field(3600.0, gt=0)
    """seconds a round's training or evaluation waits for replies; a node silent that long is
    dropped"""

    # Evaluation, results, caching, devices.
    server_eval: bool = True
    """evaluate the global model on every domain's test split on the server"""
    runs_dir: str = "~/fedmatch-runs"
    """where run directories go"""
    run_name: str = ""
    """run directory name (empty: `<strategy>-<partitioning>-seed<seed>-<time>`)"""
    resume: bool = False
    """continue `run-name` from its last completed round"""
    # A JSON file of cells (run configs) this one `flwr run` runs one after another on
    # the same nodes; written by `fedmatch bench` (see fedmatch/cells.py).
    cells_file: str = ""
    """run several runs (cells) one after another in this `flwr run`, each with the run-config
    overrides the file gives it; written by `fedmatch bench` (format: `fedmatch/cells.py`)"""
    cache_dir: str = "~/.cache/fedmatch"
    """cache of the embedded domains"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto` = CUDA when the client process sees a GPU"""

    # Every table by name (shared and the methods' own); not a run-config key itself.
    tables: dict[str, ParamsTable] = Field(default_factory=_default_tables, exclude=True)

    @field_validator("strategy")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in registry.method_names():
            raise ValueError(
                f"unknown method{_suggest(value, registry.method_names())}; "
                f"allowed: {', '.join(map(repr, registry.method_names()))}"
            )
        return value

    @field_validator("runs_dir", "cache_dir", "data_root", "cells_file")
    @classmethod
    def _path(cls, value: str, info: ValidationInfo) -> str:
        path = expand_home(value)
        if info.field_name not in ("runs_dir", "cache_dir"):
            return value
        # The ServerApp runs in the working directory of whichever `flwr run` first
        # started the background SuperLink, so a relative path would land somewhere
        # the user did not choose.
        if not value:
            raise ValueError("must not be empty")
        if not path.is_absolute():
            raise ValueError(
                "must be an absolute path or start with '~' (relative paths would resolve "
                "against the background SuperLink's working directory)"
            )
        return value

    @field_validator("run_name")
    @classmethod
    def _run_name_chars(cls, value: str) -> str:
        if value and not _RUN_NAME.fullmatch(value):
            raise ValueError(
                "must start with a letter or digit and contain only letters, digits, "
                "'.', '_' and '-' (or be empty for an automatic name)"
            )
        if len(value) > RUN_NAME_MAX:
            raise ValueError(f"is {len(value)} characters long; at most {RUN_NAME_MAX}")
        return value

    @field_validator("domains")
    @classmethod
    def _domains_syntax(cls, value: str) -> str:
        names = [part.strip() for part in value.split(",")]
        if not value.strip() or any(not name for name in names):
            raise ValueError("must be 'all' or a comma-separated list of domain names")
        if len(set(names)) != len(names):
            raise ValueError("lists a domain more than once")
        return value

    @model_validator(mode="after")
    def _cross_field_checks(self) -> RunConfig:
        if self.dataset != "embedded" and not self.data_root:
            raise ValueError(
                f"data-root is empty but dataset={self.dataset!r} reads files from disk: "
                "set data-root to the folder that holds them"
            )
        if self.resume and not self.run_name:
            raise ValueError("resume=true needs run-name: the name of the run to continue")
        if self.target_domain and self.domains.strip() != "all":
            names = [part.strip() for part in self.domains.split(",")]
            if self.target_domain not in names:
                raise ValueError(
                    f"target-domain={self.target_domain!r} is not among domains="
                    f"{self.domains!r}: list it there (it is held out from the clients)"
                )
            if names == [self.target_domain]:
                raise ValueError(
                    f"domains={self.domains!r} leaves no source domain once target-domain="
                    f"{self.target_domain!r} is held out: list at least one more domain"
                )
        method = self.method
        if self.train_data == "distilled" and not method.distilled_data:
            allowed = [m.name for m in registry.methods().values() if m.distilled_data]
            raise ValueError(
                f"train-data='distilled' is not allowed with strategy={self.strategy!r}: it "
                f"trains on local virtual data with {', '.join(allowed)} only"
            )
        for name in method.table_names():
            self.tables[name].check_run(self)
        return self

    def __hash__(self) -> int:
        # Hashable like any frozen model (loaders cache on it), tables included.
        return hash(tuple(sorted((k, repr(v)) for k, v in self.to_flower().items())))

    # ------------------------------------------------------------------ building

    @classmethod
    def from_flower(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Build from ``context.run_config`` (dotted or nested keys).

        Raises ``ConfigError`` naming every unknown key (with did-you-mean) and every
        bad value.
        """
        common, by_table, unknown = _split(run_config)
        errors: list[str] = [unknown_key_message(key) for key in unknown]
        built: dict[str, ParamsTable] = {}
        for name, cls_ in registry.tables().items():
            try:
                built[name] = cls_.model_validate(by_table.get(name, {}))
            except ValidationError as err:
                errors.extend(_format_errors(err, by_table.get(name, {}), prefix=f"{name}."))
        if errors:
            # Report table errors with the common ones (validated without tables below).
            try:
                cls.model_validate({**common, "tables": _default_tables()})
            except ValidationError as err:
                errors.extend(_format_errors(err, common))
            raise ConfigError("invalid run config:\n" + "\n".join(errors))
        try:
            return cls.model_validate({**common, "tables": built})
        except ValidationError as err:
            raise ConfigError(
                "invalid run config:\n" + "\n".join(_format_errors(err, common))
            ) from None

    def to_flower(self) -> dict[str, Any]:
        """The flat dotted-key dict Flower uses (the inverse of ``from_flower``)."""
        flat = self.model_dump(by_alias=True)
        for name, table in self.tables.items():
            for key, value in table.model_dump(by_alias=True).items():
                flat[f"{name}.{key}"] = value
        return flat

    def replace(self, updates: Mapping[str, Any]) -> RunConfig:
        """A validated copy with ``updates`` (run-config keys, dotted for tables) applied."""
        return RunConfig.from_flower({**self.to_flower(), **dict(updates)})

    # ------------------------------------------------------------------ reading

    @property
    def method(self) -> registry.Method:
        return registry.get_method(self.strategy)

    def params(self, cls: type[P]) -> P:
        """The run's table of params class ``cls`` (e.g. ``cfg.params(DistillParams)``)."""
        table = self.tables[cls.table]
        if not isinstance(table, cls):
            raise TypeError(f"table {cls.table!r} holds {type(table).__name__}, not {cls}")
        return table

    def table(self, name: str) -> Any:
        """The table ``name``, for code that reads a method's keys without importing its class."""
        return self.tables[name]

    def domain_names(self, available: tuple[str, ...]) -> tuple[str, ...]:
        """Resolve ``domains`` against the dataset's available domain names."""
        if self.domains.strip() == "all":
            return available
        names = tuple(part.strip() for part in self.domains.split(","))
        bad = [name for name in names if name not in available]
        if bad:
            raise ConfigError(
                f"run-config key 'domains' = {self.domains!r}: unknown domain(s) "
                f"{', '.join(map(repr, bad))} for dataset={self.dataset!r}. "
                f"Allowed: 'all' or a comma-separated subset of {', '.join(available)}"
            )
        return names

    def source_domains(self, available: tuple[str, ...]) -> tuple[str, ...]:
        """The clients' domains: ``domain_names`` without ``target-domain`` (if one is set)."""
        names = self.domain_names(available)
        if not self.target_domain:
            return names
        if self.target_domain not in available:
            raise ConfigError(
                f"run-config key 'target-domain' = {self.target_domain!r}: unknown domain for "
                f"dataset={self.dataset!r}. Allowed: '' (none) or one of {', '.join(available)}"
            )
        return tuple(name for name in names if name != self.target_domain)

    @property
    def runs_path(self) -> Path:
        return Path(self.runs_dir).expanduser()

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()


def common_keys() -> list[str]:
    return [to_key(name) for name in RunConfig.model_fields if name != "tables"]


def all_keys() -> list[str]:
    """Every run-config key: the common ones, then ``table.key`` for every table."""
    keys = common_keys()
    for name, cls in registry.tables().items():
        keys.extend(f"{name}.{to_key(field)}" for field in cls.model_fields)
    return keys


def _split(
    run_config: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[str]]:
    """Common keys, per-table keys and unknown keys of a flat (dotted) or nested mapping."""
    common_names = set(common_keys())
    table_classes = registry.tables()
    common: dict[str, Any] = {}
    by_table: dict[str, dict[str, Any]] = {}
    unknown: list[str] = []
    for key, value in flatten_keys(run_config).items():
        name, dot, rest = key.partition(".")
        if not dot:
            if key in common_names:
                common[key] = value
            else:
                unknown.append(key)
        elif name in table_classes and "." not in rest:
            fields = {to_key(f) for f in table_classes[name].model_fields}
            if rest in fields:
                by_table.setdefault(name, {})[rest] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    return common, by_table, sorted(unknown)


def flatten_keys(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            flat.update(flatten_keys(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _suggest(key: str, candidates: Any) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key_message(key: str) -> str:
    if key in LEGACY_KEYS:
        return (
            f"  - unknown run-config key {key!r}: it was renamed to {LEGACY_KEYS[key]!r} "
            "(docs/config.md lists every key)"
        )
    return (
        f"  - unknown run-config key {key!r}{_suggest(key, all_keys())}; "
        "docs/config.md (or `fedmatch config list`) lists every key"
    )


def _format_errors(err: ValidationError, given: Mapping[str, Any], prefix: str = "") -> list[str]:
    lines = []
    for item in err.errors():
        location = [part for part in item.get("loc", ()) if part != "tables"]
        message = item["msg"].removeprefix("Value error, ")
        if location:
            key = prefix + to_key(str(location[0]))
            value = given.get(key.removeprefix(prefix), item.get("input"))
            lines.append(f"  - run-config key {key!r} = {value!r}: {message}")
        else:
            lines.append(f"  - {message}")
    return lines
