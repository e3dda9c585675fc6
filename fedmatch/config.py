"""The run configuration: one validated pydantic model built from Flower's flat run config.

Flower hands the ServerApp and every ClientApp ``context.run_config``: the
``[tool.flwr.app.config]`` table of ``pyproject.toml`` with ``--run-config``
overrides applied, as a flat dict with dashed keys.  ``RunConfig.from_flower``
turns it into typed fields and rejects unknown keys and bad values with one
message that names each key, the value given and what is allowed, so that a
typo stops the run before any client trains.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ConfigError(ValueError):
    """A run-config key has a value fedmatch cannot use; the message says which and why."""


def _to_key(field_name: str) -> str:
    return field_name.replace("_", "-")


class RunConfig(BaseModel):
    """Every run-config key of fedmatch, with its allowed values.

    Field names are the dashed run-config keys with ``_`` for ``-``; README.md
    ("Run-config keys") documents each one.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=_to_key, populate_by_name=True
    )

    # What to run.
    strategy: Literal["fedavg", "fedprox", "fedbn"] = "fedavg"
    num_server_rounds: int = Field(5, ge=1)
    seed: int = Field(0, ge=0)

    # Data.
    dataset: Literal["embedded", "digit-five", "torchvision"] = "embedded"
    data_root: str = ""
    domains: str = "all"
    partitioning: Literal["domain", "dirichlet", "iid"] = "domain"
    alpha: float = Field(0.5, gt=0)
    train_subset: int = Field(0, ge=0)

    # Model.
    model: Literal["convnet", "resnet18"] = "convnet"
    model_width: int = Field(64, ge=1)
    model_depth: int = Field(3, ge=1, le=4)
    model_norm: Literal["instancenorm", "batchnorm", "groupnorm", "none"] = "instancenorm"

    # Local training.
    local_epochs: int = Field(1, ge=1)
    max_local_steps: int = Field(0, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    proximal_mu: float = Field(0.01, ge=0)

    # Participation.
    fraction_train: float = Field(1.0, gt=0, le=1)
    fraction_evaluate: float = Field(1.0, ge=0, le=1)
    min_available_nodes: int = Field(2, ge=1)

    # Evaluation, results, caching, devices.
    server_eval: bool = True
    runs_dir: str = "~/fedmatch-runs"
    run_name: str = ""
    resume: bool = False
    cache_dir: str = "~/.cache/fedmatch"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("runs_dir", "cache_dir")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        # The ServerApp runs in the working directory of whichever `flwr run` first
        # started the background SuperLink, so a relative path would land somewhere
        # the user did not choose.
        if not value:
            raise ValueError("must not be empty")
        if not Path(value).expanduser().is_absolute():
            raise ValueError(
                "must be an absolute path or start with '~' (relative paths would resolve "
                "against the background SuperLink's working directory)"
            )
        return value

    @field_validator("run_name")
    @classmethod
    def _run_name_chars(cls, value: str) -> str:
        if value and not _RUN_NAME.match(value):
            raise ValueError(
                "must start with a letter or digit and contain only letters, digits, "
                "'.', '_' and '-' (or be empty for an automatic name)"
            )
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
        return self

    # ------------------------------------------------------------------ helpers

    @classmethod
    def from_flower(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Build from ``context.run_config``; raise ``ConfigError`` naming every bad key."""
        allowed = sorted(_to_key(name) for name in cls.model_fields)
        unknown = sorted(set(run_config) - set(allowed))
        if unknown:
            raise ConfigError(
                "unknown run-config key(s): "
                + ", ".join(repr(key) for key in unknown)
                + ". Allowed keys: "
                + ", ".join(allowed)
            )
        try:
            return cls.model_validate(dict(run_config))
        except ValidationError as err:
            raise ConfigError(_format_errors(err, run_config)) from None

    def to_flower(self) -> dict[str, Any]:
        """The flat dashed-key dict Flower uses (the inverse of ``from_flower``)."""
        return self.model_dump(by_alias=True)

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

    @property
    def runs_path(self) -> Path:
        return Path(self.runs_dir).expanduser()

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()


def _format_errors(err: ValidationError, given: Mapping[str, Any]) -> str:
    lines = ["invalid run config:"]
    for item in err.errors():
        location = item.get("loc", ())
        if location:
            key = _to_key(str(location[0]))
            value = given.get(key, item.get("input"))
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"  - run-config key {key!r} = {value!r}: {message}")
        else:
            lines.append(f"  - {item['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)
