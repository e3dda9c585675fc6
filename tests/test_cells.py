"""The cells file, its status file, and the client's per-cell context (no Flower run)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from clients.client_app import cell_context, claim_node_state
from fedmatch.cells import (
    CELL_RECORD,
    CellsFileError,
    CellSpec,
    CellStatus,
    append_status,
    read_cells,
    read_status,
    write_cells,
)
from fedmatch.config import RunConfig


def test_cells_round_trip_and_a_new_file_forgets_old_statuses(tmp_path: Path):
    path = tmp_path / "cells.json"
    cells = [CellSpec("a", {"seed": 1, "run-name": "a"}), CellSpec("b", {"lr": 0.1})]
    write_cells(path, cells)
    assert read_cells(path) == cells
    append_status(path, CellStatus("a", "done", "", 1.5))
    append_status(path, CellStatus("b", "failed", "ConfigError: x", 0.2))
    assert read_status(path)["b"] == CellStatus("b", "failed", "ConfigError: x", 0.2)
    write_cells(path, cells)
    assert read_status(path) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "no such file"),
        ("{not json", "cannot be read as JSON"),
        ('{"cells": []}', "at least one cell"),
        ('{"cells": [{"name": "a"}]}', "'run-config' table"),
        ('{"cells": [{"name": "a", "run-config": {}}, {"name": "a", "run-config": {}}]}', "twice"),
        ('{"cells": [{"name": "a", "run-config": {"seed": [1]}}]}', "non-scalar"),
        ('{"cells": [{"name": "a", "run-config": {"cells-file": "x"}}]}', "may not set"),
    ],
)
@pytest.mark.hostile("run-config")
def test_bad_cells_files_are_refused_with_the_reason(tmp_path: Path, text, message):
    path = tmp_path / "cells.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(CellsFileError, match=message) as info:
        read_cells(path)
    assert "run-config key 'cells-file'" in str(info.value)


def _context(run_config: dict) -> Context:
    return Context(
        run_id=1,
        node_id=5,
        node_config={"partition-id": 0, "num-partitions": 2},
        state=RecordDict(),
        run_config=run_config,
    )


def test_a_cell_message_brings_its_run_config_and_a_new_cell_empties_node_state(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):  # Message() reads them
        monkeypatch.setattr(TaskIdentity, attr, 1)
    app_config = RunConfig().to_flower()
    context = _context(app_config)
    plain = Message(RecordDict({"config": ConfigRecord()}), dst_node_id=5, message_type="query")
    assert cell_context(plain, context) is context

    def message(overrides: dict) -> Message:
        content = RecordDict({"config": ConfigRecord(), CELL_RECORD: ConfigRecord(overrides)})
        return Message(content, dst_node_id=5, message_type="query")

    first = cell_context(message({"run-name": "a", "seed": 2}), context)
    assert first.run_config["seed"] == 2 and first.run_config["lr"] == app_config["lr"]
    assert first.state is context.state  # what a handler stores persists
    claim_node_state(first)
    first.state["local-arrays"] = ArrayRecord({})
    claim_node_state(first)  # the same cell asks again (e.g. a resumed run): kept
    assert "local-arrays" in context.state

    second = cell_context(message({"run-name": "b", "seed": 2}), context)
    claim_node_state(second)
    assert "local-arrays" not in context.state
