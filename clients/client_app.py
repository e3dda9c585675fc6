"""The ClientApp: routes each message type to the workload module that handles it."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import aligner, classifier, distiller
from fedmatch.logs import setup_logging

app = ClientApp()


@app.query()
def describe(msg: Message, context: Context) -> Message:
    setup_logging()
    return classifier.handle_describe(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    setup_logging()
    if context.run_config.get("strategy") == "fedka":
        # FedKA trains with the MK-MMD (and DANN) alignment terms.
        return aligner.handle_train(msg, context)
    return classifier.handle_train(msg, context)


@app.train(distiller.DISTILL_ACTION)
def distill(msg: Message, context: Context) -> Message:
    # "train.distill": condense the local data (DM/NCFM); see clients/distiller.py.
    setup_logging()
    return distiller.handle_distill(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    setup_logging()
    return classifier.handle_evaluate(msg, context)
