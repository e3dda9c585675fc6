from __future__ import annotations

import pytest

from fedmatch import failpoints
from fedmatch.bench.launch import snapshot_app
from fedmatch.localrun import REPO, PrivateFlower


@pytest.fixture(scope="session")
def flower(tmp_path_factory: pytest.TempPathFactory):
    """A private Flower home whose background SuperLink is stopped after the session.

    `flwr run` bundles a snapshot of the app (as ``fedmatch bench`` does): it walks every
    file of the app directory before filtering, and the repository's .venv made that
    seconds per run.  The ServerApp gets one torch thread: the two client actors already
    use both cores, and a second ServerApp thread only contends with them.
    """
    app = snapshot_app(REPO, tmp_path_factory.mktemp("app"))
    # The crash tests arm fedmatch.failpoints by writing this file (absent: no effect).
    failpoint = tmp_path_factory.mktemp("failpoint") / "armed"
    env = PrivateFlower.create(
        tmp_path_factory.mktemp("flwr-home"),
        extra_env={"OMP_NUM_THREADS": "1", failpoints.ENV: str(failpoint)},
        app=app,
    )
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


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: small CPU kernels run faster and deterministically so
    than on two threads that contend with the test's own processes."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
