"""Server-side evaluation of a diffusion model: FID-digits per domain, precision/recall, grids.

Every evaluation draws ``fid-samples`` images with balanced classes from the same seed, so the
rounds of a run (and runs with the same seed) are compared on the same noise.  FID is
computed against each domain's test split and against their union (``all``) with the cached
feature network of ``fedmatch.diffusion.fid`` (FID-digits, not Inception-FID); a
domain-conditioned model's samples of domain d are scored against d's test split alone.  Beside
each FID goes its real floor: as many real training images, scored the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import save_image

from fedmatch.config import RunConfig
from fedmatch.data.loaders import to_images
from fedmatch.data.types import NUM_CLASSES, DomainArrays
from fedmatch.diffusion.fid import FIDScorer, RealFloors, cached_feature_net
from fedmatch.params import DiffusionParams
from fedmatch.seeding import derive_seed

log = logging.getLogger("fedmatch.diffusion")

# (labels, rng) -> 28x28 images in [-1, 1]
Sampler = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
ALL = "all"
_EVAL_TAG = 61


def balanced_labels(n: int) -> torch.Tensor:
    return torch.arange(n) % NUM_CLASSES


def save_grid(images: torch.Tensor, labels: torch.Tensor, per_class: int, path: Path) -> Path:
    """A PNG with one row per class (0..9) of ``per_class`` images each."""
    rows = []
    for c in range(NUM_CLASSES):
        chosen = images[labels == c][:per_class]
        if len(chosen) < per_class:  # pad a short row with grey
            pad = torch.zeros((per_class - len(chosen), *images.shape[1:]))
            chosen = torch.cat([chosen, pad])
        rows.append(chosen)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((torch.cat(rows) + 1) / 2, path, nrow=per_class, padding=1)
    return path


@dataclass
class SampleScore:
    fid: dict[str, float]
    precision: float
    recall: float
    seconds_per_image: float


class DiffusionEvaluator:
    """FID of a sampler against the test split of every domain (and of all together)."""

    def __init__(self, cfg: RunConfig, domains: list[DomainArrays]) -> None:
        self.cfg = cfg
        net = cached_feature_net(
            cfg.cache_path,
            [d.name for d in domains],
            [to_images(d.x_train) for d in domains],
            [torch.from_numpy(d.y_train) for d in domains],
            steps=cfg.params(DiffusionParams).fid_feature_steps,
            seed=cfg.seed,
        )
        references = {d.name: to_images(d.x_test) for d in domains}
        # Held-out real images for the floors: the training splits.
        train = {d.name: to_images(d.x_train) for d in domains}
        if len(domains) > 1:
            references[ALL] = torch.cat(list(references.values()))
            train[ALL] = torch.cat(list(train.values()))
        self.scorer = FIDScorer(net, references)
        self.all_key = ALL if len(domains) > 1 else domains[0].name
        # floor(name, count): FID-digits of ``count`` real training images of ``name`` against
        # its test split, what a sample of that size is read against
        self.floor = RealFloors(self.scorer, train, cfg.seed)

    def domain_fid(self, per_domain: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """FID-digits of each domain's own samples (a domain-conditioned model's) against that
        domain's test split; domains with fewer than 2 samples are left out."""
        return self.scorer.score_each({d: x for d, x in per_domain.items() if len(x) >= 2})

    def score(self, sampler: Sampler, server_round: int, grid_path: Path | None) -> SampleScore:
        labels = balanced_labels(self.cfg.params(DiffusionParams).fid_samples)
        rng = torch.Generator().manual_seed(derive_seed(self.cfg.seed, _EVAL_TAG))
        start = time.perf_counter()
        images = sampler(labels, rng)
        seconds = time.perf_counter() - start
        fid = self.scorer.score(images)
        precision, recall = self.scorer.precision_recall(images, self.all_key)
        if grid_path is not None:
            save_grid(images, labels, self.cfg.params(DiffusionParams).grid_per_class, grid_path)
        log.info(
            "round %d: FID-digits %s %.2f (precision %.3f, recall %.3f), %.2f ms per image",
            server_round,
            self.all_key,
            fid[self.all_key],
            precision,
            recall,
            1e3 * seconds / len(labels),
        )
        return SampleScore(fid, precision, recall, seconds / len(labels))
