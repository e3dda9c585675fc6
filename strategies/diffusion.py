"""The diffusion methods' shared server side: sample quality scored on the server."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from torch import nn

from fedmatch.config import RunConfig
from fedmatch.data.types import DomainArrays
from fedmatch.diffusion.sample_accuracy import samples_by_domain
from fedmatch.diffusion.teacher import ddim_sample
from fedmatch.factories.diffusion import (
    conditioned_domains,
    sample_accuracy_scorer,
    sampling_labels,
    unet_spec,
)
from fedmatch.factories.diffusion_eval import DiffusionEvaluator, Sampler
from fedmatch.params import DiffusionParams
from fedmatch.records import arrays_to_state
from fedmatch.results import SERVER, MetricRow
from strategies.base import FedMatchStrategy, NodeInfo, ServerEvaluate


class DiffusionStrategy(FedMatchStrategy):
    """What the diffusion methods share: no client evaluation phase, FID-digits on the server,
    and the class accuracy of the samples per domain (``fedmatch.diffusion.sample_accuracy``).

    Subclasses give ``sampler`` (and optionally ``extra_samplers``); with domain conditioning
    the evaluation asks them for the domains in turn (``sampling_labels``).
    """

    def __init__(self, cfg: RunConfig, nodes: list[NodeInfo]) -> None:
        super().__init__(cfg, nodes)
        self.spec = unet_spec(cfg)
        self.num_clients = len(nodes)
        self.last_fid: dict[str, float] = {}
        self.last_accuracy: dict[str, dict[str, float]] = {}
        self.last_floor: dict[str, float] = {}

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # no client evaluation phase: the server scores the samples

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> None:
        return None

    def sampler(self, model: nn.Module) -> Sampler:
        raise NotImplementedError

    def teacher_sampler(self, model: nn.Module) -> Sampler:
        """``teacher-sampler`` with ``teacher-ddim-steps`` evaluations, classifier-free guided
        by ``guidance-scale``."""
        params = self.cfg.params(DiffusionParams)
        return lambda labels, rng: ddim_sample(
            model,
            labels,
            steps=params.teacher_ddim_steps,
            generator=rng,
            guidance_scale=params.guidance_scale,
            null_label=self.spec.null_label,
            solver=params.teacher_sampler,
        )

    def extra_samplers(self, model: nn.Module) -> dict[str, Sampler]:
        return {}

    def make_server_evaluate(
        self, domains: list[DomainArrays], model: nn.Module
    ) -> ServerEvaluate | None:
        evaluator = DiffusionEvaluator(self.cfg, domains)
        accuracy = sample_accuracy_scorer(self.cfg, domains)
        conditioned = conditioned_domains(self.cfg)
        scored = [d.name for d in domains]

        every = self.cfg.params(DiffusionParams).eval_every
        last = self.cfg.num_server_rounds

        def server_evaluate(server_round: int, arrays: ArrayRecord) -> list[MetricRow]:
            if server_round % every and server_round != last:
                return []  # sampling and scoring cost more than a short round (eval-every)
            model.load_state_dict(arrays_to_state(arrays), strict=True)
            model.eval()
            grid_path = None
            if self.run_dir:
                grid_path = sample_grid_path(self.run_dir, server_round)
            rows = []
            samplers = {"": self.sampler(model), **self.extra_samplers(model)}
            for suffix, sampler in samplers.items():
                drawn: list[tuple] = []  # what the evaluator's sampler drew, for the accuracy

                def conditioned_sampler(labels, rng, sampler=sampler, drawn=drawn):
                    condition = sampling_labels(labels, self.spec.domains)
                    images = sampler(condition, rng)
                    drawn.append((images, condition))
                    return images

                score = evaluator.score(
                    conditioned_sampler, server_round, grid_path if not suffix else None
                )
                images, condition = drawn[-1]
                per_domain = samples_by_domain(images, condition, scored, conditioned)
                fid = dict(score.fid)
                if conditioned:  # each domain's FID from its own samples, not every domain's
                    fid.update(evaluator.domain_fid({d: x for d, (x, _) in per_domain.items()}))
                if not suffix:
                    counts = {d: len(x) for d, (x, _) in per_domain.items()}
                    counts[evaluator.all_key] = len(images)
                    self.last_floor = {
                        d: evaluator.floor(d, counts.get(d, len(images))) for d in fid
                    }
                    for domain, floor in self.last_floor.items():
                        rows.append(MetricRow(server_round, SERVER, domain, "fid-floor", floor))
                if accuracy is not None and not suffix:
                    self.last_accuracy = {}
                    for domain, acc in accuracy.score(per_domain).items():
                        rows.append(
                            MetricRow(server_round, SERVER, domain, "sample-accuracy", acc.samples)
                        )
                        rows.append(
                            MetricRow(server_round, SERVER, domain, "real-accuracy", acc.real)
                        )
                        self.last_accuracy[domain] = {"samples": acc.samples, "real": acc.real}
                for domain, value in fid.items():
                    rows.append(MetricRow(server_round, SERVER, domain, f"fid{suffix}", value))
                for metric, value in (
                    ("precision", score.precision),
                    ("recall", score.recall),
                    ("seconds-per-image", score.seconds_per_image),
                ):
                    rows.append(
                        MetricRow(server_round, SERVER, evaluator.all_key, metric + suffix, value)
                    )
                if not suffix:
                    self.last_fid = fid
            return rows

        return server_evaluate

    def summary_extra(self) -> dict:
        return {
            "final_fid_per_domain": self.last_fid,
            "fid_kind": "FID-digits (not Inception)",
            # {domain: FID-digits of as many real training images}: what each FID is read against
            "final_fid_floor_per_domain": self.last_floor,
            # {domain: {"samples": class accuracy of samples, "real": of real test images}}
            "final_sample_accuracy_per_domain": self.last_accuracy,
        }


def sample_grid_path(run_dir: str, server_round: int) -> Path:
    """Where a round's sample grid goes: ``<run-dir>/samples/round-NNN.png``."""
    return Path(run_dir) / "samples" / f"round-{server_round:03d}.png"
