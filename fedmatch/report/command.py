"""The shell command that reruns a run."""

from __future__ import annotations

from fedmatch.config import RunConfig
from fedmatch.localrun import toml_value
from fedmatch.report.runs import RunData

# Left out of reproduce commands: the reader picks where the new run goes.
NOT_IN_COMMAND = frozenset({"runs-dir", "run-name", "resume"})


def reproduce_command(run: RunData) -> str:
    """The `flwr run` command (from the repository root) that reruns ``run``."""
    defaults = RunConfig().to_flower()
    always = ("strategy", "seed", "num-server-rounds")
    keys = [
        k
        for k, v in run.config.items()
        if k not in NOT_IN_COMMAND and (k in always or defaults.get(k, object()) != v)
    ]
    run_config = " ".join(f"{k}={toml_value(run.config[k])}" for k in keys)
    if run.cell and run.cell.get("federation-config"):
        federation = str(run.cell["federation-config"])
    else:
        federation = f"num-supernodes={run.info.get('num_nodes', '?')}"
    return (
        "export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1\n"
        f'flwr run . --stream --run-config "{run_config}" \\\n'
        f'  --federation-config "{federation}"'
    )
