"""Hostile run-config values, names and cells files: each is refused with the key, the value
and what is allowed, or accepted as meant.

The per-key cases are generated from the pydantic models (``RunConfig`` and every table), so
a key added later is covered without touching this file.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
import pytest
from pydantic.fields import FieldInfo

from fedmatch import methods as registry
from fedmatch.cells import CellsFileError, read_cells, read_status, status_path
from fedmatch.config import RUN_NAME_MAX, ConfigError, RunConfig
from fedmatch.params import to_key

pytestmark = pytest.mark.hostile("run-config")


def _fields() -> dict[str, FieldInfo]:
    """Every run-config key and its pydantic field (common keys, then ``table.key``)."""
    fields = {to_key(n): f for n, f in RunConfig.model_fields.items() if n != "tables"}
    for table, cls in registry.tables().items():
        fields.update({f"{table}.{to_key(n)}": f for n, f in cls.model_fields.items()})
    return fields


FIELDS = _fields()
NUMBER_KEYS = sorted(k for k, f in FIELDS.items() if f.annotation in (int, float))
INT_KEYS = sorted(k for k, f in FIELDS.items() if f.annotation is int)
BOOL_KEYS = sorted(k for k, f in FIELDS.items() if f.annotation is bool)
STR_KEYS = sorted(k for k, f in FIELDS.items() if f.annotation is str)
CHOICE_KEYS = sorted(k for k, f in FIELDS.items() if get_origin(f.annotation) is Literal)


def _num(bound: float) -> str:
    return str(bound).removesuffix(".0")  # pydantic writes 1000.0 as 1000


def _outside(field: FieldInfo) -> list[tuple[str, float]]:
    """(bound, the nearest value just outside it) for each bound of a numeric field."""
    step_down = (
        (lambda x: x - 1) if field.annotation is int else (lambda x: math.nextafter(x, -1e308))
    )
    step_up = (lambda x: x + 1) if field.annotation is int else (lambda x: math.nextafter(x, 1e308))
    out = []
    for meta in field.metadata:  # pydantic's words for each bound, as its messages say them
        if isinstance(meta, annotated_types.Ge):
            out.append((f"greater than or equal to {_num(meta.ge)}", step_down(meta.ge)))
        elif isinstance(meta, annotated_types.Gt):
            out.append((f"greater than {_num(meta.gt)}", meta.gt))
        elif isinstance(meta, annotated_types.Le):
            out.append((f"less than or equal to {_num(meta.le)}", step_up(meta.le)))
        elif isinstance(meta, annotated_types.Lt):
            out.append((f"less than {_num(meta.lt)}", meta.lt))
    return out


BOUNDS = [(key, bound, value) for key in NUMBER_KEYS for bound, value in _outside(FIELDS[key])]


def refused(overrides: dict[str, Any]) -> str:
    """The ConfigError message for ``overrides``; it must name the (first) key and its value."""
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flower(overrides)
    message = str(err.value)
    key, value = next(iter(overrides.items()))
    assert f"run-config key {key!r} = {value!r}: " in message, message
    return message


def test_the_generated_cases_cover_every_key() -> None:
    # Guards the generators themselves: a new kind of field would otherwise go untested.
    assert len(FIELDS) > 100 and len(BOUNDS) > 60
    covered = set(NUMBER_KEYS) | set(BOOL_KEYS) | set(STR_KEYS) | set(CHOICE_KEYS)
    assert covered == set(FIELDS)


@pytest.mark.parametrize("key", NUMBER_KEYS)
def test_every_number_key_refuses_non_numbers(key: str) -> None:
    for value in (math.nan, math.inf, -math.inf):
        assert "finite number" in refused({key: value})
    for value in (True, False):  # pydantic alone would read true as 1
        assert "expected a number, got the boolean" in refused({key: value})
    for value in ("x", None, [1]):
        assert "valid" in refused({key: value})  # "Input should be a valid number/integer"


@pytest.mark.parametrize(("key", "bound", "value"), BOUNDS)
def test_every_bounded_key_refuses_the_value_just_outside_its_range(
    key: str, bound: str, value: float
) -> None:
    assert f"Input should be {bound}" in refused({key: value})


@pytest.mark.parametrize("key", INT_KEYS)
def test_every_integer_key_refuses_fractions_and_values_beyond_int64(key: str) -> None:
    assert "fractional part" in refused({key: 1.5})
    assert "64-bit" in refused({key: 2**63})
    assert "64-bit" in refused({key: -(2**63) - 1})


@pytest.mark.parametrize("key", CHOICE_KEYS)
def test_every_choice_key_lists_its_choices(key: str) -> None:
    choices = get_args(FIELDS[key].annotation)
    for value in (str(choices[0]).upper() + "X", 2, None):
        message = refused({key: value})
        if isinstance(value, str):  # "Input should be 'a', 'b' or 'c'"
            assert all(repr(choice) in message for choice in choices), message


@pytest.mark.parametrize("key", BOOL_KEYS)
def test_every_boolean_key_refuses_non_booleans(key: str) -> None:
    for value in ("maybe", 2, None, [True]):
        assert "valid boolean" in refused({key: value})


@pytest.mark.parametrize("key", STR_KEYS)
def test_every_text_key_refuses_a_nul_character(key: str) -> None:
    assert "NUL character" in refused({key: "/tmp/a\x00b"})


@pytest.mark.parametrize(
    "key", ["runs-dir", "cache-dir", "data-root", "cells-file", "diffusion.teacher-checkpoint"]
)
def test_a_path_in_the_home_of_an_unknown_user_is_refused(key: str) -> None:
    message = refused({key: "~no-such-user-fedmatch/x"})
    assert "'~no-such-user-fedmatch' names no user's home folder" in message


# ------------------------------------------------------------------------------ run names


@pytest.mark.parametrize(
    "name",
    [
        "a\x00b",  # NUL ends a file name at the OS
        "run\r",
        "tab\there",
        "é",
        "a\u202eexe.txt",  # right-to-left override: shows a different name than it is
        ".hidden",
        "a\\b",
        "a:b",
        "../../etc",
        "/abs",
        "~user",
        "a" * (RUN_NAME_MAX + 1),
        "😀",
    ],
)
def test_a_run_name_that_is_no_plain_folder_name_is_refused(name: str) -> None:
    message = refused({"run-name": name})
    assert "letters, digits" in message or "NUL" in message or f"at most {RUN_NAME_MAX}" in message


@pytest.mark.parametrize("name", ["", "a" * RUN_NAME_MAX, "a..b", "0", "A.b_c-1", "nan"])
def test_plain_run_names_are_accepted_as_given(name: str) -> None:
    assert RunConfig.from_flower({"run-name": name}).run_name == name


@pytest.mark.parametrize(
    ("key", "fragment"),
    [("", "unknown run-config key ''"), ("lr\n", "did you mean 'lr'"), ("fedka.", "'fedka.'")],
)
def test_malformed_key_names_are_unknown_keys(key: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=r"docs/config\.md") as err:
        RunConfig.from_flower({key: 1})
    assert fragment in str(err.value)


# ----------------------------------------------------------------------------- cells files


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"\xff\xfe{}", "cannot be read as JSON"),  # not UTF-8
        (b"[" * 100_000 + b"]" * 100_000, "cannot be read as JSON"),  # nesting
        (b'"cells"', 'expected {"cells": [...]}'),
        (b'{"cells": [3]}', "cell 0 needs a non-empty 'name'"),
        (b'{"cells": [{"name": "", "run-config": {}}]}', "cell 0 needs a non-empty 'name'"),
        (b'{"cells": [{"name": "a", "run-config": {"seed": null}}]}', "non-scalar value"),
    ],
)
def test_a_malformed_cells_file_names_the_key_and_the_problem(
    tmp_path: Path, content: bytes, fragment: str
) -> None:
    path = tmp_path / "cells.json"
    path.write_bytes(content)
    with pytest.raises(CellsFileError) as err:
        read_cells(path)
    assert f"run-config key 'cells-file' = {str(path)!r}" in str(err.value)
    assert fragment in str(err.value)


@pytest.mark.parametrize("where", ["folder", "nul"])
def test_a_cells_file_that_is_a_folder_or_no_path_is_refused(tmp_path: Path, where: str) -> None:
    path = str(tmp_path) if where == "folder" else f"{tmp_path}/a\x00b"
    with pytest.raises(CellsFileError, match="cannot be read as JSON") as err:
        read_cells(path)
    assert f"run-config key 'cells-file' = {path!r}" in str(err.value)


def test_malformed_status_lines_are_skipped_and_the_good_ones_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cells = tmp_path / "cells.json"
    good = {"cell": "a", "status": "done", "error": "", "seconds": 1.5}
    lines = [b"[1, 2]", b"{}", b'{"cell": "b", "status": "done", "seconds": "x"}', b"\xff"]
    lines += [json.dumps(good).encode(), b'{"cell": "c"']  # the last one torn
    status_path(cells).write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING, logger="fedmatch.cells"):
        found = read_status(cells)
    assert set(found) == {"a"} and found["a"].seconds == 1.5
    for number in (1, 2, 3, 4, 6):
        assert f"{status_path(cells)}:{number}: skipping a malformed status line" in caplog.text


@pytest.mark.parametrize("value", ["inf", "1,1e999"])
def test_an_infinite_bandwidth_multiplier_is_refused(value: str) -> None:
    assert "bandwidth multiplier" in refused({"fedka.mmd-bandwidth-multipliers": value})
