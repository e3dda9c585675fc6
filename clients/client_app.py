"""The ClientApp: routes each message type to the workload module that handles it."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import classifier
from fedmatch.logs import setup_logging

app = ClientApp()


@app.query()
def describe(msg: Message, context: Context) -> Message:
    setup_logging()
    return classifier.handle_describe(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    setup_logging()
    return classifier.handle_train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    setup_logging()
    return classifier.handle_evaluate(msg, context)
