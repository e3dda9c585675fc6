"""Two grids on one machine: their private Ray heads must not hand out the same ports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fedmatch.bench.launch import RayHead

# A driver that attaches to the head at argv[1] and runs one task (what a cell's simulation
# does first); it prints the task's result.
DRIVER = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
print(ray.get(ray.remote(lambda: 41 + 1).remote()))
"""


def test_two_heads_serve_drivers_started_together(tmp_path: Path):
    """Regression: both clusters gave their first driver port 10002 (Ray's default worker
    range), so of two grids started together one simulation died with "Failed to start the
    grpc server ... port is 10002" and its cell failed with nothing in its log."""
    heads = [RayHead.start(tmp_path / f"ray-{i}.log", num_cpus=1) for i in range(2)]
    try:
        drivers = [
            subprocess.Popen(
                [sys.executable, "-c", DRIVER, head.address],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for head in heads
        ]
        results = [d.communicate(timeout=180) for d in drivers]
    finally:
        for head in heads:
            head.stop()
    for driver, (out, err) in zip(drivers, results, strict=True):
        assert driver.returncode == 0, err[-2000:]
        assert out.strip().splitlines()[-1] == "42"
