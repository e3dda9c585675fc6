"""Hostile report inputs: a damaged run among good ones is left out with its file and reason
and the rest reported; hostile names are shown, not interpreted; the report never writes
outside its folder or through a planted link; ``fedmatch show`` names a damaged run."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from fedmatch.cli import main as cli_main
from fedmatch.report import ReportError, build_report, find_run_dirs
from fedmatch.report.document import md_text
from tests.test_report import write_run

pytestmark = pytest.mark.hostile("report")

ROW = {"round": 1, "client": 0, "domain": "mnist", "metric": "test-accuracy", "value": 0.5}


def _metrics_row(**change: object) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        (run / "metrics.jsonl").write_text(json.dumps({**ROW, **change}) + "\n")

    return damage


def _config(run_config: object) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        (run / "config.json").write_text(json.dumps({"run_config": run_config}))

    return damage


def _replace_with_folder(name: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        (run / name).unlink()
        (run / name).mkdir()

    return damage


def _link_loop(run: Path) -> None:
    (run / "config.json").unlink()
    (run / "config.json").symlink_to(run / "config.json")


DAMAGE = {
    # name: (damage to one finished run, fragment of the reason the report gives)
    "round as text": (_metrics_row(round="1"), "'round' must be an integer >= 0"),
    "round as bool": (_metrics_row(round=True), "'round' must be an integer >= 0"),
    "negative round": (_metrics_row(round=-1), "'round' must be an integer >= 0"),
    "client an object": (_metrics_row(client={}), "'client' must be a partition id"),
    "domain a list": (_metrics_row(domain=["a"]), "'domain' and 'metric' must be strings"),
    "value as text": (_metrics_row(value="x"), "'value' must be a number"),
    "value null": (_metrics_row(value=None), "'value' must be a number"),
    "metrics a folder": (_replace_with_folder("metrics.jsonl"), "Is a directory"),
    "metrics nested too deep": (
        lambda r: (r / "metrics.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n{}\n"),
        "maximum recursion depth",
    ),
    "seed as text": (_config({"strategy": "fedavg", "seed": "x"}), "'seed'] = 'x': expected"),
    "seed a list": (_config({"strategy": "fedavg", "seed": [1]}), "'seed'] = [1]: expected"),
    "strategy a list": (_config({"strategy": ["a"]}), "'strategy'] = ['a']: expected a string"),
    "width an object": (_config({"model-width": {"a": 1}}), "expected a string, number or"),
    "config a folder": (_replace_with_folder("config.json"), "config.json: unreadable"),
    "config empty": (lambda r: (r / "config.json").write_text(""), "config.json: unreadable"),
    "config a link loop": (_link_loop, "is not a run directory (no config.json)"),
    "summary a folder": (_replace_with_folder("summary.json"), "summary.json: unreadable"),
    "summary a 5000-digit number": (
        lambda r: (r / "summary.json").write_text('{"mean_accuracy": ' + "9" * 5000 + "}"),
        "summary.json: unreadable",
    ),
    "summary a list": (lambda r: (r / "summary.json").write_text("[]"), "got list"),
    "bench cell a list": (lambda r: (r / "bench-cell.json").write_text("[]"), "got list"),
    "bench cell not json": (lambda r: (r / "bench-cell.json").write_text("{"), "unreadable"),
    "failed with an object": (
        lambda r: (r / "summary.json").write_text('{"status": "failed", "error": {"a": 1}}'),
        "failed: {'a': 1}",
    ),
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    """Two good runs (read, never changed, by every case) and a run to copy and damage."""
    runs = tmp_path_factory.mktemp("runs")
    return [write_run(runs, "fedavg", seed) for seed in (0, 1)], write_run(runs, "fedbn", 0)


@pytest.mark.parametrize("case", DAMAGE)
def test_one_damaged_run_is_left_out_with_its_reason(
    tmp_path: Path, finished: tuple[list[Path], Path], case: str
) -> None:
    damage, fragment = DAMAGE[case]
    good, template = finished
    bad = Path(shutil.copytree(template, tmp_path / "runs" / template.name))
    damage(bad)
    report = build_report([*good, bad], tmp_path / "report", plots=False)
    assert list(report.tables[0]["runs"]) == [2] and len(report.skipped) == 1
    assert report.skipped[0].startswith(str(bad)) and fragment in report.skipped[0]
    assert md_text(fragment) in report.markdown.read_text()


def test_hostile_names_and_values_are_shown_not_interpreted(tmp_path: Path) -> None:
    good = write_run(tmp_path / "runs", "fedavg", 0)
    other = write_run(tmp_path / "elsewhere", "fedavg", 1)
    name = "x\n\n| evil | row |\n<img src=x onerror=alert(1)>[link](javascript:alert(2))"
    hostile = other.rename(tmp_path / "runs" / name)
    report = build_report([good, hostile], tmp_path / "report", plots=False)
    markdown, page = report.markdown.read_text(), report.html.read_text()
    # One table row, its text escaped: no raw HTML, no link.
    shown = "x \\| evil \\| row \\| &lt;img src=x onerror=alert(1)&gt;\\[link\\](javascript"
    assert f"| {shown}:alert(2)) | fedavg | 1 |" in markdown
    # Inside the raw-HTML <summary>: escaped and on one line, so no Markdown follows it.
    summary = "x | evil | row | &lt;img src=x onerror=alert(1)&gt;[link](javascript:alert(2))"
    assert f"<details><summary>{summary}: fedavg, seed 1</summary>\n" in markdown
    assert "<img" not in markdown and "<img src=x" not in page


@pytest.mark.parametrize("kind", ["a file", "a link to a folder", "a dead link"])
def test_an_output_folder_that_is_a_file_or_a_link_is_refused(tmp_path: Path, kind: str) -> None:
    run = write_run(tmp_path / "runs", "fedavg", 0)
    out, victim = tmp_path / "out", tmp_path / "victim"
    if kind == "a file":
        out.write_text("mine")
    else:
        if kind == "a link to a folder":
            victim.mkdir()
        out.symlink_to(victim)
    with pytest.raises(ReportError) as err:
        build_report([run], out, plots=False)
    assert str(err.value).startswith(f"{out}: the output folder")
    assert kind != "a file" or out.read_text() == "mine"
    assert kind != "a link to a folder" or list(victim.iterdir()) == []


def test_links_planted_as_report_files_are_replaced_not_written_through(tmp_path: Path) -> None:
    write_run(tmp_path / "runs", "fedavg", 0)
    out, victim = tmp_path / "runs" / "report", tmp_path / "victim.txt"
    victim.write_text("precious")
    out.mkdir()
    names = ["report.md", "report.html", "summary.csv", "accuracy-vs-round.png"]
    for name in names:
        (out / name).symlink_to(victim)
    assert cli_main(["report", str(tmp_path / "runs")]) == 0
    assert victim.read_text() == "precious"
    for name in names:
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 100


def test_a_report_file_that_is_a_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    run = write_run(tmp_path / "runs", "fedavg", 0)
    (tmp_path / "out" / "summary.csv").mkdir(parents=True)
    with pytest.raises(ReportError, match="cannot write the report file") as err:
        build_report([run], tmp_path / "out", plots=False)
    assert str(tmp_path / "out" / "summary.csv") in str(err.value)


def test_report_on_a_file_or_a_link_loop_finds_no_run(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "self").symlink_to(tmp_path / "loop")
    assert find_run_dirs(tmp_path / "file") == [] and find_run_dirs(tmp_path / "loop") == []
    assert cli_main(["report", str(tmp_path / "file")]) == 1
    assert "error: no finished run to report" in capsys.readouterr().err
    assert not (tmp_path / "file" / "report").exists()


# ----------------------------------------------------------- fedmatch show (cli.py)


@pytest.mark.parametrize(
    "damage",
    [
        lambda r: (r / "summary.json").write_text("{"),
        lambda r: (r / "summary.json").write_text("[]"),
        lambda r: (r / "config.json").write_text('{"run_config": {}}'),
        lambda r: (r / "config.json").unlink(),
    ],
    ids=["summary not json", "summary a list", "config without keys", "no config"],
)
def test_show_on_a_damaged_run_is_an_error_naming_the_file(tmp_path: Path, capsys, damage) -> None:
    run = write_run(tmp_path / "runs", "fedavg", 0)
    damage(run)
    assert cli_main(["show", str(run)]) == 1
    assert str(run) in capsys.readouterr().err


def test_show_names_a_run_without_summary(tmp_path: Path, capsys) -> None:
    run = write_run(tmp_path / "runs", "fedavg", 0, finish=False)
    assert cli_main(["show", str(run)]) == 1
    assert f"{run / 'summary.json'} does not exist" in capsys.readouterr().err
    assert os.path.exists(run / "config.json")
