"""The comparison baselines' client workloads: SCAFFOLD, FedNova, FedDyn, MOON and VHL.

One handler per method (its registry entry names it), all on one skeleton (``_Round``): the
received model, the one local loop (``clients.classifier.local_training``) with what the
method adds, and the reply.  The math is in ``fedmatch.baselines``:

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

from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord

from clients.classifier import local_training, received_model, train_metrics, training_set
from clients.job import ClientJob
from clients.local_state import load_local_state, save_local_state
from fedmatch.baselines import feddyn, moon, scaffold, vhl
from fedmatch.baselines.common import State, zeros_like
from fedmatch.config import RunConfig
from fedmatch.factories.models import model_from_config
from fedmatch.records import arrays_to_state, state_to_arrays
from fedmatch.seeding import derive_seed
from fedmatch.train import TrainResult
from strategies.feddyn import FedDynParams
from strategies.moon import MoonParams
from strategies.vhl import VHLParams

# Purpose tags that keep the seeds of this module's random draws apart.
_VHL_DATA = 61
_VHL_BATCHES = 62


class _Round:
    """One baseline client round: the received model, local state, training and the reply."""

    def __init__(self, msg: Message, context: Context) -> None:
        self.job = job = ClientJob.receive(msg, context)
        self.cfg = job.cfg
        self.model, self.sent_keys, self.local_keys = received_model(job, job.server_round - 1)
        self.train_set = training_set(job.cfg, job.data, context, job.partition_id, job.device)
        # x / θ^{t−1}: the model as received, before any local step.
        self.received: State = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        self.records: dict[str, ArrayRecord] = {}
        self.metrics: dict[str, int | float] = {}

    def previous(self, slot: str) -> State | None:
        job = self.job
        return load_local_state(
            job.context, job.run_dir, job.partition_id, job.server_round - 1, slot=slot
        )

    def keep(self, slot: str, state: State) -> None:
        job = self.job
        save_local_state(
            job.context, job.run_dir, job.partition_id, job.server_round, state, slot=slot
        )

    def train(self, **hooks: Callable | None) -> TrainResult:
        job = self.job
        return local_training(
            job.cfg,
            self.train_set,
            self.model,
            job.server_round,
            job.partition_id,
            job.device,
            **hooks,
        )

    def trained(self) -> State:
        return {n: p.detach().cpu() for n, p in self.model.named_parameters()}

    def reply(self, result: TrainResult) -> Message:
        job = self.job
        state = {k: v.cpu() for k, v in self.model.state_dict().items()}
        if self.local_keys:
            save_local_state(
                job.context,
                job.run_dir,
                job.partition_id,
                job.server_round,
                {k: state[k] for k in self.local_keys},
            )
        metrics = {**train_metrics(len(self.train_set), result, job.partition_id), **self.metrics}
        return job.reply(
            {
                "arrays": state_to_arrays(state, self.sent_keys),
                "metrics": MetricRecord(metrics),
                **self.records,
            }
        )


def handle_scaffold(msg: Message, context: Context) -> Message:
    """Gradients corrected by c − c_i; then the option-II update of c_i (Alg. 1, Eq. 4)."""
    r = _Round(msg, context)
    c_global = arrays_to_state(msg.content[scaffold.CONTROL_RECORD])
    c_local = r.previous(scaffold.CLIENT_STATE_SLOT) or zeros_like(c_global)
    result = r.train(grad_hook=scaffold.correction_hook(c_global, c_local, r.job.device))
    c_new, delta = scaffold.client_control_update(
        c_local,
        c_global,
        r.received,
        r.trained(),
        steps=result.steps,
        lr=r.cfg.lr,
        momentum=r.cfg.momentum,
    )
    r.keep(scaffold.CLIENT_STATE_SLOT, c_new)
    r.records[scaffold.DELTA_CONTROL_RECORD] = state_to_arrays(delta)
    return r.reply(result)


def handle_fednova(msg: Message, context: Context) -> Message:
    """Plain local SGD: the server normalises by the train-steps every reply carries."""
    r = _Round(msg, context)
    return r.reply(r.train())


def handle_feddyn(msg: Message, context: Context) -> Message:
    """The dynamic regulariser, then the update of the client's gradient state (Alg. 1)."""
    r = _Round(msg, context)
    alpha = r.cfg.params(FedDynParams).alpha
    gradient = r.previous(feddyn.CLIENT_STATE_SLOT) or zeros_like(r.received)
    device = r.job.device
    on_device = {n: t.to(device) for n, t in gradient.items()}
    anchor = {n: t.to(device) for n, t in r.received.items()}
    result = r.train(extra_loss=feddyn.dynamic_regulariser(on_device, anchor, alpha))
    r.keep(
        feddyn.CLIENT_STATE_SLOT,
        feddyn.client_gradient_update(gradient, r.trained(), r.received, alpha),
    )
    return r.reply(result)


def handle_moon(msg: Message, context: Context) -> Message:
    """The model-contrastive loss (Eq. 3) against the global and the previous local model."""
    r = _Round(msg, context)
    hook = _moon_hook(r.cfg, r.model, r.previous(moon.CLIENT_STATE_SLOT), r.job.device)
    result = r.train(feature_loss=hook)
    r.keep(moon.CLIENT_STATE_SLOT, {k: v.detach().cpu() for k, v in r.model.state_dict().items()})
    if hook is not None and hook.values:
        r.metrics["moon-loss"] = float(np.mean(hook.values))
    return r.reply(result)


def handle_vhl(msg: Message, context: Context) -> Message:
    """CE on the run's virtual data plus the alignment of natural to virtual features."""
    r = _Round(msg, context)
    cfg, job = r.cfg, r.job
    params = cfg.params(VHLParams)
    images, labels = vhl.virtual_dataset(params.virtual_per_class, derive_seed(cfg.seed, _VHL_DATA))
    hook = vhl.VHLLoss(
        images,
        labels,
        weight=params.weight,
        seed=derive_seed(cfg.seed, job.server_round, job.partition_id, _VHL_BATCHES),
    )
    result = r.train(feature_loss=hook)
    r.metrics["vhl-virtual-loss"] = float(np.mean(hook.virtual_ce))
    if hook.align:
        r.metrics["vhl-align-loss"] = float(np.mean(hook.align))
    return r.reply(result)


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
