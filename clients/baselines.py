"""The comparison baselines' client workload: SCAFFOLD, FedNova, FedDyn, MOON and VHL.

Each trains with the one local loop (``clients.classifier.local_training``) and adds what its
method needs; the math is in ``fedmatch.baselines``:

- ``scaffold``: the gradient correction −c_i + c (``grad_hook``), then the option-II update
  of c_i; replies with the model and Δc_i (record ``scaffold-delta-control``);
- ``fednova``: plain local SGD; the server normalises by the ``train-steps`` every reply
  already carries, so nothing extra is sent;
- ``feddyn``: the dynamic regulariser (``extra_loss``), then the gradient-state update;
- ``moon``: the model-contrastive loss against the received global model and this client's
  previous local model (``feature_loss``);
- ``vhl``: cross-entropy on a batch of the run's virtual data and the SupCon alignment of
  natural to virtual features (``feature_loss``); the virtual data is generated from the run
  seed on every client, so nothing extra travels.

State kept across rounds (c_i, FedDyn's ∇L_k(θ_k^{t−1}), MOON's previous model) goes through
``clients.local_state``, so a killed and resumed run finds the state of the last round it
completed.  A client's first round starts from zeros (c_i, FedDyn) or without a previous
model (MOON), as in each paper.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from clients.classifier import (
    _client_data,
    _model_with,
    local_training,
    train_metrics,
    training_set,
)
from clients.local_state import load_local_state, save_local_state
from fedmatch.baselines import feddyn, moon, scaffold, vhl
from fedmatch.baselines.common import State, zeros_like
from fedmatch.config import RunConfig
from fedmatch.factories.models import model_from_config
from fedmatch.records import arrays_to_state, state_to_arrays
from fedmatch.seeding import derive_seed
from fedmatch.train import resolve_device
from strategies.feddyn import FedDynParams
from strategies.moon import MoonParams
from strategies.vhl import VHLParams

# Purpose tags that keep the seeds of this module's random draws apart.
_VHL_DATA = 61
_VHL_BATCHES = 62


def handle_train(msg: Message, context: Context) -> Message:
    cfg, data, partition_id = _client_data(context)
    config = msg.content["config"]
    server_round = int(config["server-round"])
    run_dir = str(config["run-dir"])
    device = resolve_device(cfg.device)
    model, sent_keys, local_keys = _model_with(cfg, msg, context, partition_id, server_round - 1)
    train_set = training_set(cfg, data, context, partition_id, device)
    # x / θ^{t−1}: the model as received, before any local step.
    received: State = {n: p.detach().clone() for n, p in model.named_parameters()}
    extra_records: dict[str, ArrayRecord] = {}
    extra_metrics: dict[str, int | float] = {}

    def previous(slot: str) -> State | None:
        return load_local_state(context, run_dir, partition_id, server_round - 1, slot=slot)

    def keep(slot: str, state: State) -> None:
        save_local_state(context, run_dir, partition_id, server_round, state, slot=slot)

    if cfg.strategy == "scaffold":
        c_global = arrays_to_state(msg.content[scaffold.CONTROL_RECORD])
        c_local = previous(scaffold.CLIENT_STATE_SLOT) or zeros_like(c_global)
        result = local_training(
            cfg,
            train_set,
            model,
            server_round,
            partition_id,
            device,
            grad_hook=scaffold.correction_hook(c_global, c_local, device),
        )
        trained = {n: p.detach().cpu() for n, p in model.named_parameters()}
        c_new, delta = scaffold.client_control_update(
            c_local,
            c_global,
            received,
            trained,
            steps=result.steps,
            lr=cfg.lr,
            momentum=cfg.momentum,
        )
        keep(scaffold.CLIENT_STATE_SLOT, c_new)
        extra_records[scaffold.DELTA_CONTROL_RECORD] = state_to_arrays(delta)
    elif cfg.strategy == "feddyn":
        alpha = cfg.params(FedDynParams).alpha
        gradient = previous(feddyn.CLIENT_STATE_SLOT) or zeros_like(received)
        on_device = {n: t.to(device) for n, t in gradient.items()}
        anchor = {n: t.to(device) for n, t in received.items()}
        result = local_training(
            cfg,
            train_set,
            model,
            server_round,
            partition_id,
            device,
            extra_loss=feddyn.dynamic_regulariser(on_device, anchor, alpha),
        )
        trained = {n: p.detach().cpu() for n, p in model.named_parameters()}
        keep(
            feddyn.CLIENT_STATE_SLOT,
            feddyn.client_gradient_update(gradient, trained, received, alpha),
        )
    elif cfg.strategy == "moon":
        hook = _moon_hook(cfg, model, previous(moon.CLIENT_STATE_SLOT), device)
        result = local_training(
            cfg, train_set, model, server_round, partition_id, device, feature_loss=hook
        )
        keep(moon.CLIENT_STATE_SLOT, {k: v.detach().cpu() for k, v in model.state_dict().items()})
        if hook is not None and hook.values:
            extra_metrics["moon-loss"] = float(np.mean(hook.values))
    elif cfg.strategy == "vhl":
        vhl_params = cfg.params(VHLParams)
        images, labels = vhl.virtual_dataset(
            vhl_params.virtual_per_class, derive_seed(cfg.seed, _VHL_DATA)
        )
        vhl_hook = vhl.VHLLoss(
            images,
            labels,
            weight=vhl_params.weight,
            seed=derive_seed(cfg.seed, server_round, partition_id, _VHL_BATCHES),
        )
        result = local_training(
            cfg, train_set, model, server_round, partition_id, device, feature_loss=vhl_hook
        )
        extra_metrics["vhl-virtual-loss"] = float(np.mean(vhl_hook.virtual_ce))
        if vhl_hook.align:
            extra_metrics["vhl-align-loss"] = float(np.mean(vhl_hook.align))
    elif cfg.strategy == "fednova":
        result = local_training(cfg, train_set, model, server_round, partition_id, device)
    else:
        raise ValueError(f"clients.baselines cannot train strategy {cfg.strategy!r}")

    state = {k: v.cpu() for k, v in model.state_dict().items()}
    if local_keys:
        save_local_state(
            context, run_dir, partition_id, server_round, {k: state[k] for k in local_keys}
        )
    metrics = MetricRecord({**train_metrics(len(train_set), result, partition_id), **extra_metrics})
    content = RecordDict(
        {"arrays": state_to_arrays(state, sent_keys), "metrics": metrics, **extra_records}
    )
    return Message(content, reply_to=msg)


def _moon_hook(
    cfg: RunConfig,
    model: torch.nn.Module,
    previous_state: State | None,
    device: torch.device,
) -> moon.MoonLoss | None:
    """MOON's loss hook, or None in a client's first round (no previous model: ℓ_con ≡ log 2)."""
    params = cfg.params(MoonParams)
    mu = params.mu
    if previous_state is None or mu == 0:
        return None
    global_model = model_from_config(cfg)
    global_model.load_state_dict(model.state_dict())
    previous_model = model_from_config(cfg)
    previous_model.load_state_dict(previous_state)
    return moon.MoonLoss(
        global_model.to(device),
        previous_model.to(device),
        mu=mu,
        temperature=params.temperature,
    )
