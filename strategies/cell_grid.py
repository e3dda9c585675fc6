"""A Grid that tells every client which cell's run config a message belongs to.

When one `flwr run` runs several cells (run-config key ``cells-file``,
``fedmatch/cells.py``), the clients' ``context.run_config`` is the app's, not the
cell's.  ``CellGrid`` wraps the real grid and adds the cell's run-config overrides to
every message it sends, as a config record named ``fedmatch.cells.CELL_RECORD``; the ClientApp
applies them before any handler runs (``clients/client_app.py``).  Strategies need not
know: they use the grid as always.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedmatch.cells import CELL_RECORD


class CellGrid(Grid):
    """Delegates to ``grid``; every pushed message carries ``overrides``."""

    def __init__(self, grid: Grid, overrides: Mapping[str, str | int | float | bool]) -> None:
        self._grid = grid
        self._record = ConfigRecord(dict(overrides))

    def _tag(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        for message in messages:
            message.content[CELL_RECORD] = self._record
        return messages

    @property
    def run(self) -> Run:
        return self._grid.run

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(self._tag(messages))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._grid.send_and_receive(self._tag(messages), timeout=timeout)
