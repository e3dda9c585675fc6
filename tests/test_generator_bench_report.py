"""The generator benchmark's table: per-domain FID in multiples of each domain's real floor."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from generator_bench_report import print_table


def _point(fid: float, domain_fids: dict[str, float] | None) -> dict:
    point = {"fid": fid, "precision": 0.5, "recall": 0.25, "ms_per_image": 3.0}
    point["class_accuracy"] = {"mnist": {"samples": 0.9, "real": 0.97}}
    if domain_fids is not None:
        floors = {"mnist": 20.0, "svhn": 40.0}
        point["fid_domain"] = {d: {"fid": v, "floor": floors[d]} for d, v in domain_fids.items()}
    return point


def test_table_gives_each_domain_fid_as_a_multiple_of_its_floor(caplog):
    results = {
        "teacher": {
            "50": _point(100.0, {"mnist": 60.0, "svhn": 200.0}),
            "10": _point(120.0, {"mnist": 90.0, "svhn": 220.0}),
            "1": _point(900.0, {"mnist": 700.0, "svhn": 800.0}),
        },
        "dmd2-1": {"curve": [_point(150.0, {"mnist": 100.0, "svhn": 300.0})]},
    }
    with caplog.at_level(logging.INFO, logger="fedmatch.bench"):
        print_table(results)
    text = caplog.text
    assert "| mnist (floor 20.0) | svhn (floor 40.0) |" in text
    assert "| teacher, 50 DDIM steps | 60.0 (3.0×) | 200.0 (5.0×) |" in text
    assert "| DMD2 one-step | 100.0 (5.0×) | 300.0 (7.5×) |" in text


def test_table_without_domain_fids_has_no_floor_section(caplog):
    point = _point(100.0, None)
    with caplog.at_level(logging.INFO, logger="fedmatch.bench"):
        print_table({"teacher": {"50": point, "10": point, "1": point}})
    assert "floor" not in caplog.text and "| teacher, 1 DDIM step | 100.00" in caplog.text
