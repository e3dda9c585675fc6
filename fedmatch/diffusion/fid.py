"""FID without downloads: a locally trained digit feature network and torchmetrics' FID.

Inception-v3 weights (and every other extractor of torch-fidelity, pytorch-fid, clean-fid)
are downloaded at construction, which fails offline (``../shared/notes/diffusion.md`` §F).
Here the features are the 128-d penultimate ReLU layer of a small CNN trained once on the
digit domains' training data to predict (domain, digit) jointly, so that the features see
both the style of a domain and the class of a digit.  An *untrained* extractor would give
FID ≈ 0 even for noise: :func:`train_feature_net` must run first (it is cached on disk).

The numbers are **FID-digits, not Inception-FID**: comparable across runs that use the same
feature network (same domains, steps and seed, i.e. the same cache key), not with papers.

FID (Heusel et al., NeurIPS 2017, Eq. 6):

    d² = ||μ_r − μ_g||² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^{1/2})

computed by ``torchmetrics.image.fid.FrechetInceptionDistance`` with ``feature=`` this network
(:class:`FIDScorer`); :func:`frechet_distance` is the same formula in closed form, used to test
it.  Precision and recall are the k-NN manifold estimates of Kynkäänniemi et al. (NeurIPS
2019, Eqs. 1-3) in the same feature space.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

log = logging.getLogger("fedmatch.diffusion")

FEATURE_DIM = 128
_VERSION = 1


class DigitFeatureNet(nn.Module):
    """conv-relu-pool ×2, fc 128 (the features), fc to (domain, digit) classes."""

    num_features = FEATURE_DIM  # read by torchmetrics

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, FEATURE_DIM),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features (N, 128) of 28x28 images in [-1, 1]."""
        return self.body(x.float())

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward(x))


def train_feature_net(
    images: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    *,
    steps: int,
    seed: int,
    batch_size: int = 128,
    lr: float = 1e-3,
) -> DigitFeatureNet:
    """Adam on cross-entropy of ``targets`` (e.g. domain·10 + digit) for ``steps`` batches."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DigitFeatureNet(num_classes, images.shape[1])
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for step in range(steps):
        index = torch.randint(0, len(targets), (batch_size,), generator=generator)
        loss = F.cross_entropy(net.logits(images[index]), targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step == steps - 1:
            log.info("feature network: %d steps, final loss %.3f", steps, float(loss.detach()))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def feature_net_key(domain_names: Sequence[str], steps: int, seed: int) -> str:
    blob = json.dumps({"domains": list(domain_names), "steps": steps, "seed": seed, "v": _VERSION})
    return "fid-features-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_feature_net(
    cache_dir: Path,
    domain_names: Sequence[str],
    train_images: Sequence[torch.Tensor],
    train_labels: Sequence[torch.Tensor],
    *,
    steps: int,
    seed: int,
) -> DigitFeatureNet:
    """The feature network for these domains, trained once and cached in ``cache_dir``.

    Targets are ``domain_index · 10 + digit``.  A file lock makes concurrent callers train it
    once; the file is written atomically.
    """
    from fedmatch.atomic import atomic_torch_save

    key = feature_net_key(domain_names, steps, seed)
    path = Path(cache_dir) / "diffusion" / f"{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    num_classes = 10 * len(domain_names)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            net = DigitFeatureNet(num_classes, train_images[0].shape[1])
            net.load_state_dict(torch.load(path, weights_only=True))
            net.eval().requires_grad_(False)
            return net
        images = torch.cat(list(train_images))
        targets = torch.cat([y + 10 * i for i, y in enumerate(train_labels)])
        net = train_feature_net(images, targets, num_classes, steps=steps, seed=seed)
        atomic_torch_save(net.state_dict(), path)
        log.info("feature network cached at %s", path)
        return net


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """||μ1 − μ2||² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2}) (Heusel et al., Eq. 6), closed form."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


class FIDScorer:
    """FID of generated images against fixed reference sets (e.g. each domain's test split).

    One torchmetrics ``FrechetInceptionDistance`` per reference set, with the feature network
    as its custom extractor and ``reset_real_features=False``: the reference statistics are
    computed once, and :meth:`score` only adds the generated images.
    """

    def __init__(
        self, feature_net: nn.Module, references: Mapping[str, torch.Tensor], batch_size: int = 512
    ) -> None:
        self.feature_net = feature_net
        self.batch_size = batch_size
        self.metrics: dict[str, FrechetInceptionDistance] = {}
        self.reference_features: dict[str, torch.Tensor] = {}
        for name, images in references.items():
            metric = FrechetInceptionDistance(
                feature=feature_net, reset_real_features=False, normalize=True
            )
            for chunk in images.split(batch_size):
                metric.update(chunk.float(), real=True)
            self.metrics[name] = metric
            self.reference_features[name] = self.features(images)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.feature_net(c.float()) for c in images.split(self.batch_size)])

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> dict[str, float]:
        """FID of ``images`` (28x28 in [-1, 1]) against every reference set."""
        return {name: self._fid(name, images) for name in self.metrics}

    @torch.no_grad()
    def score_each(self, images: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """FID of each set against the reference set of the same name (e.g. the samples a
        domain-conditioned model drew for domain d against d's test split)."""
        unknown = sorted(set(images) - set(self.metrics))
        if unknown:
            raise KeyError(f"no reference set {unknown}; references: {sorted(self.metrics)}")
        return {name: self._fid(name, x) for name, x in images.items()}

    def _fid(self, name: str, images: torch.Tensor) -> float:
        if len(images) < 2:
            raise ValueError(f"FID against {name!r} needs >= 2 images, got {len(images)}")
        metric = self.metrics[name]
        metric.reset()
        for chunk in images.split(self.batch_size):
            metric.update(chunk.float(), real=False)
        return float(metric.compute())

    def real_floor(self, name: str, real: torch.Tensor, count: int, seed: int = 0) -> float:
        """FID of ``count`` real images drawn (by ``seed``) from ``real`` against reference
        ``name``: what a sampler of the true distribution scores at this sample count.  FID is
        biased upwards at small counts, so a sample's FID is read against this floor at the same
        count; ``real`` must be held out from the reference (e.g. the training split)."""
        if count > len(real):
            raise ValueError(f"real floor of {name!r}: {count} images asked, {len(real)} given")
        pick = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))[:count]
        return self._fid(name, real[pick])

    def precision_recall(self, images: torch.Tensor, reference: str, k: int = 3):
        """k-NN precision and recall of ``images`` against one reference set."""
        return precision_recall(self.reference_features[reference], self.features(images), k)


class RealFloors:
    """:meth:`FIDScorer.real_floor` of each reference at a sample's count, computed once per
    (reference, count); ``held_out``: real images per reference, apart from it (e.g. the
    training splits)."""

    def __init__(
        self, scorer: FIDScorer, held_out: Mapping[str, torch.Tensor], seed: int = 0
    ) -> None:
        self.scorer, self.held_out, self.seed = scorer, dict(held_out), seed
        self._cache: dict[tuple[str, int], float] = {}

    def __call__(self, name: str, count: int) -> float:
        """The floor of reference ``name`` at ``count`` images (at most all held-out ones)."""
        key = (name, min(count, len(self.held_out[name])))
        if key not in self._cache:
            real = self.held_out[name]
            self._cache[key] = self.scorer.real_floor(name, real, key[1], self.seed)
        return self._cache[key]


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision / recall (Kynkäänniemi et al., Eqs. 1-3).

    A sample lies on a manifold when it is within the k-th nearest-neighbour radius of some
    point of the other set; precision = share of ``fake`` on the real manifold, recall = share
    of ``real`` on the fake manifold.
    """

    def radii(x: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(x, x)
        return d.kthvalue(k + 1, dim=1).values  # the 0th neighbour is the point itself

    def coverage(points: torch.Tensor, manifold: torch.Tensor) -> float:
        d = torch.cdist(points, manifold)
        return float((d <= radii(manifold)[None, :]).any(dim=1).float().mean())

    real, fake = real.double(), fake.double()
    return coverage(fake, real), coverage(real, fake)
