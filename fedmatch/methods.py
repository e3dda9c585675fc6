"""The method registry: the one list of method names fedmatch knows.

A method is one place: its params class (its run-config table), its server strategy and
the client workload that trains for it, tied together by one ``Method`` entry here.
Config validation (``fedmatch/config.py``), the ServerApp, the ClientApp's dispatch,
``fedmatch config list`` and the docs key reference all read this registry.

Entries name their parts with import strings (``"module:attribute"``) resolved on first
use, so this module imports nothing from ``strategies/`` or ``clients/``.  Other packages
add methods the same way, through the ``fedmatch.methods`` entry-point group::

    # the other package's pyproject.toml
    [project.entry-points."fedmatch.methods"]
    toy = "toy_method:METHOD"          # a fedmatch.methods.Method

See ``docs/adding-a-method.md``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Literal

log = logging.getLogger("fedmatch.methods")

ENTRY_POINT_GROUP = "fedmatch.methods"

# The tables several methods share (fedmatch/params.py).
SHARED_TABLES: dict[str, str] = {
    "distill": "fedmatch.params:DistillParams",
    "diffusion": "fedmatch.params:DiffusionParams",
    "generator": "fedmatch.params:GeneratorParams",
}

_CLASSIFIER = "clients.classifier:handle_train"


class MethodError(ValueError):
    """A method entry (built in or from an entry point) is malformed."""


@dataclass(frozen=True)
class Method:
    """One registered method.

    Attributes:
        name: the value of run-config key ``strategy``.
        strategy: import string of its server strategy class.
        train: import string of the client handler of its ``train`` messages.
        params: import string of its own params class (its run-config table), if any.
        tables: names of shared tables it reads (keys of ``SHARED_TABLES``).
        model: what its global model is: a classifier or a diffusion UNet bundle.
        distilled_data: whether ``train-data='distilled'`` (training on local virtual
            data) is allowed with it.
        summary: one line for ``fedmatch config list`` and the docs.
    """

    name: str
    strategy: str
    summary: str
    train: str = _CLASSIFIER
    params: str | None = None
    tables: tuple[str, ...] = ()
    model: Literal["classifier", "diffusion"] = "classifier"
    distilled_data: bool = True

    def strategy_class(self) -> type:
        return resolve(self.strategy)

    def train_handler(self) -> Any:
        return resolve(self.train)

    def params_class(self) -> type | None:
        return resolve(self.params) if self.params else None

    def table_names(self) -> tuple[str, ...]:
        """Every table this method reads: the shared ones, then its own."""
        own = (self.params_class().table,) if self.params else ()  # type: ignore[union-attr]
        return (*self.tables, *own)


@dataclass(frozen=True)
class _Registry:
    methods: Mapping[str, Method]
    tables: Mapping[str, type] = field(default_factory=dict)


BUILTIN_METHODS: tuple[Method, ...] = (
    Method("fedavg", "strategies.fedavg:FedAvgStrategy", "FedAvg (McMahan et al. 2017)"),
    Method(
        "fedprox",
        "strategies.fedprox:FedProxStrategy",
        "FedProx: proximal term mu/2 ||w - w_global||^2 (Li et al. 2020)",
        train="clients.fedprox:handle_train",
        params="strategies.fedprox:FedProxParams",
    ),
    Method(
        "fedbn",
        "strategies.fedbn:FedBNStrategy",
        "FedBN: normalisation layers stay local (Li et al. 2021)",
    ),
    Method(
        "fedka",
        "strategies.fedka:FedKAStrategy",
        "FedKA: MK-MMD feature alignment to an unlabelled target domain, federated voting",
        train="clients.aligner:handle_train",
        params="strategies.fedka:FedKAParams",
        distilled_data=False,
    ),
    Method(
        "feddm",
        "strategies.feddm:FedDMStrategy",
        "FedDM-style one-shot: clients upload distilled sets, the server trains on them",
        tables=("distill",),
        distilled_data=False,
    ),
    Method(
        "scaffold",
        "strategies.scaffold:ScaffoldStrategy",
        "SCAFFOLD: control variates (Karimireddy et al. 2020)",
        train="clients.baselines:handle_scaffold",
        params="strategies.scaffold:ScaffoldParams",
    ),
    Method(
        "fednova",
        "strategies.fednova:FedNovaStrategy",
        "FedNova: normalised averaging (Wang et al. 2020)",
        train="clients.baselines:handle_fednova",
    ),
    Method(
        "feddyn",
        "strategies.feddyn:FedDynStrategy",
        "FedDyn: dynamic regularisation (Acar et al. 2021)",
        train="clients.baselines:handle_feddyn",
        params="strategies.feddyn:FedDynParams",
    ),
    Method(
        "moon",
        "strategies.moon:MoonStrategy",
        "MOON: model-contrastive learning (Li et al. 2021)",
        train="clients.baselines:handle_moon",
        params="strategies.moon:MoonParams",
    ),
    Method(
        "vhl",
        "strategies.vhl:VHLStrategy",
        "VHL: virtual homogeneity learning (Tang et al. 2022)",
        train="clients.baselines:handle_vhl",
        params="strategies.vhl:VHLParams",
    ),
    Method(
        "fedlgd",
        "strategies.fedlgd:FedLGDStrategy",
        "FedLGD: local and global virtual data by distribution and gradient matching",
        train="clients.fedlgd:handle_train",
        params="strategies.fedlgd:FedLGDParams",
        tables=("distill",),
    ),
    Method(
        "diffusion-teacher",
        "strategies.generators:DiffusionTeacherStrategy",
        "a class- and domain-conditional DDPM teacher trained with FedAvg",
        tables=("diffusion",),
        model="diffusion",
        distilled_data=False,
    ),
    Method(
        "dmd2",
        "strategies.generators:DMD2Strategy",
        "DMD2: one-step generator by distribution matching distillation (Yin et al. 2024)",
        tables=("diffusion", "generator"),
        model="diffusion",
        distilled_data=False,
    ),
    Method(
        "disback",
        "strategies.generators:DisBackStrategy",
        "DisBack: distribution backtracking distillation (Zhang et al. 2024)",
        params="strategies.generators:DisBackParams",
        tables=("diffusion", "generator"),
        model="diffusion",
        distilled_data=False,
    ),
    Method(
        "diffusion-ptq",
        "strategies.quantization:DiffusionPTQStrategy",
        "post-training quantization of the teacher: naive, EDA-DM, DGQ",
        params="strategies.quantization:QuantParams",
        tables=("diffusion",),
        model="diffusion",
        distilled_data=False,
    ),
)


def resolve(target: str) -> Any:
    """Import ``"package.module:attribute"`` and return the attribute."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise MethodError(f"import string {target!r} is not of the form 'module:attribute'")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise MethodError(f"cannot import {target!r}: {err}") from err


def _entry_point_methods() -> list[Method]:
    found = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            method = entry.load()
        except Exception as err:  # a broken plugin must not hide the built-in methods
            log.warning("entry point %s = %s failed to load: %s", entry.name, entry.value, err)
            continue
        if not isinstance(method, Method):
            raise MethodError(
                f"entry point {entry.name!r} ({entry.value}) in group {ENTRY_POINT_GROUP!r} "
                f"gives a {type(method).__name__}, not a fedmatch.methods.Method"
            )
        found.append(method)
    return found


@cache
def _registry() -> _Registry:
    methods: dict[str, Method] = {}
    for method in (*BUILTIN_METHODS, *_entry_point_methods()):
        if method.name in methods:
            raise MethodError(f"method {method.name!r} is registered twice")
        methods[method.name] = method
    tables: dict[str, type] = {name: resolve(path) for name, path in SHARED_TABLES.items()}
    for method in methods.values():
        unknown = [t for t in method.tables if t not in SHARED_TABLES]
        if unknown:
            raise MethodError(
                f"method {method.name!r} reads unknown shared table(s) {unknown}; "
                f"shared tables: {', '.join(SHARED_TABLES)}"
            )
        params = method.params_class()
        if params is None:
            continue
        name = getattr(params, "table", None)
        if not isinstance(name, str) or not name:
            raise MethodError(f"{method.params} has no 'table' name")
        owner = tables.get(name)
        if owner is not None and owner is not params:
            raise MethodError(
                f"method {method.name!r}: table {name!r} of {method.params} is already "
                f"owned by {owner.__module__}.{owner.__qualname__}"
            )
        tables[name] = params
    return _Registry(methods=methods, tables=tables)


def methods() -> Mapping[str, Method]:
    """Every registered method by name (built-in first, then entry points)."""
    return _registry().methods


def method_names() -> tuple[str, ...]:
    return tuple(methods())


def get_method(name: str) -> Method:
    try:
        return methods()[name]
    except KeyError:
        raise MethodError(
            f"unknown method {name!r}; registered methods: {', '.join(method_names())}"
        ) from None


def tables() -> Mapping[str, type]:
    """Every run-config table (shared and methods' own) by name -> its params class."""
    return _registry().tables


def reload() -> None:
    """Forget the resolved registry (tests that install an entry point call this)."""
    _registry.cache_clear()
