"""Hostile checkpoint, cache and result files and run directories: each gets an error naming
the file and what is wrong (nothing already written is lost), or is repaired or accepted.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedmatch.checkpoint import (
    _NDARRAY_TAG,
    _NPSCALAR_TAG,
    CheckpointError,
    read_checkpoint,
    write_checkpoint,
)
from fedmatch.config import RunConfig
from fedmatch.data.cache import cached_domain
from fedmatch.results import MetricRow, MetricsError, RunRecorder, read_metrics
from tests.test_embedded import CountingBuilder, assert_same_domain, tiny_domain

pytestmark = pytest.mark.hostile("run-files")


class _Marker:
    """Unpickles to ``open(<marker>, "w")``: a marker file that must never appear."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return open, (str(self.marker), "w")


def _good() -> dict[str, Any]:
    return {"round": 1, "arrays": {"w": torch.zeros(2)}, "strategy_state": {}}


# ------------------------------------------------------------------------------ checkpoints

CHECKPOINTS = {
    # name: (writer of the file at `path`, fragment of the CheckpointError)
    "zero bytes": (lambda p: p.write_bytes(b""), "not a readable checkpoint"),
    "truncated": (
        lambda p: (torch.save(_good(), p), p.write_bytes(p.read_bytes()[:100])),
        "not a readable checkpoint",
    ),
    "a folder": (lambda p: p.mkdir(), "not a readable checkpoint"),
    "an npz archive": (lambda p: np.savez(p.open("wb"), a=np.zeros(2)), "not a readable"),
    "a list": (lambda p: torch.save([1, 2], p), "expected a dict with an int 'round'"),
    "missing keys": (lambda p: torch.save({"round": 1}, p), "got a dict with keys ['round']"),
    "round as text": (
        lambda p: torch.save({**_good(), "round": "1"}, p),
        "'round' must be an int >= 0, got '1'",
    ),
    "round as bool": (
        lambda p: torch.save({**_good(), "round": True}, p),
        "'round' must be an int >= 0, got True",
    ),
    "negative round": (
        lambda p: torch.save({**_good(), "round": -3}, p),
        "'round' must be an int >= 0, got -3",
    ),
    "arrays a list": (
        lambda p: torch.save({**_good(), "arrays": [torch.zeros(1)]}, p),
        "'arrays' must be a dict of tensors, got a builtins.list",
    ),
    "array not a tensor": (
        lambda p: torch.save({**_good(), "arrays": {"w": 3}}, p),
        "arrays['w'] must be a tensor, got a builtins.int",
    ),
    "array name not text": (
        lambda p: torch.save({**_good(), "arrays": {3: torch.zeros(2)}}, p),
        "'arrays' keys must be parameter names (str), got 3",
    ),
    "bfloat16 array": (
        lambda p: torch.save({**_good(), "arrays": {"w": torch.zeros(2, dtype=torch.bfloat16)}}, p),
        "arrays['w']: a torch.bfloat16 torch.strided tensor on cpu cannot be read",
    ),
    "sparse array": (
        lambda p: torch.save({**_good(), "arrays": {"w": torch.zeros(2).to_sparse()}}, p),
        "torch.sparse_coo tensor on cpu cannot be read as a numpy array",
    ),
    "meta array": (
        lambda p: torch.save({**_good(), "arrays": {"w": torch.zeros(2, device="meta")}}, p),
        "tensor on meta cannot be read as a numpy array",
    ),
    "state a list": (
        lambda p: torch.save({**_good(), "strategy_state": [1]}, p),
        "'strategy_state' must be a dict, got a builtins.list",
    ),
    "numpy tag on text": (
        lambda p: torch.save({**_good(), "strategy_state": {"x": {_NDARRAY_TAG: "oops"}}}, p),
        "strategy_state['x'] must be a tensor, got a builtins.str",
    ),
    "numpy scalar tag on a matrix": (
        lambda p: torch.save(
            {**_good(), "strategy_state": {"x": {_NPSCALAR_TAG: torch.zeros(2, 2)}}}, p
        ),
        "strategy_state['x']: a numpy scalar must be 0-d, got shape (2, 2)",
    ),
}


@pytest.mark.parametrize("case", CHECKPOINTS)
@pytest.mark.filterwarnings("ignore::UserWarning")  # torch on the sparse tensor's layout
def test_a_damaged_checkpoint_is_refused_naming_the_file_and_the_entry(
    tmp_path: Path, case: str
) -> None:
    write, fragment = CHECKPOINTS[case]
    path = tmp_path / "checkpoint.pt"
    write(path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(err.value).startswith(f"{path}: ") and fragment in str(err.value)


def test_a_checkpoint_nested_deeper_than_python_recurses_is_refused(tmp_path: Path) -> None:
    nested: Any = []
    for _ in range(3 * sys.getrecursionlimit()):
        nested = [nested]
    path = tmp_path / "checkpoint.pt"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10 * limit)  # only the writer (a crafted file) gets that far
    try:
        torch.save({**_good(), "strategy_state": {"x": nested}}, path)
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(CheckpointError, match="nested too deeply") as err:
        read_checkpoint(path)
    assert str(path) in str(err.value)


def test_a_parameter_that_requires_grad_is_read_as_its_values(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({**_good(), "arrays": {"w": torch.nn.Parameter(torch.arange(3.0))}}, path)
    np.testing.assert_array_equal(read_checkpoint(path)["arrays"]["w"], [0.0, 1.0, 2.0])


@pytest.mark.parametrize("value", [{1, 2}, np.array([object()], dtype=object), len])
def test_unsaveable_state_is_refused_and_the_last_checkpoint_kept(tmp_path: Path, value) -> None:
    path = tmp_path / "checkpoint.pt"
    write_checkpoint(path, 3, {"w": np.ones(2, np.float32)}, {"step": 3})
    with pytest.raises(TypeError, match=r"checkpoint strategy_state\['bad'\]"):
        write_checkpoint(path, 4, {"w": np.zeros(2, np.float32)}, {"bad": value})
    kept = read_checkpoint(path)
    assert kept["round"] == 3 and kept["strategy_state"] == {"step": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_resume_refuses_a_zero_byte_checkpoint_before_rewriting_anything(tmp_path: Path) -> None:
    cfg = RunConfig(runs_dir=str(tmp_path), run_name="r1")
    RunRecorder.open(cfg).close()
    (tmp_path / "r1" / "checkpoint.pt").write_bytes(b"")
    config_before = (tmp_path / "r1" / "config.json").read_bytes()
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        RunRecorder.open(cfg.replace({"resume": True}))
    assert (tmp_path / "r1" / "config.json").read_bytes() == config_before


# ----------------------------------------------------------------------------- data cache


def _zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def _object_array_with_marker(path: Path) -> None:
    # A valid cache file plus a pickled member; np.load(allow_pickle=False) must not run it.
    cached_domain(path.parent, path.stem, CountingBuilder(seed=1))
    with np.load(path) as data:
        arrays = {name: np.array(data[name]) for name in data.files}
    arrays["x_train"] = np.array([_Marker(path.parent / "pwned")], dtype=object)
    with path.open("wb") as handle:
        np.savez(handle, **arrays)


def _compressed(path: Path) -> None:
    # The right key and digest, but deflated: a member could inflate to any size on load.
    cached_domain(path.parent, path.stem, CountingBuilder(seed=0))
    with np.load(path) as data:
        arrays = {name: np.array(data[name]) for name in data.files}
    with path.open("wb") as handle:
        np.savez_compressed(handle, **arrays)


def _key_as_number(path: Path) -> None:
    cached_domain(path.parent, path.stem, CountingBuilder(seed=0))
    with np.load(path) as data:
        arrays = {name: np.array(data[name]) for name in data.files}
    arrays["key"], arrays["digest"] = np.array(7), np.array(3.5)
    with path.open("wb") as handle:
        np.savez(handle, **arrays)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_zero_bytes, "BadZipFile"),
        (_object_array_with_marker, "allow_pickle=False"),
        (_compressed, "compressed members"),
        (_key_as_number, "built for key '7'"),
    ],
)
def test_a_foreign_cache_file_is_rebuilt_and_runs_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage, reason: str
) -> None:
    path = tmp_path / "tiny.npz"
    damage(path)
    build = CountingBuilder()
    with caplog.at_level(logging.WARNING, logger="fedmatch.data.cache"):
        assert_same_domain(cached_domain(tmp_path, "tiny", build), tiny_domain())
    assert build.calls == 1 and not (tmp_path / "pwned").exists()
    assert f"cache file {path} is unreadable" in caplog.text and reason in caplog.text


def test_a_cache_link_to_a_damaged_file_is_replaced_not_written_through(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_bytes(b"someone else's file")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "tiny.npz").symlink_to(target)
    assert_same_domain(cached_domain(tmp_path / "cache", "tiny", CountingBuilder()), tiny_domain())
    assert target.read_bytes() == b"someone else's file"
    assert not (tmp_path / "cache" / "tiny.npz").is_symlink()


def test_a_cache_entry_that_is_a_folder_is_an_error_and_kept(tmp_path: Path) -> None:
    (tmp_path / "tiny.npz").mkdir()
    (tmp_path / "tiny.npz" / "mine.txt").write_text("keep")
    with pytest.raises(IsADirectoryError, match=f"cache file {tmp_path / 'tiny.npz'} is a dir"):
        cached_domain(tmp_path, "tiny", CountingBuilder())
    assert (tmp_path / "tiny.npz" / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("below", ["", "sub"])
def test_a_cache_dir_that_is_a_file_names_the_key(tmp_path: Path, below: str) -> None:
    (tmp_path / "file").write_text("mine")
    with pytest.raises(NotADirectoryError, match="run-config key 'cache-dir'") as err:
        cached_domain(tmp_path / "file" / below, "tiny", CountingBuilder())
    assert str(tmp_path / "file") in str(err.value)
    assert (tmp_path / "file").read_text() == "mine"


# -------------------------------------------------------------------------- metrics.jsonl


def _metrics(tmp_path: Path, *lines: bytes) -> Path:
    row = MetricRow(1, 0, "mnist", "test-accuracy", 0.5).to_json().encode()
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"\n".join([row, *lines, row]) + b"\n")
    return path


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (b"\xff\xfe\x00", "not a metric row"),  # not UTF-8
        (b'{"x": "' + b"y" * 5_000_000 + b'"}', "not a metric row"),  # 5 MB
        (b"[1, 2, 3]", "not a metric row"),
        (b'{"round": 1, "client": 0, "domain": "d", "metric": "m", "value": 1, "x": 2}', "x"),
        (b"NaN", "not a metric row"),
    ],
)
def test_a_junk_metrics_line_is_an_error_naming_its_line(
    tmp_path: Path, line: bytes, fragment: str
) -> None:
    path = _metrics(tmp_path, line)
    with pytest.raises(MetricsError) as err:
        read_metrics(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{path}:2: not a metric row") and fragment in message
    assert len(message) < 1000  # a huge line is quoted by its start only


def test_blank_and_crlf_lines_are_read_as_the_rows_they_hold(tmp_path: Path) -> None:
    row = MetricRow(1, 0, "mnist", "test-accuracy", 0.5)
    (tmp_path / "metrics.jsonl").write_bytes(b"\n\n" + row.to_json().encode() + b"\r\n\n")
    assert read_metrics(tmp_path) == [row]


# ------------------------------------------------------- results.py: damaged run directories


def _expect_value_error_naming(path: Path, call) -> None:
    with pytest.raises(ValueError) as err:
        call()
    assert str(path) in str(err.value)


def test_a_metrics_line_nested_too_deeply_is_an_error_naming_it(tmp_path: Path) -> None:
    path = _metrics(tmp_path, b"[" * 100_000 + b"]" * 100_000)
    _expect_value_error_naming(path, lambda: read_metrics(tmp_path))


def test_a_metrics_file_that_is_a_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").mkdir()
    _expect_value_error_naming(tmp_path / "metrics.jsonl", lambda: read_metrics(tmp_path))


@pytest.mark.parametrize("config", [b"{not json", b"[]", b'{"run_config": 3}', b"\xff"])
def test_resume_with_a_damaged_config_json_names_it(tmp_path: Path, config: bytes) -> None:
    cfg = RunConfig(runs_dir=str(tmp_path), run_name="r1")
    RunRecorder.open(cfg).close()
    path = tmp_path / "r1" / "config.json"
    path.write_bytes(config)
    _expect_value_error_naming(path, lambda: RunRecorder.open(cfg.replace({"resume": True})))
    assert path.read_bytes() == config


@pytest.mark.parametrize("kind", ["runs-dir a file", "run dir a file", "run dir a dead link"])
def test_a_run_directory_that_cannot_be_made_names_the_key(tmp_path: Path, kind: str) -> None:
    runs = tmp_path / "runs"
    if kind == "runs-dir a file":
        runs.write_text("mine")
    else:
        runs.mkdir()
        if kind == "run dir a file":
            (runs / "r1").write_text("mine")
        else:
            os.symlink(tmp_path / "nowhere", runs / "r1")
    cfg = RunConfig(runs_dir=str(runs), run_name="r1")
    with pytest.raises(ValueError, match=r"run-config key 'r(uns-dir|un-name)'"):
        RunRecorder.open(cfg)
