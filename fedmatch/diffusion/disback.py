"""DisBack: distribution backtracking (Zhang et al., ICLR 2025, arXiv 2408.15991, Alg. 1).

1. **Degradation recording** (:func:`record_degradation`): a copy s′ of the teacher is trained
   with the plain denoising loss on samples of the *frozen initial* generator G_0, and
   snapshots s′_0 = teacher, s′_1, …, s′_N are kept along the way: the path from the teacher
   to G_0's distribution.
2. **Backtracking** (:func:`backtrack_target`): the fake score starts from the most degraded
   node s′_N; the generator is distilled (DMD2 loss, ``fedmatch.diffusion.dmd2``) against
   s′_{N−1}, then s′_{N−2}, …, and finally the teacher s′_0, switching targets at fixed
   intervals (Alg. 1: every ``total / N`` iterations), or once the generator has converged
   on the current target (:class:`BacktrackController`, ``disback-switch='converged'``).

This follows the paper's algorithm, not the released SDXL script, which (a) loads whole
guidance state dicts into the target with ``strict=False`` so the target may silently not
change, (b) stops switching after the first switch, (c) initialises the fake score from a
fixed DMD2 checkpoint, and (d) tests ``idx // interval == 0`` for a modulo
(``../shared/notes/diffusion.md`` §B).  Here every node is a complete UNet state dict,
loaded strictly, and :func:`backtrack_target` is a pure function of the step.
"""

from __future__ import annotations

import copy
import logging

import torch
from diffusers import UNet2DModel

from fedmatch.diffusion.dmd2 import generate_padded
from fedmatch.diffusion.teacher import TrainHistory, alphas_cumprod, denoising_loss

log = logging.getLogger("fedmatch.diffusion")

Path = list[dict[str, torch.Tensor]]


def record_degradation(
    teacher: UNet2DModel,
    generator0: UNet2DModel,
    *,
    steps: int,
    num_nodes: int,
    lr: float,
    batch_size: int,
    nfe: int,
    seed: int,
    device: torch.device,
    num_classes: int = 10,
    cond_dropout: float = 0.0,
    null_label: int | None = None,
) -> tuple[Path, TrainHistory]:
    """DisBack Alg. 1, stage 1: the path [s′_0 = teacher, s′_1, …, s′_N] (N = ``num_nodes``).

    s′ is fine-tuned for ``steps`` AdamW steps of the denoising loss on batches of G_0's
    ``nfe``-step samples (uniform classes); a snapshot is kept every ``steps / N`` steps.
    G_0 is never updated.  ``cond_dropout`` / ``null_label``: a guided teacher's degradation
    keeps training its null row the way the teacher was trained, so that every node of the
    path can serve as a classifier-free-guided real score (``guidance-scale``).
    """
    if num_nodes < 1 or steps < num_nodes:
        raise ValueError(
            f"disback-nodes={num_nodes} with disback-degradation-steps={steps}: need "
            "1 <= nodes <= steps (one snapshot every steps/nodes steps)"
        )
    rng = torch.Generator().manual_seed(seed)
    ac = alphas_cumprod()
    degraded = copy.deepcopy(teacher).to(device).train().requires_grad_(True)
    generator0 = generator0.to(device).eval()
    optimizer = torch.optim.AdamW(degraded.parameters(), lr=lr, weight_decay=0.0)
    path: Path = [_state(teacher)]
    marks = {round(steps * (i + 1) / num_nodes) for i in range(num_nodes)}
    history = TrainHistory()
    for step in range(1, steps + 1):
        y = torch.randint(0, num_classes, (batch_size,), generator=rng).to(device)
        x = generate_padded(generator0, y, num_steps=nfe, rng=rng)
        loss = denoising_loss(
            degraded, x, y, ac, rng, cond_dropout=cond_dropout, null_label=null_label
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(degraded.parameters(), 1.0)
        optimizer.step()
        history.losses.append(float(loss.detach()))
        if step in marks:
            path.append(_state(degraded))
    log.info(
        "DisBack degradation: %d steps, %d path nodes, loss %.4f -> %.4f",
        steps,
        len(path) - 1,
        history.losses[0],
        history.losses[-1],
    )
    return path, history


def backtrack_target(
    num_nodes: int, step: int, total_steps: int, path_fraction: float = 0.0
) -> int:
    """Index of the target node at generator step ``step`` of ``total_steps`` (Alg. 1, stage 2).

    Targets run N−1, N−2, …, 0 (0 = the teacher); the fake score starts at node N.  With
    ``path_fraction`` 0 each target holds ``total_steps / N`` steps (equal stages).  Otherwise
    the degraded nodes N−1 … 1 share the first ``round(path_fraction · total_steps)`` steps
    equally and the teacher the rest: the released run's proportions are about 0.1 (≈ 10 nodes,
    one every 1,000 of 100K iterations, ``../shared/notes/diffusion.md`` §B).  Steps past the
    end stay on the teacher.
    """
    if num_nodes < 1 or total_steps < 1:
        raise ValueError(f"num_nodes={num_nodes}, total_steps={total_steps}: both must be >= 1")
    if not 0.0 <= path_fraction < 1.0:
        raise ValueError(f"disback path-fraction={path_fraction}: allowed 0 <= value < 1")
    if path_fraction == 0.0:
        stage = min(num_nodes - 1, max(0, step) * num_nodes // total_steps)
        return num_nodes - 1 - stage
    path_steps = round(path_fraction * total_steps)
    if path_steps < num_nodes - 1:
        raise ValueError(
            f"disback path-fraction={path_fraction} of {total_steps} steps gives {path_steps} "
            f"steps on the path, fewer than its {num_nodes - 1} degraded nodes: allowed "
            f"path-fraction >= {(num_nodes - 1 - 0.5) / total_steps:.3g} (or fewer nodes, "
            "more rounds)"
        )
    if step >= path_steps:
        return 0
    return num_nodes - 1 - max(0, step) * (num_nodes - 1) // path_steps


class BacktrackController:
    """The target node round by round: on Alg. 1's schedule, or when the generator converges.

    ``mode='schedule'``: :func:`backtrack_target` over ``total_rounds`` (``path_fraction`` as
    there).
    ``mode='converged'``: the target moves one node back once the generator has converged on
    the current one, i.e. when the round's distribution-matching gradient norm (the distance
    between fake and target score the generator still sees) fails to improve on the best of
    this stage by a relative ``tolerance``; it also moves whenever the rounds left are no more
    than the nodes left, so the last round always distils the teacher itself.
    """

    def __init__(
        self,
        num_nodes: int,
        total_rounds: int,
        mode: str = "schedule",
        tolerance: float = 0.01,
        path_fraction: float = 0.0,
    ) -> None:
        if mode not in ("schedule", "converged"):
            raise ValueError(f"disback-switch={mode!r}: allowed 'schedule', 'converged'")
        if mode == "converged" and path_fraction:
            raise ValueError(
                f"disback path-fraction={path_fraction} needs disback-switch='schedule' "
                "('converged' moves the target when the generator stops improving)"
            )
        backtrack_target(num_nodes, 0, total_rounds, path_fraction)  # names a bad fraction
        self.path_fraction = path_fraction
        self.num_nodes = num_nodes
        self.total_rounds = total_rounds
        self.mode = mode
        self.tolerance = tolerance
        self.index = num_nodes - 1
        self.best = float("inf")

    def target(self, server_round: int) -> int:
        """The node index distilled in round ``server_round`` (1-based)."""
        if self.mode == "schedule":
            return backtrack_target(
                self.num_nodes, server_round - 1, self.total_rounds, self.path_fraction
            )
        return self.index

    def observe(self, server_round: int, grad_norm: float) -> None:
        """Feed the round's mean DM-gradient norm (``converged`` mode decides here)."""
        if self.mode == "schedule" or self.index == 0:
            return
        converged = grad_norm > self.best * (1 - self.tolerance)
        forced = self.total_rounds - server_round <= self.index
        if converged or forced:
            self.index -= 1
            self.best = float("inf")
            log.info("DisBack: round %d, target moves to node %d", server_round, self.index)
        else:
            self.best = grad_norm

    def state_dict(self) -> dict[str, float]:
        return {"index": self.index, "best": self.best}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.index = int(state["index"])
        self.best = float(state["best"])


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
