from __future__ import annotations

from collections import Counter

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


# ------------------------------------------------------------------ hostile-input census
# Every test that feeds fedmatch a hostile or malformed input is marked
# ``@pytest.mark.hostile("<class>")`` so that issue 26's suite can be counted per class:
#     python -m pytest -m hostile --collect-only -q --hostile-census
HOSTILE_CLASSES = ("run-config", "run-files", "digit-five", "cert-scripts", "report")
_CENSUS = pytest.StashKey[Counter]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--hostile-census",
        action="store_true",
        help="print how many collected hostile-input cases each class has (see docs/security.md)",
    )


def _hostile_class(item: pytest.Item) -> str | None:
    classes = {tuple(mark.args) for mark in item.iter_markers("hostile")}
    if not classes:
        return None
    # A typo or a second, different class would silently miscount: refuse both.
    if len(classes) != 1 or len(cls := next(iter(classes))) != 1 or cls[0] not in HOSTILE_CLASSES:
        raise pytest.UsageError(
            f"{item.nodeid}: mark it hostile(<class>) once, with one of {HOSTILE_CLASSES}; "
            f"got {sorted(classes)}"
        )
    return cls[0]


def pytest_collection_finish(session: pytest.Session) -> None:
    census: Counter = Counter()
    for item in session.items:
        name = _hostile_class(item)
        if name is not None:
            census[name] += 1
            if item.get_closest_marker("xfail") is not None:
                census[f"{name} (xfail)"] += 1
    session.config.stash[_CENSUS] = census


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if not config.getoption("--hostile-census"):
        return
    census = config.stash.get(_CENSUS, Counter())
    terminalreporter.section("hostile-input census")
    for name in HOSTILE_CLASSES:
        xfail = census[f"{name} (xfail)"]
        note = f"  ({xfail} of them xfail: known bugs)" if xfail else ""
        terminalreporter.write_line(f"{name:<14}{census[name]:>5}{note}")
    total = sum(census[name] for name in HOSTILE_CLASSES)
    terminalreporter.write_line(f"{'total':<14}{total:>5}")
