from __future__ import annotations

import os
import subprocess
import sys
import time

from fedmatch.localrun import is_alive, process_environ, process_tree, stale_reason, stop_tree


def _sleeper(env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    # Right after exec, /proc/<pid>/environ can still read empty on a busy machine.
    deadline = time.monotonic() + 10
    while not process_environ(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc


def test_stale_reason_reads_the_process_environment():
    venv_bin = os.path.dirname(sys.executable)
    good = _sleeper({"PATH": venv_bin, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"})
    no_flag = _sleeper({"PATH": venv_bin})
    other_path = _sleeper({"PATH": "/usr/bin", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"})
    try:
        assert stale_reason(good.pid, venv_bin) is None
        assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION" in stale_reason(no_flag.pid, venv_bin)
        assert venv_bin in stale_reason(other_path.pid, venv_bin)
    finally:
        for proc in (good, no_flag, other_path):
            proc.kill()
            proc.wait()


def test_stop_tree_stops_children_too():
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "time.sleep(60)",
        ]
    )
    try:
        for _ in range(100):
            tree = process_tree(parent.pid)
            if len(tree) == 2:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        assert len(tree) == 2
        stop_tree(parent.pid, timeout=5)
        parent.wait(timeout=5)
        assert not is_alive(tree[1])
    finally:
        parent.kill()
