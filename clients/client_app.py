"""The ClientApp: routes each message type to the workload module that handles it.

Before routing, ``cell_context`` applies the run config of the cell a message belongs
to, when one `flwr run` runs several cells (run-config key ``cells-file``,
``fedmatch/cells.py``); handlers then read ``context.run_config`` as always.
"""

from __future__ import annotations

import dataclasses
import json

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from clients import classifier, distiller, fedlgd, generator, quantizer
from fedmatch.cells import CELL_RECORD
from fedmatch.distill.fedlgd_wire import STATS_ACTION
from fedmatch.factories.diffusion import GENERATOR_ACTION, TEACHER_ACTION
from fedmatch.factories.quant import CALIBRATE_ACTION
from fedmatch.logs import setup_logging
from fedmatch.methods import get_method, methods, tables

app = ClientApp()

# Every registered method's client workload, imported while the app loads (see the same
# note in strategies/server_app.py: imports from two threads at once can fail).
TRAIN_HANDLERS = {name: method.train_handler() for name, method in methods().items()}
tables()

# Node-state record naming the run config the node state belongs to.
_STATE_OWNER = "fedmatch-state-owner"


def cell_context(msg: Message, context: Context) -> Context:
    """``context`` with the run config of the message's cell (itself if it has none).

    The node state is the same object, so what a handler stores there persists.
    """
    overrides = msg.content.config_records.get(CELL_RECORD)
    if overrides is None:
        return context
    return dataclasses.replace(context, run_config={**context.run_config, **dict(overrides)})


def claim_node_state(context: Context) -> None:
    """Empty the node state if an earlier cell of this `flwr run` left it.

    Called when the server asks a node who it is, which it does first in every run
    and every cell: FedBN's local layers or a distilled set of one cell must never
    reach the next.
    """
    owner = json.dumps(dict(context.run_config), sort_keys=True)
    record = context.state.config_records.get(_STATE_OWNER)
    if record is not None and record["run-config"] != owner:
        context.state.clear()
    context.state[_STATE_OWNER] = ConfigRecord({"run-config": owner})


@app.query()
def describe(msg: Message, context: Context) -> Message:
    setup_logging()
    context = cell_context(msg, context)
    claim_node_state(context)
    return classifier.handle_describe(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    setup_logging()
    context = cell_context(msg, context)
    # The method's own workload (fedmatch/methods.py: Method.train), e.g. FedKA's alignment.
    strategy = str(context.run_config.get("strategy", "fedavg"))
    if strategy not in TRAIN_HANDLERS:  # the ServerApp validated it: a mismatched node
        raise ValueError(f"this node has no method {strategy!r}: {get_method(strategy)}")
    return TRAIN_HANDLERS[strategy](msg, context)


@app.train(distiller.DISTILL_ACTION)
def distill(msg: Message, context: Context) -> Message:
    # "train.distill": condense the local data (DM/NCFM); see clients/distiller.py.
    setup_logging()
    return distiller.handle_distill(msg, cell_context(msg, context))


@app.query(STATS_ACTION)
def class_stats(msg: Message, context: Context) -> Message:
    # "query.class_stats": FedLGD's per-class image statistics; see clients/fedlgd.py.
    setup_logging()
    return fedlgd.handle_stats(msg, cell_context(msg, context))


@app.train(TEACHER_ACTION.removeprefix("train."))
def train_teacher(msg: Message, context: Context) -> Message:
    # "train.teacher": DDPM steps of the diffusion teacher; see clients/generator.py.
    setup_logging()
    return generator.handle_teacher(msg, cell_context(msg, context))


@app.train(GENERATOR_ACTION.removeprefix("train."))
def train_generator(msg: Message, context: Context) -> Message:
    # "train.generator": DMD2/DisBack generator distillation; see clients/generator.py.
    setup_logging()
    return generator.handle_generator(msg, cell_context(msg, context))


@app.train(CALIBRATE_ACTION.removeprefix("train."))
def train_calibrate(msg: Message, context: Context) -> Message:
    # "train.calibrate": PTQ calibration statistics of the teacher; see clients/quantizer.py.
    setup_logging()
    return quantizer.handle_calibrate(msg, cell_context(msg, context))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    setup_logging()
    return classifier.handle_evaluate(msg, cell_context(msg, context))
