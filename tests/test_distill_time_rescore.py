"""Sets kept by a time-to-accuracy run, read back as untrusted files and scored again with
several evaluation models (benchmarks/time_to_accuracy_rescore.py)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fedmatch.localrun import REPO
from tests.test_distill_time_bench import TINY, bench, fake_official  # noqa: F401 (fixture)


def _rescore():
    spec = importlib.util.spec_from_file_location(
        "time_to_accuracy_rescore", REPO / "benchmarks" / "time_to_accuracy_rescore.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kept_sets_are_rescored_with_several_models_and_resumed(bench, tmp_path: Path) -> None:  # noqa: F811
    official, sets = fake_official(tmp_path / "official"), tmp_path / "sets"
    run_file = tmp_path / "new" / "run.json"  # in a folder not there yet
    run = bench.main(
        [*TINY, "--official", str(official), "--methods", "official-dm,dm",
         "--protocols", "none", "--save-sets", str(sets), "--out", str(run_file)]
    )  # fmt: skip
    assert not any("acc_official" in r or "acc_project" in r for r in run["rows"])
    assert sorted(p.name for p in sets.iterdir()) == [
        "seed0_dm_it1.safetensors", "seed0_dm_it2.safetensors",
        "seed0_official-dm_it1.safetensors", "seed0_official-dm_it2.safetensors",
        "seed0_start_it0.safetensors",
    ]  # fmt: skip
    calls = sys.modules["utils"].CALLS
    before = calls["evaluate_synset"]
    rescore = _rescore()
    out = tmp_path / "rescored.json"
    argv = ["--sets", str(sets), "--official", str(official), "--models", "3",
            "--protocols", "official,project", "--out", str(out)]  # fmt: skip
    result = rescore.main([str(run_file), *argv])
    rows = result["rows"]
    assert [(r["method"], r["iteration"]) for r in rows] == [
        (r["method"], r["iteration"]) for r in run["rows"]
    ]
    assert all(len(r["acc_official"]) == 3 and len(r["acc_project"]) == 3 for r in rows)
    assert calls["evaluate_synset"] - before == 5 * 3  # 5 distinct sets, the start once
    starts = [r for r in rows if r["iteration"] == 0]
    assert len(starts) == 2 and starts[0]["acc_official"] == starts[1]["acc_official"]
    # distillation seconds are the run's; the report reads the file like a run's
    assert [r["distill_seconds"] for r in rows] == [r["distill_seconds"] for r in run["rows"]]
    saved = json.loads(out.read_text())
    assert saved["complete"] and saved["args"]["eval_models"] == 3
    report = sys.modules["time_to_accuracy_report"]
    summary = report.summarize(saved["rows"], saved["args"]["iterations"])
    assert set(summary) == {"official", "project"}
    # Resumed: every set already scored, so the sets are not read again.
    shutil.rmtree(sets)
    again = rescore.main([str(run_file), *argv])
    assert again["rows"] == rows
    with pytest.raises(SystemExit, match="other --models"):
        rescore.main([str(run_file), *argv[:4], "--models", "2", *argv[6:]])


def test_at_scores_the_named_checkpoints_first_and_fills_in_later(bench, tmp_path) -> None:  # noqa: F811
    official, sets = fake_official(tmp_path / "official"), tmp_path / "sets"
    run_file = tmp_path / "run.json"
    run = bench.main(
        [*TINY, "--official", str(official), "--methods", "dm", "--protocols", "none",
         "--save-sets", str(sets), "--out", str(run_file)]
    )  # fmt: skip
    calls = sys.modules["utils"].CALLS
    rescore, out = _rescore(), tmp_path / "rescored.json"
    argv = [str(run_file), "--sets", str(sets), "--official", str(official), "--models", "2",
            "--out", str(out)]  # fmt: skip
    before = calls["evaluate_synset"]
    first = rescore.main([*argv, "--at", "2"])
    assert [r["iteration"] for r in first["rows"]] == [2]
    assert calls["evaluate_synset"] - before == 2  # one set, two models
    assert not json.loads(out.read_text())["complete"]
    with pytest.raises(SystemExit, match=r"--at \[7\]: not checkpoints"):
        rescore.main([*argv, "--at", "7"])
    full = rescore.main(argv)  # the rest, in the run's order; iteration 2 kept, not rescored
    assert [r["iteration"] for r in full["rows"]] == [r["iteration"] for r in run["rows"]]
    assert calls["evaluate_synset"] - before == 3 * 2
    assert full["rows"][-1] == first["rows"][0]
    assert json.loads(out.read_text())["complete"]


def test_protocols_none_needs_somewhere_to_keep_the_sets(bench) -> None:  # noqa: F811
    with pytest.raises(SystemExit):
        bench.parse_args([*TINY, "--protocols", "none"])


def _good(ipc: int = 2) -> dict[str, torch.Tensor]:
    return {"images": torch.zeros(10 * ipc, 1, 28, 28), "labels": torch.arange(10).repeat(ipc)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra": torch.zeros(1)}, r"tensors \['extra', 'images', 'labels'\]"),
        ({"images": torch.zeros(20, 1, 28, 28, dtype=torch.float64)}, "float64"),
        ({"images": torch.zeros(19, 1, 28, 28)}, r"allowed float32 \(20, 1, 28, 28\)"),
        ({"images": torch.full((20, 1, 28, 28), float("nan"))}, "NaN or infinite"),
        ({"labels": torch.zeros(20, dtype=torch.int64)}, "0..9, 2 images each"),
        ({"labels": torch.arange(20)}, "range 0..19"),
        ({"labels": torch.arange(10).repeat(2).int()}, "labels torch.int32"),
    ],
)
def test_hostile_set_files_are_refused_by_name(bench, tmp_path, change, message) -> None:  # noqa: F811
    sets = sys.modules["time_to_accuracy_sets"]
    path = tmp_path / "seed0_dm_it1.safetensors"
    save_file({**_good(), **change}, str(path))
    with pytest.raises(ValueError, match=message) as info:
        sets.load_set(path, ipc=2)
    assert str(path) in str(info.value)


def test_set_files_round_trip_and_junk_is_named(bench, tmp_path) -> None:  # noqa: F811
    sets = sys.modules["time_to_accuracy_sets"]
    path = sets.set_path(tmp_path, 3, "dm-b64", 100)
    images = torch.randn(20, 1, 28, 28)
    sets.save_set(path, images, torch.arange(10).repeat(2))
    loaded, labels = sets.load_set(path, ipc=2)
    assert torch.equal(loaded, images) and labels.tolist() == list(range(10)) * 2
    assert sets.set_path(tmp_path, 3, "anything", 0).name == "seed3_start_it0.safetensors"
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(ValueError, match=r"junk\.safetensors: not a safetensors file"):
        sets.load_set(junk, ipc=2)
    with pytest.raises(FileNotFoundError, match="no such file"):
        sets.load_set(tmp_path / "missing.safetensors", ipc=2)
    with pytest.raises(ValueError, match="not usable in a file name"):
        sets.set_path(tmp_path, 0, "../x", 5)
