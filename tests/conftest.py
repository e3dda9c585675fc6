from __future__ import annotations

import pytest

from fedmatch.localrun import PrivateFlower


@pytest.fixture(scope="session")
def flower(tmp_path_factory: pytest.TempPathFactory):
    """A private Flower home whose background SuperLink is stopped after the session."""
    env = PrivateFlower.create(tmp_path_factory.mktemp("flwr-home"))
    yield env
    env.stop()


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory):
    """One embedded-data cache shared by every test of the session."""
    return tmp_path_factory.mktemp("fedmatch-cache")


@pytest.fixture
def flower_task(monkeypatch):
    """Lets tests build Flower Messages outside a run (Flower reads the run id from here)."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)
