"""The ServerApp: run config -> model -> strategy -> rounds -> run directory.

Order matters for users: the run config is validated first and the partition
plan checked second, both before any message reaches a client, so a typo or an
impossible split costs seconds, not a training run.
"""

from __future__ import annotations

import logging
import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedmatch.cells import (
    END_MARK,
    START_MARK,
    CellsFileError,
    CellSpec,
    CellStatus,
    Scalar,
    append_status,
    read_cells,
)
from fedmatch.config import ConfigError, RunConfig
from fedmatch.data.loaders import (
    available_domains,
    client_partitions,
    load_domains,
    make_loader,
    to_tensors,
)
from fedmatch.logs import setup_logging
from fedmatch.methods import methods, tables
from fedmatch.records import arrays_to_state, numpy_to_arrays, state_to_arrays
from fedmatch.results import SERVER, MetricRow, RunRecorder, format_domain_table
from fedmatch.seeding import derive_seed
from fedmatch.train import evaluate, resolve_device
from strategies.base import NodeInfo, ServerEvaluate
from strategies.cell_grid import CellGrid
from strategies.exchange import send_and_collect
from strategies.rounds import NonFiniteError

log = logging.getLogger("fedmatch.server")

app = ServerApp()

# Every registered method's strategy and params, resolved while the app loads.  Imported
# later, from the run's thread, they would race the ClientApp's own imports: in simulation
# Flower loads both apps in one process at once, and diffusers' lazy modules (and package
# imports in general) are not safe to import from two threads at the same time.
STRATEGIES = {name: method.strategy_class() for name, method in methods().items()}
tables()

# Seconds to wait for the minimum number of SuperNodes to connect.
NODE_WAIT_SECONDS = 300.0


@app.main()
def main(grid: Grid, context: Context) -> None:
    setup_logging()
    run_config = dict(context.run_config)
    cells_file = str(run_config.get("cells-file", ""))
    if not cells_file:
        run(grid, run_config)
        return
    try:
        cells = read_cells(cells_file)
    except CellsFileError as err:
        log.error("%s", err)
        raise ConfigError(str(err)) from None
    run_cells(grid, run_config, cells, cells_file)


def run_cells(grid: Grid, base: dict[str, Scalar], cells: list[CellSpec], cells_file: str) -> None:
    """Run each cell as its own run (own config and run directory) on the same nodes.

    A cell that fails is recorded in the status file with its error and the next one
    starts; nothing of one cell reaches another (the clients reset their node state
    when a new cell asks them who they are).
    """
    log.info("%d cells in this run (%s)", len(cells), cells_file)
    for index, cell in enumerate(cells):
        run_config = {**base, **cell.run_config, "cells-file": ""}
        log.info("%s %s (%d/%d)", START_MARK, cell.name, index + 1, len(cells))
        start = time.perf_counter()
        status, error = "done", ""
        try:
            run(CellGrid(grid, cell.run_config), run_config)
        except Exception as err:  # the next cell must still run
            status, error = "failed", f"{type(err).__name__}: {err}"
            log.exception("cell %s failed", cell.name)
        seconds = time.perf_counter() - start
        append_status(cells_file, CellStatus(cell.name, status, error, seconds))
        log.info("%s %s %s %.2f s", END_MARK, cell.name, status, seconds)


def run(grid: Grid, run_config: dict[str, Scalar]) -> None:
    """One run: validate the config, train ``num-server-rounds`` rounds, write the results."""
    try:
        cfg = RunConfig.from_flower(run_config)
        # Checks `domains` and `target-domain` (the held-out domain) against the dataset.
        cfg.source_domains(available_domains(cfg.dataset))
    except ConfigError as err:
        log.error("%s", err)
        raise
    domains = load_domains(cfg) if cfg.server_eval else None

    node_ids = _wait_for_nodes(grid, cfg.min_available_nodes)
    if domains is not None:
        # Raises (naming the keys) if the partitioning cannot serve this many clients.
        try:
            client_partitions(cfg, domains, len(node_ids))
        except ValueError as err:
            log.error("%s", err)
            raise ConfigError(str(err)) from None

    nodes = _describe_nodes(grid, node_ids)
    # Built before the run directory exists: a model the config cannot build (a GroupNorm
    # width that does not divide, say) must not leave a config.json that blocks the name.
    try:
        strategy = STRATEGIES[cfg.strategy](cfg, nodes)
        model = strategy.initial_model(derive_seed(cfg.seed, 0))
    except ValueError as err:
        log.error("%s", err)
        raise ConfigError(f"invalid run config: {err}") from None
    recorder = RunRecorder.open(cfg, {"num_nodes": len(node_ids)})
    try:
        log.info("run directory: %s", recorder.run_dir)
        arrays = state_to_arrays(model.state_dict())
        first_round = 1
        checkpoint = recorder.load_checkpoint() if cfg.resume else None
        if checkpoint is not None:
            arrays = numpy_to_arrays(checkpoint["arrays"])
            strategy.load_state_dict(checkpoint["strategy_state"])
            first_round = checkpoint["round"] + 1
            recorder.truncate_after(checkpoint["round"])
            log.info("resuming %s after round %d", recorder.run_dir, checkpoint["round"])
        elif cfg.resume:
            recorder.truncate_after(0)
            log.info("resume: %s has no checkpoint yet, starting at round 1", recorder.run_dir)

        server_evaluate = None
        if domains is not None and strategy.global_model_is_complete:
            server_evaluate = strategy.make_server_evaluate(domains, model) or _server_evaluator(
                cfg, domains, model
            )
        elif domains is not None:
            log.info("%s keeps layers on the clients: server-side evaluation skipped", cfg.strategy)

        start = time.perf_counter()
        log.info(
            "%s on %d clients (%s, %s partitioning), rounds %d..%d",
            cfg.strategy,
            len(nodes),
            cfg.dataset,
            cfg.partitioning,
            first_round,
            cfg.num_server_rounds,
        )
        try:
            arrays = strategy.run_rounds(
                grid,
                arrays,
                first_round=first_round,
                recorder=recorder,
                server_evaluate=server_evaluate,
            )
        except NonFiniteError as err:
            log.error("%s", err)
            recorder.write_summary(
                {"strategy": cfg.strategy, "status": "failed", "error": str(err)}
            )
            raise
        model.load_state_dict(arrays_to_state(arrays))
        model_path = recorder.save_model(model.state_dict())
        summary = recorder.write_summary(
            {
                "strategy": cfg.strategy,
                "status": "done",
                "wall_seconds_this_session": time.perf_counter() - start,
                **strategy.summary_extra(),
            }
        )
        if summary["server_accuracy_per_domain"] or summary["client_accuracy_per_domain"]:
            log.info("final per-domain test accuracy:\n%s", format_domain_table(summary))
        log.info("final model: %s", model_path)
        log.info("run directory: %s", recorder.run_dir)
    finally:
        recorder.close()  # releases the run directory's lock, also when the run fails


def _wait_for_nodes(grid: Grid, minimum: int) -> list[int]:
    deadline = time.monotonic() + NODE_WAIT_SECONDS
    while len(node_ids := sorted(grid.get_node_ids())) < minimum:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(node_ids)} SuperNode(s) connected after {NODE_WAIT_SECONDS:.0f} s; "
                f"run-config key 'min-available-nodes' = {minimum}"
            )
        log.info("waiting for SuperNodes: %d of %d connected", len(node_ids), minimum)
        time.sleep(2.0)
    return node_ids


def _describe_nodes(grid: Grid, node_ids: list[int]) -> list[NodeInfo]:
    """Ask every node who it is (partition id, domain, sizes); also warms its data cache."""
    messages = [
        Message(RecordDict({"config": ConfigRecord()}), dst_node_id=node, message_type="query")
        for node in node_ids
    ]
    nodes = []
    collected = send_and_collect(grid, messages, NODE_WAIT_SECONDS)
    for node_id, reason in {**collected.gone, **collected.failed}.items():
        log.warning("SuperNode %d is left out: it did not answer who it is (%s)", node_id, reason)
    for reply in collected.replies:
        if reply.has_error():
            raise RuntimeError(
                f"node {reply.metadata.src_node_id} could not load its data: {reply.error.reason}"
            )
        info = reply.content["info"]
        nodes.append(
            NodeInfo(
                node_id=reply.metadata.src_node_id,
                partition_id=int(info["partition-id"]),
                domain=str(info["domain"]),
                num_train=int(info["num-train"]),
                num_test=int(info["num-test"]),
                device=str(info["device"]),
            )
        )
    nodes.sort(key=lambda n: n.partition_id)
    ids = [n.partition_id for n in nodes]
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"two SuperNodes report the same partition-id: {ids}")
    for n in nodes:
        log.info(
            "client %d: domain %s, %d train / %d test examples, %s",
            n.partition_id,
            n.domain,
            n.num_train,
            n.num_test,
            n.device,
        )
    return nodes


def _server_evaluator(cfg: RunConfig, domains, model: torch.nn.Module) -> ServerEvaluate:
    device = resolve_device(cfg.device)
    test_sets = {d.name: to_tensors(d.x_test, d.y_test) for d in domains}

    def server_evaluate(server_round: int, arrays: ArrayRecord) -> list[MetricRow]:
        model.load_state_dict(arrays_to_state(arrays))
        rows = []
        for name, dataset in test_sets.items():
            result = evaluate(model, make_loader(dataset, 256, shuffle=False), device)
            rows.append(MetricRow(server_round, SERVER, name, "test-accuracy", result.accuracy))
            rows.append(MetricRow(server_round, SERVER, name, "test-loss", result.loss))
        return rows

    return server_evaluate
