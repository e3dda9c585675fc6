"""A run killed in the middle of a write, or stopped by its user, resumes cleanly.

The crash cases run the real writes in a child process that the armed failpoint kills with
SIGKILL (fedmatch.failpoints), then reopen the run directory as a resume does.  The Flower
end of it (Ctrl-C through ``fedmatch run``, kills during a real simulation) is
tests/test_e2e_simulation.py::test_ctrl_c_and_kills_mid_write_resume_to_the_same_final_metrics.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedmatch import failpoints, launch
from fedmatch.checkpoint import read_checkpoint
from fedmatch.cli import main
from fedmatch.config import ConfigError, RunConfig
from fedmatch.results import MetricRow, RunRecorder, read_metrics
from fedmatch.run_status import INTERRUPTED, mark_interrupted, run_state

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp_path: Path, **kw: Any) -> RunConfig:
    return RunConfig(runs_dir=str(tmp_path), run_name="r1", **kw)


def _rows(server_round: int) -> list[MetricRow]:
    return [MetricRow(server_round, c, "mnist", "train-loss", 1.0 / (c + 1)) for c in range(3)]


def _crash(tmp_path: Path, point: str, fraction: float) -> None:
    """In a forked child (it has every module loaded already): round 1 completes (metrics,
    then checkpoint), and round 2 dies in the write armed for ``point``."""
    armed = tmp_path / "armed"
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.environ[failpoints.ENV] = str(armed)
            rec = RunRecorder.open(_cfg(tmp_path))
            for rnd in (1, 2):
                if rnd == 2:
                    armed.write_text(f"{point} {fraction}")
                rec.append(_rows(rnd))
                rec.save_checkpoint(rnd, {"w": np.full(4096, rnd, np.float32)}, {"seen": rnd})
        finally:
            os._exit(3)  # reached only if the failpoint did not kill the child
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    assert not armed.exists(), "an armed failpoint fires once and disarms"


@pytest.mark.parametrize("fraction", [0.0, 0.37, 0.99])
def test_kill_mid_metrics_append_keeps_every_completed_round(tmp_path: Path, fraction: float):
    _crash(tmp_path, "metrics-append", fraction)
    run_dir = tmp_path / "r1"
    data = (run_dir / "metrics.jsonl").read_bytes()
    complete = "".join(r.to_json() + "\n" for r in _rows(1)).encode()
    assert data.startswith(complete) and len(data) < 2 * len(complete)
    assert read_checkpoint(run_dir / "checkpoint.pt")["round"] == 1
    assert run_state(run_dir).status == "incomplete"

    rec = RunRecorder.open(_cfg(tmp_path, resume=True))
    try:
        rec.truncate_after(1)
        assert rec.rows == _rows(1)
        rec.append(_rows(2))  # the torn line is gone, not glued to the new rows
    finally:
        rec.close()
    assert read_metrics(run_dir) == _rows(1) + _rows(2)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.999])
def test_kill_mid_checkpoint_write_leaves_the_previous_checkpoint(tmp_path: Path, fraction):
    _crash(tmp_path, "checkpoint-write", fraction)
    run_dir = tmp_path / "r1"
    checkpoint = read_checkpoint(run_dir / "checkpoint.pt")
    assert checkpoint["round"] == 1 and np.all(checkpoint["arrays"]["w"] == 1)
    debris = list(run_dir.glob(".checkpoint.pt.*.tmp"))
    assert len(debris) == 1
    # Round 2's metrics were written before its checkpoint: resume drops them and the debris.
    rec = RunRecorder.open(_cfg(tmp_path, resume=True))
    try:
        assert not debris[0].exists()
        rec.truncate_after(1)
        assert rec.rows == _rows(1)
    finally:
        rec.close()


def test_an_unarmed_or_foreign_failpoint_writes_everything(tmp_path: Path, monkeypatch):
    armed = tmp_path / "armed"
    armed.write_text("checkpoint-write 0.5")
    monkeypatch.setenv(failpoints.ENV, str(armed))
    with (tmp_path / "f").open("wb") as handle:
        failpoints.write(handle, b"abcdef", "metrics-append")  # armed for another point
    assert (tmp_path / "f").read_bytes() == b"abcdef" and armed.exists()
    armed.write_text("garbage")
    with (tmp_path / "g").open("wb") as handle:
        failpoints.write(handle, b"xyz", "checkpoint-write")
    assert (tmp_path / "g").read_bytes() == b"xyz"


# ------------------------------------------------------------------------------ run states


def _run_dir(tmp_path: Path) -> Path:
    RunRecorder.open(_cfg(tmp_path)).close()
    return tmp_path / "r1"


def test_run_state_reads_each_outcome(tmp_path: Path):
    assert run_state(tmp_path / "nothing").status == "missing"
    run_dir = _run_dir(tmp_path)
    assert run_state(run_dir).status == "incomplete"
    (run_dir / "summary.json").write_text(json.dumps({"status": "failed", "error": "NaN"}))
    assert run_state(run_dir) == run_state(run_dir).__class__("failed", "NaN")
    (run_dir / "summary.json").write_text(json.dumps({"mean_accuracy": 0.9}))  # older versions
    assert run_state(run_dir).status == "done"
    mark_interrupted(run_dir, 2, "stopped by its user")
    state = run_state(run_dir)
    assert (state.status, state.completed_round) == ("interrupted", 2)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("summary.json", b"{not json", "summary.json is not JSON"),
        ("summary.json", b"[1, 2]", "summary.json holds a JSON list, not an object"),
        ("summary.json", b"\xff\xfe", "summary.json is not UTF-8 text"),
        ("summary.json", b'{"status": "running"}', "status = 'running', expected 'done'"),
        (INTERRUPTED, b'{"completed_round": -3}', "completed_round = -3, expected a round"),
        (INTERRUPTED, b'{"completed_round": "2"}', "completed_round = '2', expected a round"),
        (INTERRUPTED, b"null", "interrupted.json holds a JSON NoneType, not an object"),
    ],
)
@pytest.mark.hostile("run-files")
def test_a_damaged_status_file_is_named_never_raised(tmp_path, name, content, expected):
    run_dir = _run_dir(tmp_path)
    (run_dir / name).write_bytes(content)
    state = run_state(run_dir)
    assert state.status == "damaged" and expected in state.detail


def test_resume_reopens_an_interrupted_run(tmp_path: Path):
    run_dir = _run_dir(tmp_path)
    mark_interrupted(run_dir, None, "stopped by its user")
    (run_dir / "summary.json").write_text("{}")  # an earlier, shorter run's summary
    RunRecorder.open(_cfg(tmp_path, resume=True, num_server_rounds=9)).close()
    assert not (run_dir / INTERRUPTED).exists() and not (run_dir / "summary.json").exists()
    assert run_state(run_dir).status == "incomplete"


@pytest.mark.hostile("report")
def test_show_names_an_interrupted_or_damaged_run(tmp_path: Path, capsys):
    run_dir = _run_dir(tmp_path)
    mark_interrupted(run_dir, 4, "stopped by its user")
    assert main(["show", str(run_dir)]) == 1
    assert "interrupted after round 4" in capsys.readouterr().err
    (run_dir / INTERRUPTED).unlink()
    (run_dir / "summary.json").write_text('{"status": "done"}')
    (run_dir / "config.json").write_text("[]")
    assert main(["show", str(run_dir)]) == 1
    assert "damaged config.json or summary.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------ fedmatch run


def test_fedmatch_run_refuses_a_bad_config_before_starting_anything(monkeypatch, capsys):
    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"started a process: {args}")

    monkeypatch.setattr(launch.subprocess, "Popen", no_process)
    status = main(["run", str(REPO), "--run-config", "lr=-1 strategy='fedfoo'"])
    err = capsys.readouterr().err
    assert status == 2
    assert "run-config key 'lr' = -1" in err and "run-config key 'strategy' = 'fedfoo'" in err


def test_later_run_config_arguments_override_earlier_ones():
    cfg = launch.load_run_config(REPO, ["lr=0.5 run-name='a'", "run-name='b' resume=true"])
    assert (cfg.lr, cfg.run_name, cfg.resume) == (0.5, "b", True)


@pytest.mark.hostile("run-config")
def test_a_preset_file_and_later_overrides_merge_key_by_key(tmp_path: Path, monkeypatch):
    from flwr.common.config import parse_config_args

    preset = tmp_path / "preset.toml"
    preset.write_text(
        'strategy = "diffusion-teacher"\nnum-server-rounds = 8\n'
        "diffusion.teacher-steps = 20\ndiffusion.guidance-scale = 2.0\n"
        "diffusion.teacher-cond-dropout = 0.1\n"
    )
    runs_dir = f"{tmp_path}/it's here"
    items = [str(preset), f'diffusion.eval-every=4 runs-dir="{runs_dir}"', "num-server-rounds=12"]
    cfg = launch.load_run_config(REPO, items)
    diffusion = cfg.table("diffusion")
    # flwr run would refuse the file beside pairs, and a later diffusion.* pair would drop
    # the preset's other diffusion keys; here every key survives, later wins.
    assert (cfg.num_server_rounds, diffusion.eval_every, diffusion.teacher_steps) == (12, 4, 20)
    assert diffusion.guidance_scale == 2.0 and cfg.runs_dir == runs_dir
    merged = launch.merged_overrides(items)
    assert parse_config_args([launch.override_string(merged)]) == merged  # one string, same values

    started: list[list[str]] = []

    def record(command: list[str], **kwargs: object) -> None:
        started.append(command)
        raise KeyboardInterrupt  # stop right after the command line is known

    monkeypatch.setattr(launch.subprocess, "Popen", record)
    monkeypatch.setattr(launch, "_restart_stale_superlink", lambda out: None)
    monkeypatch.setattr(launch, "_local_simulations", lambda: set())
    with pytest.raises(KeyboardInterrupt):
        launch.run(REPO, items, connection="no-such-connection")
    assert started and started[0].count("--run-config") == 1
    assert parse_config_args([started[0][started[0].index("--run-config") + 1]]) == merged

    with pytest.raises(ConfigError, match=r"--run-config '.*missing\.toml'"):
        launch.load_run_config(REPO, [str(tmp_path / "missing.toml")])
    both_quotes = tmp_path / "quotes.toml"
    both_quotes.write_text('runs-dir = "/a\'b\\"c"\n')  # fine in TOML, not as key=value
    with pytest.raises(ConfigError, match=r"runs-dir.*one-line strings"):
        launch.load_run_config(REPO, [str(preset), str(both_quotes)])


def test_report_names_an_interrupted_run(tmp_path: Path):
    from fedmatch.report.runs import ReportError, load_run

    run_dir = _run_dir(tmp_path)
    mark_interrupted(run_dir, 3, "stopped by its user")
    with pytest.raises(ReportError, match=r"interrupted after round 3 \(resume=true continues"):
        load_run(run_dir)


def test_bench_marks_the_cells_it_stopped(tmp_path: Path):
    from fedmatch.bench.runner import _mark_interrupted_cells
    from fedmatch.bench.state import CellOutcome

    for name in ("stopped", "finished"):
        RunRecorder.open(RunConfig(runs_dir=str(tmp_path), run_name=name)).close()
    (tmp_path / "finished" / "summary.json").write_text('{"status": "done"}')
    _mark_interrupted_cells(
        tmp_path,
        {
            "stopped": CellOutcome("stopped", "interrupted", error="interrupted"),
            "finished": CellOutcome("finished", "interrupted", error="interrupted"),
            "never-started": CellOutcome("never-started", "interrupted", error="interrupted"),
        },
    )
    assert run_state(tmp_path / "stopped").status == "interrupted"
    assert run_state(tmp_path / "finished").status == "done"  # it had ended: left alone
    assert not (tmp_path / "never-started").exists()
