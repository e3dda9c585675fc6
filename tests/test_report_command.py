"""A report's reproduce command is safe to paste whatever a (hostile) run directory holds."""

from __future__ import annotations

import html
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from fedmatch.report import build_report, load_run
from fedmatch.report.command import reproduce_argv, reproduce_command, toml_scalar
from tests.test_report import write_run

pytestmark = pytest.mark.hostile("report")

# Each would run `touch MARKER` if pasted into a shell unquoted or inside "...".
HOSTILE = (
    "x'; touch MARKER; echo '",
    "$(touch MARKER)",
    "`touch MARKER`",
    "a\nb; touch MARKER\n",
    '"; touch MARKER; echo "',
    '\\"; touch MARKER #',
    "<script>alert('x')</script> & </code></pre>",
    "tab\there, del\x7f, bell\x07, line sep\u2028, é, 🙂",
    "```\nfenced",
)


def hostile_run(tmp_path: Path, marker: Path) -> tuple[Path, dict[str, object], str]:
    """A finished run whose config.json and bench-cell.json hold shell and HTML payloads."""
    run_dir = write_run(tmp_path / "runs", "fedavg", 0)
    values: dict[str, object] = {
        f"evil-{i}": text.replace("MARKER", str(marker)) for i, text in enumerate(HOSTILE)
    }
    values["data-root"] = HOSTILE[0].replace("MARKER", str(marker))
    values[f"bad key=$(touch {marker})"] = 1.5
    values["no-float"] = float("inf")
    config_path = run_dir / "config.json"
    info = json.loads(config_path.read_text())
    info["run_config"].update(values)
    config_path.write_text(json.dumps(info))
    federation = f"num-supernodes=2 $(touch {marker})\n`touch {marker}`'"
    (run_dir / "bench-cell.json").write_text(json.dumps({"federation-config": federation}))
    return run_dir, values, federation


@pytest.mark.parametrize("text", HOSTILE)
def test_toml_values_round_trip(text: str):
    for value in (text, 3, -0.25, 1e-05, True, False):
        assert tomllib.loads(f"v = {toml_scalar(value)}")["v"] == value


def test_the_command_parses_back_to_the_intended_argv(tmp_path: Path):
    marker = tmp_path / "pwned"
    run_dir, values, federation = hostile_run(tmp_path, marker)
    run = load_run(run_dir)
    command = reproduce_command(run)

    tokens = shlex.split(command)
    assert tokens[:2] == ["export", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1"]
    argv = tokens[2:]
    assert argv == reproduce_argv(run)
    assert argv[:5] == ["flwr", "run", ".", "--stream", "--run-config"]
    assert argv[6:] == ["--federation-config", federation]
    # Flower's own parser reads every value back as the run had it, and nothing else.
    parsed = parse_config_args([argv[5]])
    assert {k: parsed[k] for k in values} == values
    assert parsed == {k: run.config[k] for k in parsed}
    assert {"strategy", "seed", "num-server-rounds"} <= set(parsed)
    assert not {"runs-dir", "run-name", "resume"} & set(parsed)


def test_pasting_the_command_runs_nothing_else(tmp_path: Path):
    marker = tmp_path / "pwned"
    run_dir, _, _ = hostile_run(tmp_path, marker)
    run = load_run(run_dir)
    bin_dir, argv_file = tmp_path / "bin", tmp_path / "argv.json"
    bin_dir.mkdir()
    stub = bin_dir / "flwr"  # stands in for the CLI: records the arguments it was given
    stub.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(argv_file)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    stub.chmod(0o755)
    subprocess.run(
        ["bash", "-c", reproduce_command(run)],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        cwd=tmp_path,
        check=True,
        timeout=60,
    )
    assert json.loads(argv_file.read_text()) == reproduce_argv(run)[1:]
    assert not marker.exists()


def test_the_report_shows_the_command_escaped(tmp_path: Path):
    marker = tmp_path / "pwned"
    run_dir, _, _ = hostile_run(tmp_path, marker)
    command = reproduce_command(load_run(run_dir))
    report = build_report([run_dir], tmp_path / "report", plots=False)

    page = report.html.read_text()
    assert "<script>" not in page and "</code></pre> &" not in page
    blocks = [html.unescape(b) for b in re.findall(r"<pre><code>(.*?)</code></pre>", page, re.S)]
    assert command in blocks
    # The value's ``` cannot close the Markdown fence: the fence is longer.
    assert "```" in command
    assert f"````bash\n{command}\n````\n" in report.markdown.read_text()
