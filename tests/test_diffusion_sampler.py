"""The teacher's samplers against the exact denoiser of Gaussian data (issue 28).

For x_0 ~ N(μ_y, s²) per pixel the posterior mean is linear in x_t (Gaussian conditioning),
E[x_0 | x_t] = μ + √ᾱ s² / (ᾱ s² + 1 − ᾱ) · (x_t − √ᾱ μ), so the v a perfect teacher predicts is
known in closed form; a correct sampler must then turn N(0, I) into N(μ_y, s²) as its steps
grow, whatever the training did.  It also shows what few steps cost: trailing DDIM at 10 steps
jumps from t = 99 (ᾱ ≈ 0.9, noise still above a 0.2 signal) to the image and returns the
posterior mean's spread (about half of s), where DPM-Solver++(2M) with steps uniform in
log-SNR returns s.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import get_args

import pytest
import torch
from torch import nn

from fedmatch.config import ConfigError, RunConfig
from fedmatch.diffusion.teacher import (
    SOLVERS,
    alphas_cumprod,
    ddim_sample,
    dpm_scheduler,
    sampler_scheduler,
)
from fedmatch.params import DiffusionParams
from fedmatch.quant.calibrate import local_batches, trajectory_batches

MEANS = torch.tensor([-0.5, 0.3])  # per class
SPREAD = 0.2


class GaussianOracle(nn.Module):
    """The exact v-prediction for x_0 ~ N(MEANS[y], SPREAD²) i.i.d. per pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # the samplers read the device from it
        self.config = SimpleNamespace(in_channels=1)
        self.ac = alphas_cumprod()

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor):
        a = self.ac[t].view(-1, 1, 1, 1)
        mu = MEANS[class_labels].view(-1, 1, 1, 1)
        s2 = SPREAD**2
        x0 = mu + a.sqrt() * s2 / (a * s2 + 1 - a) * (x - a.sqrt() * mu)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return SimpleNamespace(sample=a.sqrt() * eps - (1 - a).sqrt() * x0)


def _moments(solver: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(2).repeat(100)
    x = ddim_sample(
        GaussianOracle(), labels, steps=steps, generator=torch.Generator().manual_seed(0),
        solver=solver,
    )  # fmt: skip
    by_class = torch.stack([x[labels == c] for c in range(2)])
    return by_class.mean(dim=(1, 2, 3, 4)), by_class.std(dim=(1, 2, 3, 4))


@pytest.mark.parametrize(("solver", "steps"), [("ddim", 200), ("dpm++2m", 10), ("dpm++2m", 20)])
def test_samplers_reach_the_data_distribution(solver: str, steps: int) -> None:
    mean, std = _moments(solver, steps)
    torch.testing.assert_close(mean, MEANS, atol=0.01, rtol=0)
    torch.testing.assert_close(std, torch.full((2,), SPREAD), atol=0.012, rtol=0)


def test_ten_ddim_steps_collapse_the_spread_and_more_steps_recover_it() -> None:
    spreads = [float(_moments("ddim", steps)[1].mean()) for steps in (10, 50, 200)]
    assert spreads[0] < 0.6 * SPREAD  # the posterior mean at t = 99: ≈ 0.10
    assert spreads[0] < spreads[1] < spreads[2]


def test_dpm_steps_are_uniform_in_log_snr_and_end_at_the_image() -> None:
    scheduler = dpm_scheduler(10)
    t = scheduler.timesteps.long()
    assert len(t) == 10 and int(t[0]) == 999 and int(t[-1]) < 10
    ac = alphas_cumprod()[t]
    lam = 0.5 * torch.log(ac / (1 - ac))  # λ_t, the half log-SNR
    gaps = lam[1:] - lam[:-1]
    assert (gaps > 0).all() and float(gaps[1:-1].std() / gaps[1:-1].mean()) < 0.2
    with pytest.raises(ValueError, match="solver must be one of"):
        ddim_sample(GaussianOracle(), torch.zeros(1, dtype=torch.long), steps=2,
                    generator=torch.Generator(), solver="euler")  # fmt: skip


def test_calibration_uses_the_timesteps_the_teacher_is_sampled_at() -> None:
    """diffusion-ptq's time-aware ranges are keyed by t: its calibration inputs (trajectories
    or noised client images) must sit at the timesteps of the sampler that will use them."""
    per_solver = {}
    for solver in SOLVERS:
        expected = [int(t) for t in sampler_scheduler(10, solver).timesteps]
        rng = torch.Generator().manual_seed(0)
        trajectory, _ = trajectory_batches(
            GaussianOracle(), torch.arange(2), steps=10, generator=rng, solver=solver
        )
        noised = local_batches(torch.zeros(4, 1, 28, 28), torch.arange(4) % 2, steps=10,
                               per_step=2, generator=rng, solver=solver)  # fmt: skip
        assert [b.t for b in trajectory] == [b.t for b in noised] == expected
        per_solver[solver] = expected
    assert per_solver["ddim"] != per_solver["dpm++2m"]  # the check above can tell them apart


def test_teacher_sampler_key() -> None:
    assert set(get_args(DiffusionParams.model_fields["teacher_sampler"].annotation)) == set(SOLVERS)
    cfg = RunConfig.from_flower({"strategy": "diffusion-teacher"})
    assert cfg.params(DiffusionParams).teacher_sampler == "dpm++2m"  # the default
    with pytest.raises(
        ConfigError, match=r"'diffusion\.teacher-sampler' = 'euler'.*'dpm\+\+2m' or 'ddim'"
    ):
        RunConfig.from_flower(
            {"strategy": "diffusion-teacher", "diffusion.teacher-sampler": "euler"}
        )
    with pytest.raises(
        ValueError, match=r"solver must be one of \('ddim', 'dpm\+\+2m'\), got 'heun'"
    ):
        sampler_scheduler(4, "heun")
