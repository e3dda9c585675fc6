"""Sample scoring shared by the generator benchmark and the teacher probes.

FID-digits of generated images against the pooled test splits (``fedmatch.diffusion.fid``,
not Inception-FID) and the class accuracy of samples per domain
(``fedmatch.diffusion.sample_accuracy``: an independent classifier per domain, trained on
that domain's real training split, beside its accuracy on the real test split).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedmatch.data.loaders import to_images
from fedmatch.data.types import DomainArrays
from fedmatch.diffusion.fid import FIDScorer, RealFloors, cached_feature_net
from fedmatch.diffusion.sample_accuracy import (
    ClassifierSchedule,
    SampleAccuracyScorer,
    cached_classifier,
    samples_by_domain,
)


class SampleScorer:
    """``score(images, labels)`` -> FID-digits, precision/recall and per-domain accuracy.

    ``conditioned``: the labels are (class, domain) conditions of these domains, in order
    (``domain · 10 + class``); otherwise plain classes, read by every domain's classifier.
    """

    def __init__(
        self,
        domains: list[DomainArrays],
        cache_path: Path,
        *,
        feature_steps: int,
        seed: int,
        accuracy_epochs: int,
        conditioned: bool,
    ) -> None:
        train = [(to_images(d.x_train), torch.from_numpy(d.y_train)) for d in domains]
        self.names = [d.name for d in domains]
        self.conditioned = self.names if conditioned else []
        net = cached_feature_net(
            cache_path,
            self.names,
            [x for x, _ in train],
            [y for _, y in train],
            steps=feature_steps,
            seed=seed,
        )
        self.test = torch.cat([to_images(d.x_test) for d in domains])
        # Per domain too: a conditioned model's samples of domain d against d's test split,
        # beside the floor of as many of d's real training images (FID is biased at small n).
        self.fid = FIDScorer(
            net, {"all": self.test, **{d.name: to_images(d.x_test) for d in domains}}
        )
        held_out = {d.name: x for d, (x, _) in zip(domains, train, strict=True)}
        self.floor = RealFloors(self.fid, held_out, seed)
        self.accuracy = None
        if accuracy_epochs:
            # Seed 0 whatever the run's seed: the classifiers are a fixed ruler.
            schedule = ClassifierSchedule(epochs=accuracy_epochs)
            self.accuracy = SampleAccuracyScorer(
                {
                    d.name: cached_classifier(cache_path, d.name, x, y, schedule)
                    for d, (x, y) in zip(domains, train, strict=True)
                },
                {d.name: (to_images(d.x_test), torch.from_numpy(d.y_test)) for d in domains},
            )

    def score(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        precision, recall = self.fid.precision_recall(images, "all")
        out: dict = {
            "fid": self.fid.score_each({"all": images})["all"],
            "precision": precision,
            "recall": recall,
        }
        per_domain = samples_by_domain(images, labels, self.names, self.conditioned)
        if self.conditioned:
            own = {d: x for d, (x, _) in per_domain.items() if len(x) >= 2}
            out["fid_domain"] = {
                d: {"fid": fid, "floor": self.floor(d, len(own[d]))}
                for d, fid in self.fid.score_each(own).items()
            }
        if self.accuracy is not None:
            out["class_accuracy"] = {
                name: {"samples": acc.samples, "real": acc.real}
                for name, acc in self.accuracy.score(per_domain).items()
            }
        return out
