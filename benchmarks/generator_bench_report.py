"""The table of ``generator_bench.py``'s results."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("fedmatch.bench")


def print_table(results: dict[str, Any]) -> None:
    rows = [("teacher, 50 DDIM steps", results["teacher"]["50"])]
    rows += [("teacher, 10 DDIM steps", results["teacher"]["10"])]
    rows += [("teacher, 1 DDIM step", results["teacher"]["1"])]
    rows += [
        (f"teacher, {key.split('-')[-1]} DPM-Solver++(2M) steps", value)
        for key, value in results["teacher"].items()
        if key.startswith("dpm++2m-")
    ]
    for name, label in (
        ("dmd2-1", "DMD2 one-step"),
        ("dmd2-4", "DMD2 4-step"),
        ("disback", "DisBack one-step"),
    ):
        if name in results:
            rows.append((label, results[name]["curve"][-1]))
    # Per-domain class accuracy of samples, the header giving the real test accuracy.
    accuracy = rows[0][1].get("class_accuracy", {})
    heads = "".join(f" {d} (real {v['real']:.3f}) |" for d, v in accuracy.items())
    lines = [
        f"| sampler | FID-digits | precision | recall | ms / image |{heads}",
        "|---|---|---|---|---|" + "---|" * len(accuracy),
    ]
    for label, r in rows:
        cells = "".join(f" {v['samples']:.3f} |" for v in r.get("class_accuracy", {}).values())
        lines.append(
            f"| {label} | {r['fid']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} "
            f"| {r['ms_per_image']:.2f} |{cells}"
        )
    # A conditioned teacher: each domain's FID from its own samples, in multiples of its floor.
    floors = rows[0][1].get("fid_domain", {})
    if floors:
        heads = "".join(f" {d} (floor {v['floor']:.1f}) |" for d, v in floors.items())
        lines += ["", f"| sampler: FID-digits per domain (× floor) |{heads}"]
        lines.append("|---|" + "---|" * len(floors))
        for label, r in rows:
            cells = "".join(
                f" {v['fid']:.1f} ({v['fid'] / v['floor']:.1f}×) |"
                for v in r.get("fid_domain", {}).values()
            )
            lines.append(f"| {label} |{cells}")
    log.info("\n%s", "\n".join(lines))
