"""From a run config to the diffusion workloads' pieces: UNet spec, bundle, teacher cache.

The teacher is cached under ``cache-dir/diffusion/teacher-<key>.pt``, where the key hashes
everything that determines it (UNet spec, data and partitioning, seed, local steps, learning
rate, batch size, rounds and number of clients): a ``diffusion-teacher`` run of R rounds
writes the file that a later ``dmd2``/``disback`` run with ``teacher-rounds=R`` and the same
data reuses instead of training again.  ``teacher-checkpoint`` names a file explicitly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from fedmatch.config import RunConfig
from fedmatch.data.loaders import available_domains, to_images
from fedmatch.data.types import NUM_CLASSES, DomainArrays
from fedmatch.diffusion.dmd2 import DMD2Settings, GanHead
from fedmatch.diffusion.sample_accuracy import (
    ClassifierSchedule,
    SampleAccuracyScorer,
    cached_classifier,
)
from fedmatch.diffusion.teacher import cosine_round_lr
from fedmatch.diffusion.unet import (
    DiffusionUNet,
    UNetSpec,
    build_unet,
    condition_labels,
    parse_channels,
)
from fedmatch.params import DiffusionParams, GeneratorParams

# Message types of the two client workloads (clients/generator.py).
TEACHER_ACTION = "train.teacher"
GENERATOR_ACTION = "train.generator"
# The train config entry carrying this round's teacher learning rate (teacher_round_lr).
TEACHER_LR_KEY = "teacher-lr"
# The array record carrying the frozen target score (teacher or DisBack node) to clients.
TARGET_KEY = "real-score"
# The spec (in the key) names its domains when conditioned, so format 1 files stay valid.
_TEACHER_FORMAT = 1


def conditioned_domains(cfg: RunConfig) -> tuple[str, ...]:
    """The domains a domain-conditioned UNet has embedding rows for: all of ``domains`` in
    order (the held-out ``target-domain`` too, so that indices never shift with it);
    ``()`` without ``diffusion.domain-conditioning``."""
    if not cfg.params(DiffusionParams).domain_conditioning:
        return ()
    return cfg.domain_names(available_domains(cfg.dataset))


def unet_spec(cfg: RunConfig) -> UNetSpec:
    domains = max(1, len(conditioned_domains(cfg)))
    return UNetSpec(
        channels=parse_channels(cfg.params(DiffusionParams).unet_channels),
        layers_per_block=cfg.params(DiffusionParams).unet_layers_per_block,
        attention=cfg.params(DiffusionParams).unet_attention,
        cross_attention=cfg.params(DiffusionParams).unet_cross_attention,
        domains=domains,
        # Class row + domain row: beat one row per (class, domain) in the teacher probes
        # (benchmarks/RESULTS.md, generators, "Five domains").
        domain_embedding="added" if domains > 1 else "joint",
        guidance=cfg.params(DiffusionParams).teacher_cond_dropout > 0,
    ).validate()


def client_condition_labels(cfg: RunConfig, domain: str, labels: torch.Tensor) -> torch.Tensor:
    """A client's training labels as the UNet's condition: its own domain's rows.

    ``domain`` is the client's partition domain (``"mixed"`` when it holds several, which a
    domain-conditioned UNet cannot train on without per-example domains, so it is refused).
    """
    names = conditioned_domains(cfg)
    if not names:
        return labels
    if domain not in names:
        raise ValueError(
            f"diffusion.domain-conditioning=true needs one domain per client, but this client "
            f"holds {domain!r} (partitioning={cfg.partitioning!r}); use a partitioning that "
            "gives each client a single domain, or set diffusion.domain-conditioning=false"
        )
    return condition_labels(labels, names.index(domain), len(names))


def sampling_labels(classes: torch.Tensor, num_domains: int) -> torch.Tensor:
    """The condition for the i-th of ``classes`` when sampling for evaluation: the domains in
    turn, one per block of 10 consecutive samples (``balanced_labels`` gives each block the 10
    classes), so that classes and domains are both balanced."""
    if num_domains == 1:
        return classes
    domains = (torch.arange(len(classes)) // NUM_CLASSES) % num_domains
    return condition_labels(classes, domains, num_domains)


def teacher_round_lr(cfg: RunConfig, teacher_round: int, rounds: int) -> float:
    """The teacher's learning rate in ``teacher_round`` of ``rounds``: constant
    ``teacher-lr``, or its cosine decay to ``teacher-lr-final`` when that is > 0."""
    params = cfg.params(DiffusionParams)
    if params.teacher_lr_final == 0:
        return params.teacher_lr
    return cosine_round_lr(params.teacher_lr, params.teacher_lr_final, teacher_round, rounds)


def dmd2_settings(cfg: RunConfig) -> DMD2Settings:
    return DMD2Settings(
        generator_steps=cfg.params(GeneratorParams).steps,
        critic_steps=cfg.params(GeneratorParams).critic_steps,
        lr=cfg.params(GeneratorParams).lr,
        batch_size=cfg.batch_size,
        nfe=cfg.params(GeneratorParams).nfe,
        gan_weight_generator=cfg.params(GeneratorParams).gan_weight_generator,
        gan_weight_critic=cfg.params(GeneratorParams).gan_weight_critic,
        real_guidance=cfg.params(DiffusionParams).guidance_scale,
        null_label=unet_spec(cfg).null_label,
    )


class GeneratorBundle(nn.Module):
    """What the generator strategies aggregate: generator, fake score and GAN head.

    State-dict keys are prefixed ``generator.``, ``fake.`` and ``head.``.
    """

    def __init__(self, spec: UNetSpec, seed: int) -> None:
        super().__init__()
        self.generator = build_unet(spec, seed)
        self.fake = build_unet(spec, seed + 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 2)
            self.head = GanHead(spec.channels[-1], spec.norm_groups)

    def init_from(
        self, teacher: DiffusionUNet, fake: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Generator = teacher; fake score = teacher or ``fake`` (DisBack's degraded node)."""
        self.generator.load_state_dict(teacher.state_dict(), strict=True)
        self.fake.load_state_dict(fake if fake is not None else teacher.state_dict(), strict=True)


def teacher_key(cfg: RunConfig, rounds: int, num_clients: int) -> str:
    blob: dict[str, object] = {
        "format": _TEACHER_FORMAT,
        "spec": unet_spec(cfg).to_dict(),
        "data": [cfg.dataset, cfg.data_root, cfg.domains, cfg.target_domain, cfg.partitioning],
        "alpha": cfg.alpha,
        "train-subset": cfg.train_subset,
        "seed": cfg.seed,
        "steps": cfg.params(DiffusionParams).teacher_steps,
        "lr": cfg.params(DiffusionParams).teacher_lr,
        "batch-size": cfg.batch_size,
        "rounds": rounds,
        "clients": num_clients,
        "fraction-train": cfg.fraction_train,
    }
    dropout = cfg.params(DiffusionParams).teacher_cond_dropout
    if dropout:  # only when set, so that every teacher cached before the key keeps its key
        blob["cond-dropout"] = dropout
    lr_final = cfg.params(DiffusionParams).teacher_lr_final
    if lr_final:  # likewise
        blob["lr-final"] = lr_final
    if cfg.params(DiffusionParams).teacher_bf16:  # likewise
        blob["bf16"] = True
    if cfg.params(DiffusionParams).teacher_weighting != "examples":  # likewise
        blob["weighting"] = cfg.params(DiffusionParams).teacher_weighting
    digest = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
    return f"teacher-{digest}"


def teacher_cache_path(cfg: RunConfig, rounds: int, num_clients: int) -> Path:
    if cfg.params(DiffusionParams).teacher_checkpoint:
        return Path(cfg.params(DiffusionParams).teacher_checkpoint).expanduser()
    return cfg.cache_path / "diffusion" / f"{teacher_key(cfg, rounds, num_clients)}.pt"


def save_teacher(path: Path, unet: DiffusionUNet, spec: UNetSpec, meta: dict) -> None:
    from fedmatch.atomic import atomic_torch_save

    state = {k: v.detach().cpu() for k, v in unet.state_dict().items()}
    atomic_torch_save({"spec": spec.to_dict(), "state": state, "meta": meta}, path)


def load_teacher(path: Path, spec: UNetSpec) -> DiffusionUNet:
    """The teacher saved at ``path``; its UNet spec must be ``spec`` (named if not)."""
    saved = torch.load(path, weights_only=True)
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise ValueError(
            f"teacher checkpoint {path}: not a fedmatch teacher (allowed: the file a "
            "'diffusion-teacher' run saves, a dict with 'spec' and 'state')"
        )
    if saved.get("spec") != spec.to_dict():
        raise ValueError(
            f"teacher checkpoint {path} was built with UNet {saved.get('spec')}, but the run "
            f"config asks for {spec.to_dict()} (run-config keys unet-channels, "
            "unet-layers-per-block, unet-attention, unet-cross-attention, domain-conditioning, "
            "teacher-cond-dropout)"
        )
    unet = build_unet(spec, 0)
    unet.load_state_dict(saved["state"], strict=True)
    return unet.eval()


def sample_accuracy_scorer(
    cfg: RunConfig, domains: Sequence[DomainArrays]
) -> SampleAccuracyScorer | None:
    """Per-domain classifiers of ``domains`` (cached in ``cache-dir``) and their real test
    accuracy; ``None`` when ``diffusion.accuracy-epochs`` is 0."""
    epochs = cfg.params(DiffusionParams).accuracy_epochs
    if not epochs:
        return None
    # Seed 0 whatever the run's seed: the classifiers are a fixed ruler across runs.
    schedule = ClassifierSchedule(epochs=epochs)
    classifiers = {
        d.name: cached_classifier(
            cfg.cache_path, d.name, to_images(d.x_train), torch.from_numpy(d.y_train), schedule
        )
        for d in domains
    }
    real = {d.name: (to_images(d.x_test), torch.from_numpy(d.y_test)) for d in domains}
    return SampleAccuracyScorer(classifiers, real)
