"""Reports built from run directories written here with fixed metrics (no Flower)."""

from __future__ import annotations

import base64
import io
import json
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from fedmatch.cli import main as cli_main
from fedmatch.config import RunConfig
from fedmatch.report import ReportError, build_report, find_run_dirs, load_run
from fedmatch.results import SERVER, MetricRow, RunRecorder

DOMAINS = ("mnist", "optdigits")
ROUNDS = 3
TARGET = 0.61
# Client-model accuracy per (strategy, domain) in round 1; +0.1 per round, +0.02 per seed.
BASE_ACC = {
    ("fedavg", "mnist"): 0.50,
    ("fedavg", "optdigits"): 0.40,
    ("fedbn", "mnist"): 0.55,
    ("fedbn", "optdigits"): 0.45,
}
BYTES = {"fedavg": 4000.0, "fedbn": 3000.0}


def accuracy(strategy: str, domain: str, rnd: int, seed: int) -> float:
    return BASE_ACC[(strategy, domain)] + 0.1 * (rnd - 1) + 0.02 * seed


def seconds(strategy: str, rnd: int, seed: int) -> float:
    return 2.0 + 0.5 * seed + 0.25 * rnd + (1.0 if strategy == "fedbn" else 0.0)


def write_run(
    runs_dir: Path, strategy: str, seed: int, *, finish: bool = True, **overrides
) -> Path:
    """A run directory as the ServerApp writes it (RunRecorder), with fixed metrics."""
    name = f"{strategy}-s{seed}" + "".join(f"-{k}{v}" for k, v in overrides.items())
    cfg = RunConfig.from_flower(
        {
            "strategy": strategy,
            "seed": seed,
            "domains": ",".join(DOMAINS),
            "num-server-rounds": ROUNDS,
            "model-width": 16,
            "runs-dir": str(runs_dir),
            "run-name": name,
            **overrides,
        }
    )
    recorder = RunRecorder.open(cfg, {"num_nodes": len(DOMAINS)})
    if strategy == "fedavg":  # the initial global model, evaluated on the server
        recorder.append(MetricRow(0, SERVER, d, "test-accuracy", 0.1) for d in DOMAINS)
    for rnd in range(1, ROUNDS + 1):
        rows = []
        for pid, domain in enumerate(DOMAINS):
            rows += [
                MetricRow(rnd, pid, domain, "bytes-down", BYTES[strategy]),
                MetricRow(rnd, pid, domain, "bytes-up", BYTES[strategy]),
                MetricRow(rnd, pid, domain, "train-loss", 1.0 / rnd),
                MetricRow(rnd, pid, domain, "test-accuracy", accuracy(strategy, domain, rnd, seed)),
            ]
            if strategy == "fedavg":  # global model on the server: must not be the headline
                rows.append(MetricRow(rnd, SERVER, domain, "test-accuracy", 0.01))
        rows.append(MetricRow(rnd, SERVER, "all", "round-seconds", seconds(strategy, rnd, seed)))
        recorder.append(rows)
        if not finish and rnd == 1:
            return recorder.run_dir
    recorder.write_summary({"strategy": strategy})
    return recorder.run_dir


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [write_run(tmp_path / "runs", s, seed) for s in ("fedavg", "fedbn") for seed in (0, 1)]


def pm(values: list[float], digits: int = 3) -> str:
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def test_table_values_match_the_metrics(runs: list[Path], tmp_path: Path):
    report = build_report(runs, tmp_path / "report", target_accuracy=TARGET, plots=False)

    csv = pd.read_csv(report.csv)
    assert len(csv) == 4
    for _, row in csv.iterrows():
        strategy, seed = row["strategy"], int(row["seed"])
        final = {d: accuracy(strategy, d, ROUNDS, seed) for d in DOMAINS}
        assert row["final_mean_accuracy"] == pytest.approx(sum(final.values()) / 2)
        assert row["worst_domain"] == "optdigits"
        assert row["worst_domain_accuracy"] == pytest.approx(final["optdigits"])
        for d in DOMAINS:
            assert row[f"accuracy.{d}"] == pytest.approx(final[d])
        # First round whose mean over domains reaches the target.
        means = [sum(accuracy(strategy, d, r, seed) for d in DOMAINS) / 2 for r in (1, 2, 3)]
        expected = next((r for r, m in zip((1, 2, 3), means, strict=True) if m >= TARGET), None)
        assert (None if pd.isna(row["rounds_to_target"]) else row["rounds_to_target"]) == expected
        assert row["bytes_down_per_client_round"] == BYTES[strategy]
        assert row["bytes_up_per_client_round"] == BYTES[strategy]
        per_round = [seconds(strategy, r, seed) for r in (1, 2, 3)]
        assert row["seconds_per_round"] == pytest.approx(sum(per_round) / 3)
        # The headline is the same number summary.json gives (client models, not server).
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert row["final_mean_accuracy"] == pytest.approx(summary["mean_accuracy"])
        assert row["accuracy_source"] == "client models"

    table = summary_rows(report.markdown.read_text())
    for strategy in ("fedavg", "fedbn"):
        row = table[strategy]
        finals = [sum(accuracy(strategy, d, ROUNDS, s) for d in DOMAINS) / 2 for s in (0, 1)]
        assert row["final avg acc"] == pm(finals)
        assert row["worst-domain acc"] == pm(
            [accuracy(strategy, "optdigits", ROUNDS, s) for s in (0, 1)]
        )
        for d in DOMAINS:
            assert row[d] == pm([accuracy(strategy, d, ROUNDS, s) for s in (0, 1)])
        secs = [statistics.mean(seconds(strategy, r, s) for r in (1, 2, 3)) for s in (0, 1)]
        assert row["s / round"] == pm(secs, 2)
        kb = f"{BYTES[strategy] / 1e3:.1f} ± 0.0"
        assert row["KB down / client / round"] == row["KB up / client / round"] == kb
        assert row["runs (seeds)"] == "2 (0,1)"
    # Mean accuracy over domains per round, seeds 0/1: fedavg 0.45/0.47, 0.55/0.57,
    # 0.65/0.67; fedbn 0.50/0.52, 0.60/0.62, 0.70/0.72.
    assert table["fedavg"][f"rounds to {TARGET:.3f}"] == "3.0 ± 0.0"
    assert table["fedbn"][f"rounds to {TARGET:.3f}"] == "2.5 ± 0.7"
    strict = summary_rows(
        build_report(runs, tmp_path / "r2", target_accuracy=0.66, plots=False).markdown.read_text()
    )
    assert strict["fedavg"]["rounds to 0.660"] == "3.0 (1/2 runs reached it)"
    assert strict["fedbn"]["rounds to 0.660"] == "3.0 ± 0.0"
    never = summary_rows(
        build_report(runs, tmp_path / "r3", target_accuracy=0.9, plots=False).markdown.read_text()
    )
    assert never["fedbn"]["rounds to 0.900"] == "not reached"


def summary_rows(markdown: str) -> dict[str, dict[str, str]]:
    """The summary table of report.md: strategy -> column -> cell text."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| strategy |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def test_plots_exist_and_the_html_embeds_them(runs: list[Path], tmp_path: Path):
    report = build_report(runs, tmp_path / "report")
    assert len(report.images) == 4
    for path in report.images:
        assert path.stat().st_size > 1000
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG"
        assert f"]({path.name})" in report.markdown.read_text()
    page = report.html.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == 4
    assert {base64.b64decode(e) for e in embedded} == {p.read_bytes() for p in report.images}
    for data in embedded:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.size[0] > 100
    assert "<img" in page and 'src="accuracy' not in page  # nothing linked, all embedded


def test_every_run_has_its_config_and_a_command(runs: list[Path], tmp_path: Path):
    report = build_report(runs, tmp_path / "report", plots=False)
    markdown = report.markdown.read_text()
    for run_dir in runs:
        config = json.loads((run_dir / "config.json").read_text())["run_config"]
        assert json.dumps(config, indent=2, sort_keys=True) in markdown
        assert f"{run_dir.name}: {config['strategy']}, seed {config['seed']}" in markdown
    assert markdown.count("flwr run . --stream --run-config") == 4
    assert 'strategy="fedbn"' in markdown and "seed=1" in markdown
    assert "num-supernodes=2" in markdown  # from config.json's num_nodes


def test_default_target_is_relative_to_the_best_run(runs: list[Path], tmp_path: Path):
    report = build_report(runs, tmp_path / "report", plots=False)
    best = max(sum(accuracy("fedbn", d, ROUNDS, 1) for d in DOMAINS) / 2, 0)
    assert report.groups[0].target == pytest.approx(round(0.9 * best, 3))
    assert f"0.9 × the best final avg accuracy {best:.3f}" in report.markdown.read_text()


def test_incompatible_runs_are_grouped_or_refused(runs: list[Path], tmp_path: Path):
    wide = write_run(tmp_path / "runs", "fedavg", 0, **{"model-width": 32})
    longer = write_run(tmp_path / "runs", "fedavg", 1, **{"num-server-rounds": 4})
    everything = [*runs, wide, longer]

    with pytest.raises(ReportError) as err:
        build_report(everything, tmp_path / "strict", strict=True)
    message = str(err.value)
    assert "model-width: 16" in message and "32 (fedavg-s0-model-width32)" in message
    assert "num-server-rounds" in message
    assert not (tmp_path / "strict" / "report.md").exists()

    report = build_report(everything, tmp_path / "grouped")
    assert len(report.groups) == 3
    markdown = report.markdown.read_text()
    assert "reported as 3 separate groups" in markdown
    assert "width 32" in markdown and "4 rounds" in markdown
    # The four comparable runs stay together; the others are alone in their groups.
    assert sorted(len(g.runs) for g in report.groups) == [1, 1, 4]
    assert len(report.images) == 12 and all(p.name.startswith("group") for p in report.images)
    assert set(pd.read_csv(report.csv)["group"]) == {1, 2, 3}


def test_other_differences_become_labelled_variants(tmp_path: Path):
    runs = [
        write_run(tmp_path / "runs", "fedavg", seed, **{"lr": lr})
        for lr in (0.01, 0.1)
        for seed in (0, 1)
    ]
    report = build_report(runs, tmp_path / "report", plots=False)
    assert len(report.groups) == 1
    assert list(report.tables[0].index) == ["fedavg (lr=0.01)", "fedavg (lr=0.1)"]
    assert list(report.tables[0]["runs"]) == [2, 2]


@pytest.mark.hostile("report")
def test_a_run_saved_before_a_key_existed_groups_with_its_default(tmp_path: Path):
    """An older fedmatch did not save the keys added since; their defaults are what it ran."""
    runs = [write_run(tmp_path / "runs", "fedavg", seed) for seed in (0, 1)]
    config_path = runs[0] / "config.json"
    saved = json.loads(config_path.read_text())
    del saved["run_config"]["generator.critic-steps"]
    config_path.write_text(json.dumps(saved))
    report = build_report(runs, tmp_path / "report", plots=False)
    assert list(report.tables[0].index) == ["fedavg"]
    assert list(report.tables[0]["runs"]) == [2]


@pytest.mark.hostile("report")
def test_unfinished_runs_are_listed_and_left_out(runs: list[Path], tmp_path: Path):
    partial = write_run(tmp_path / "runs", "fedbn", 5, finish=False)
    report = build_report([*runs, partial], tmp_path / "report", plots=False)
    assert len(report.runs) == 4
    assert f"{partial} did not finish (no summary.json)" in report.markdown.read_text()
    with pytest.raises(ReportError, match="no finished run"):
        build_report([partial], tmp_path / "none")


def test_cli_finds_run_directories_below_a_folder(runs: list[Path], tmp_path: Path, capsys):
    nested = tmp_path / "bench-out"
    (nested / "runs").mkdir(parents=True)
    for run in runs:
        run.rename(nested / "runs" / run.name)
    assert len(find_run_dirs(nested)) == 4
    assert find_run_dirs(nested / "runs" / runs[0].name) == [nested / "runs" / runs[0].name]
    assert cli_main(["report", str(nested)]) == 0
    assert (nested / "report" / "report.html").exists()
    assert "report of 4 run(s)" in capsys.readouterr().out
    assert cli_main(["report", str(tmp_path / "empty")]) == 1
    assert load_run(nested / "runs" / runs[0].name).final_round == ROUNDS


def test_leave_one_domain_out_runs_get_a_target_domain_column(tmp_path: Path):
    # FedAvg (source only): the server's global-model accuracy on the held-out domain;
    # FedKA: its fine-tuned model's, which takes precedence over its averaged one.
    runs = tmp_path / "runs"
    final = {("fedavg", 0): 0.70, ("fedavg", 1): 0.74, ("fedka", 0): 0.80, ("fedka", 1): 0.86}
    for (strategy, seed), value in final.items():
        cfg = RunConfig.from_flower(
            {
                "strategy": strategy,
                "seed": seed,
                "domains": "mnist,optdigits,font-digits",
                "target-domain": "font-digits",
                "num-server-rounds": 2,
                "runs-dir": str(runs),
                "run-name": f"{strategy}-{seed}",
            }
        )
        recorder = RunRecorder.open(cfg, {"num_nodes": 2})
        for rnd in (1, 2):
            rows = [MetricRow(rnd, pid, d, "test-accuracy", 0.9) for pid, d in enumerate(DOMAINS)]
            value_now = value if rnd == 2 else 0.3
            if strategy == "fedka":
                rows += [
                    MetricRow(rnd, SERVER, "font-digits", "target-accuracy-finetuned", value_now),
                    MetricRow(rnd, SERVER, "font-digits", "target-accuracy-averaged", 0.01),
                ]
            else:
                rows.append(MetricRow(rnd, SERVER, "font-digits", "test-accuracy", value_now))
            recorder.append(rows)
        recorder.write_summary({"strategy": strategy})

    out = tmp_path / "report"
    build_report(find_run_dirs(runs), out, plots=False)
    report = (out / "report.md").read_text()
    assert "target font-digits acc" in report
    assert "| fedavg | 2 (0,1) | 0.720 ± 0.028 |" in report
    assert "| fedka | 2 (0,1) | 0.830 ± 0.042 |" in report
    table = pd.read_csv(out / "summary.csv").set_index("run")
    assert table.loc["fedka-1", "target_domain_accuracy"] == pytest.approx(0.86)


@pytest.mark.hostile("report")
def test_a_run_saved_with_the_flat_keys_of_before_the_tables_still_reports(tmp_path: Path):
    """Run directories written before the namespaced tables spell keys flat (mmd-weight);
    the report translates them, so old and new runs of one experiment group together."""
    from fedmatch.legacy_keys import LEGACY_KEYS

    runs = [write_run(tmp_path / "runs", "fedavg", seed) for seed in (0, 1)]
    config_path = runs[0] / "config.json"
    saved = json.loads(config_path.read_text())
    new_to_old = {new: old for old, new in LEGACY_KEYS.items()}
    saved["run_config"] = {new_to_old.get(k, k): v for k, v in saved["run_config"].items()}
    assert "proximal-mu" in saved["run_config"] and "ipc" in saved["run_config"]
    config_path.write_text(json.dumps(saved))
    report = build_report(runs, tmp_path / "report", plots=False)
    assert list(report.tables[0].index) == ["fedavg"]
    assert list(report.tables[0]["runs"]) == [2]
    loaded = load_run(runs[0])
    assert loaded.config["fedprox.proximal-mu"] == 0.01 and "proximal-mu" not in loaded.config


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda d: (d / "summary.json").write_text("{not json"), "summary.json: unreadable"),
        (lambda d: (d / "config.json").write_text("[1, 2]"), "config.json: expected a JSON object"),
        (lambda d: (d / "config.json").write_text('{"run_config": 3}'), "no 'run_config' object"),
        (lambda d: (d / "summary.json").write_bytes(b"\xff\xfe"), "summary.json: unreadable"),
        (
            lambda d: (d / "metrics.jsonl").write_text('{"round": 1}\ngarbage\n{"round": 2}\n'),
            "metrics.jsonl",
        ),
    ],
)
@pytest.mark.hostile("report")
def test_a_damaged_run_is_skipped_with_its_reason_and_the_rest_reported(
    tmp_path: Path, damage, fragment: str
):
    good = [write_run(tmp_path / "runs", "fedavg", seed) for seed in (0, 1)]
    bad = write_run(tmp_path / "runs", "fedbn", 0)
    damage(bad)
    report = build_report([*good, bad], tmp_path / "report", plots=False)
    assert list(report.tables[0]["runs"]) == [2]
    text = report.markdown.read_text()
    assert str(bad) in text and fragment in text
