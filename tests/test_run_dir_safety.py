"""A run directory is safe to resume: checkpoints cannot run code, a torn metrics line is
recovered, and two runs of the same name cannot write one directory at once."""

from __future__ import annotations

import logging
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedmatch.checkpoint import CheckpointError
from fedmatch.config import RunConfig
from fedmatch.results import MetricRow, MetricsError, RunRecorder, read_metrics
from fedmatch.runlock import RunLockedError

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp_path: Path, **kw: Any) -> RunConfig:
    return RunConfig(runs_dir=str(tmp_path), run_name="r1", **kw)


class _Hostile:
    """Unpickles to ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.marker}",)


# ------------------------------------------------------------------------------ checkpoints


def test_checkpoint_round_trips_tensors_numpy_values_and_rng_states(tmp_path: Path) -> None:
    generator = np.random.default_rng(7)
    generator.random(3)
    legacy = np.random.RandomState(7)
    legacy.random_sample(3)
    torch_generator = torch.Generator().manual_seed(7)
    torch.rand(3, generator=torch_generator)
    state = {
        "h": {"w": torch.arange(4.0)},
        # DISBack's shape: a list of dicts of numpy arrays, and plain numbers (inf included).
        "path": [{"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, {"w": np.zeros(0)}],
        "controller": {"index": 3, "best": float("inf")},
        "scalar": np.int64(5),
        "misc": (1, "two", None, b"\x00\xff", [True, 2.5]),
        "numpy-rng": generator.bit_generator.state,
        "legacy-rng": legacy.get_state(),
        "torch-rng": torch_generator.get_state(),
    }
    with RunRecorder.open(_cfg(tmp_path)) as rec:
        rec.save_checkpoint(2, {"w": np.full(3, 2, dtype=np.float32)}, state)
        loaded = rec.load_checkpoint()
    assert loaded is not None and loaded["round"] == 2
    np.testing.assert_array_equal(loaded["arrays"]["w"], np.full(3, 2, dtype=np.float32))
    got = loaded["strategy_state"]
    assert torch.equal(got["h"]["w"], state["h"]["w"])
    for new, old in zip(got["path"], state["path"], strict=True):
        assert new["w"].dtype == old["w"].dtype
        np.testing.assert_array_equal(new["w"], old["w"])
    assert got["controller"] == {"index": 3, "best": float("inf")}
    assert got["scalar"] == 5 and isinstance(got["scalar"], np.int64)
    assert got["misc"] == state["misc"]

    # Each restored RNG continues exactly where the saved one was.
    restored = np.random.default_rng()
    restored.bit_generator.state = got["numpy-rng"]
    np.testing.assert_array_equal(restored.random(5), generator.random(5))
    restored_legacy = np.random.RandomState()
    restored_legacy.set_state(got["legacy-rng"])
    np.testing.assert_array_equal(restored_legacy.random_sample(5), legacy.random_sample(5))
    restored_torch = torch.Generator()
    restored_torch.set_state(got["torch-rng"])
    assert torch.equal(
        torch.rand(5, generator=restored_torch), torch.rand(5, generator=torch_generator)
    )


@pytest.mark.hostile("run-files")
def test_checkpoint_refuses_to_save_an_object_it_could_not_load_safely(tmp_path: Path) -> None:
    rec = RunRecorder.open(_cfg(tmp_path))
    with rec, pytest.raises(TypeError, match=r"strategy_state\['model'\].*torch\.nn"):
        rec.save_checkpoint(1, {}, {"model": torch.nn.Linear(2, 2)})


@pytest.mark.parametrize("writer", ["pickle-2", "pickle-5", "torch.save", "old-numpy-state"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.hostile("run-files")
def test_resume_refuses_a_checkpoint_that_needs_unpickling(tmp_path: Path, writer: str) -> None:
    RunRecorder.open(_cfg(tmp_path)).close()
    path = tmp_path / "r1" / "checkpoint.pt"
    marker = tmp_path / "pwned"
    if writer.startswith("pickle-"):  # a bare pickle; protocol 2 is torch's legacy format
        path.write_bytes(pickle.dumps(_Hostile(marker), protocol=int(writer[-1])))
        global_name = "not a torch.save file"
    elif writer == "torch.save":
        torch.save({"round": 1, "arrays": {}, "strategy_state": {"x": _Hostile(marker)}}, path)
        global_name = f"{os.system.__module__}.system"
    else:  # what fedmatch wrote before: numpy arrays pickled inside strategy_state
        torch.save({"round": 1, "arrays": {}, "strategy_state": {"p": np.zeros(2)}}, path)
        global_name = "numpy.ndarray"
    config_before = (tmp_path / "r1" / "config.json").read_bytes()
    # Refused when the run is reopened, before anything in the directory is rewritten.
    with pytest.raises(CheckpointError) as info:
        RunRecorder.open(_cfg(tmp_path, resume=True))
    assert (tmp_path / "r1" / "config.json").read_bytes() == config_before
    message = str(info.value)
    assert str(path) in message and "refusing" in message and global_name in message
    assert not marker.exists()


# --------------------------------------------------------------------------------- metrics


def _rows(rnd: int) -> list[MetricRow]:
    return [MetricRow(rnd, 0, "mnist", "test-accuracy", 0.5), MetricRow(rnd, 1, "usps", "x", 1.0)]


@pytest.mark.hostile("run-files")
def test_a_torn_last_metrics_line_is_dropped_and_repaired(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with RunRecorder.open(_cfg(tmp_path)) as rec:
        rec.append(_rows(1))
        rec.append(_rows(2))
    path = tmp_path / "r1" / "metrics.jsonl"
    with path.open("ab") as handle:  # a kill in the middle of round 3's write
        handle.write(_rows(3)[0].to_json().encode()[:25])

    with caplog.at_level(logging.WARNING, logger="fedmatch.results"):
        assert read_metrics(path.parent) == _rows(1) + _rows(2)
    assert f"{path}:5: dropping the unparseable last line" in caplog.text

    with RunRecorder.open(_cfg(tmp_path, resume=True)) as rec:
        assert rec.rows == _rows(1) + _rows(2)
        rec.append(_rows(3))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedmatch.results"):
        assert read_metrics(path.parent) == _rows(1) + _rows(2) + _rows(3)
    assert caplog.text == ""
    assert path.read_text().endswith("\n")


@pytest.mark.hostile("run-files")
def test_a_bad_metrics_line_before_the_last_is_an_error_naming_it(tmp_path: Path) -> None:
    with RunRecorder.open(_cfg(tmp_path)) as rec:
        rec.append(_rows(1))
    path = tmp_path / "r1" / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], '{"round": 1, "oops"', lines[1]]) + "\n")
    with pytest.raises(MetricsError, match=rf"{path}:2: not a metric row"):
        read_metrics(path.parent)


# ------------------------------------------------------------------------------------ lock


def test_a_second_recorder_on_the_same_run_is_refused_until_the_first_closes(
    tmp_path: Path,
) -> None:
    first = RunRecorder.open(_cfg(tmp_path))
    with pytest.raises(RunLockedError) as info:
        RunRecorder.open(_cfg(tmp_path, resume=True))
    message = str(info.value)
    assert str(first.run_dir) in message
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
    first.close()
    RunRecorder.open(_cfg(tmp_path, resume=True)).close()


def test_a_lock_held_by_another_process_is_named_and_freed_when_it_dies(tmp_path: Path) -> None:
    run_dir = tmp_path / "r1"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from fedmatch.runlock import RunDirLock; "
            "lock = RunDirLock(sys.argv[1]); lock.acquire(); print('locked', flush=True); "
            "time.sleep(120)",
            str(run_dir),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(RunLockedError, match=rf"{run_dir} is in use by pid {holder.pid} "):
            RunRecorder.open(_cfg(tmp_path))
    finally:
        holder.kill()  # a crash: the holder never releases the lock itself
        holder.wait()
    RunRecorder.open(_cfg(tmp_path)).close()
