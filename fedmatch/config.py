"""The run configuration: one validated pydantic model built from Flower's flat run config.

Flower hands the ServerApp and every ClientApp ``context.run_config``: the
``[tool.flwr.app.config]`` table of ``pyproject.toml`` with ``--run-config``
overrides applied, as a flat dict with dashed keys.  ``RunConfig.from_flower``
turns it into typed fields and rejects unknown keys and bad values with one
message that names each key, the value given and what is allowed, so that a
typo stops the run before any client trains.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedmatch.align.mmd import parse_multipliers

# Strategies whose global model is a diffusion UNet (bundle), not a classifier.
GENERATOR_STRATEGIES = ("diffusion-teacher", "dmd2", "disback", "diffusion-ptq")

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ConfigError(ValueError):
    """A run-config key has a value fedmatch cannot use; the message says which and why."""


def _to_key(field_name: str) -> str:
    return field_name.replace("_", "-")


class RunConfig(BaseModel):
    """Every run-config key of fedmatch, with its allowed values.

    Field names are the dashed run-config keys with ``_`` for ``-``; README.md
    ("Run-config keys") documents each one.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=_to_key, populate_by_name=True
    )

    # What to run.
    strategy: Literal[
        "fedavg",
        "fedprox",
        "fedbn",
        "fedka",
        "feddm",
        "scaffold",
        "fednova",
        "feddyn",
        "moon",
        "vhl",
        "fedlgd",
        "diffusion-teacher",
        "dmd2",
        "disback",
        "diffusion-ptq",
    ] = "fedavg"
    num_server_rounds: int = Field(5, ge=1)
    seed: int = Field(0, ge=0)

    # Data.
    dataset: Literal["embedded", "digit-five", "torchvision"] = "embedded"
    data_root: str = ""
    domains: str = "all"
    partitioning: Literal["domain", "dirichlet", "iid"] = "domain"
    alpha: float = Field(0.5, gt=0)
    train_subset: int = Field(0, ge=0)

    # Model.
    model: Literal["convnet", "resnet18", "fedka-cnn"] = "convnet"
    model_width: int = Field(64, ge=1)
    model_depth: int = Field(3, ge=1, le=4)
    model_norm: Literal["instancenorm", "batchnorm", "groupnorm", "none"] = "instancenorm"

    # Local training.
    local_epochs: int = Field(1, ge=1)
    max_local_steps: int = Field(0, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    proximal_mu: float = Field(0.01, ge=0)

    # Comparison baselines (README "Methods"); each key is read by its strategy only.
    scaffold_server_lr: float = Field(1.0, gt=0)  # SCAFFOLD's global step size η_g
    feddyn_alpha: float = Field(0.01, gt=0)  # FedDyn's regularisation strength α
    moon_mu: float = Field(1.0, ge=0)  # MOON's weight μ of the contrastive loss
    moon_temperature: float = Field(0.5, gt=0)  # MOON's temperature τ
    vhl_weight: float = Field(1.0, ge=0)  # VHL's weight λ of the feature alignment
    vhl_virtual_per_class: int = Field(100, ge=1)  # VHL's virtual images per class

    # FedKA (strategy='fedka'); target-domain holds a domain out of the clients for any
    # strategy (leave-one-domain-out), so FedAvg gives the source-only baseline.
    target_domain: str = ""
    target_access: Literal["features", "raw"] = "features"
    target_samples: int = Field(256, ge=2)
    target_batch_size: int = Field(32, ge=2)
    mmd_weight: float = Field(1.0, ge=0)
    mmd_bandwidth_base: Literal["mean", "median"] = "mean"
    mmd_bandwidth_multipliers: str = "0.25,0.5,1,2,4"
    mmd_estimator: Literal["biased", "unbiased"] = "biased"
    align_schedule: Literal["dann", "constant"] = "dann"
    align_gamma: float = Field(10.0, gt=0)
    # 1: pseudo-label only where every client agrees (README "FedKA": why not plurality).
    vote_threshold: float = Field(1.0, ge=0, le=1)
    finetune_steps: int = Field(32, ge=0)
    finetune_lr: float = Field(0.01, gt=0)
    finetune_weight: float = Field(1.0, ge=0)
    finetune_balance: bool = True
    # Which weights go to the clients next round: the FedAvg ones (the official code) or the
    # fine-tuned ones (the pseudo-label adaptation then carries over rounds).
    fedka_broadcast: Literal["averaged", "finetuned"] = "finetuned"
    domain_head: bool = False
    domain_weight: float = Field(1.0, ge=0)

    # Dataset distillation (the `train.distill` workload and strategy='feddm'); the embedding
    # ConvNet takes model-width/-depth/-norm.  Defaults are sized for a CPU (README).
    ipc: int = Field(10, ge=1)
    distill_method: Literal["dm", "ncfm"] = "dm"
    distill_steps: int = Field(200, ge=1)
    distill_lr: float = Field(0.0, ge=0)  # 0: the method's default (DM 1.0, NCFM 0.01)
    distill_batch_real: int = Field(64, ge=1)
    distill_init: Literal["real", "noise", "stats"] = "real"
    # Multi-formation (IDC; NCFM's ρ = 2): each stored image decodes to factor² images.
    distill_factor: int = Field(1, ge=1)
    dsa_strategy: str = "color_crop_cutout_scale_rotate"
    ncfm_alpha: float = Field(0.5, ge=0, le=1)
    ncfm_frequencies: int = Field(1024, ge=1)
    ncfm_psi_lr: float = Field(1e-3, ge=0)  # 0: no sampling network, t ~ N(0, I)
    # NCFM's feature networks: 0 embeds with a fresh random ConvNet per step (like DM, cheap);
    # N > 0 first trains N ConvNets on the local data and blends them with their init.
    ncfm_feature_nets: int = Field(0, ge=0)
    ncfm_feature_epochs: int = Field(20, ge=1)
    # NCFM's calibration step (code: calib_weight 1): CE of a trained feature net; needs nets.
    ncfm_calibration: float = Field(0.0, ge=0)
    # One image step per class per iteration, as NCFM's code; False: one step for all classes.
    ncfm_step_per_class: bool = False
    eval_epochs: int = Field(300, ge=1)
    # What local training runs on: the real partition, or the client's local virtual data
    # (distilled once per run with the keys above; the FedLGD protocol).
    train_data: Literal["real", "distilled"] = "real"
    # How local virtual data starts before its DM warm-up (distill-steps): FedLGD's per-class,
    # per-channel Gaussian ('stats'), random real images or N(0, 1).
    virtual_init: Literal["stats", "real", "noise"] = "stats"
    # Keep the initial local virtual data in cache-dir, shared by runs with the same data,
    # distillation keys and seed (FedLGD and its baselines distil once per client, not per run).
    virtual_cache: bool = True

    # FedLGD (strategy='fedlgd', README "FedLGD"); local IPC is `ipc`, warm-up is
    # `distill-steps`, local training `lr`/`batch-size`.  Defaults: the CPU schedule.
    fedlgd_refresh_every: int = Field(5, ge=1)
    fedlgd_refresh_until: int = Field(10, ge=0)
    fedlgd_local_steps: int = Field(50, ge=0)
    fedlgd_server_steps: int = Field(100, ge=0)
    fedlgd_server_ipc: int = Field(10, ge=1)
    fedlgd_image_lr: float = Field(1.0, gt=0)
    fedlgd_regulariser: Literal["supcon", "mmd", "none"] = "supcon"
    fedlgd_lambda: float = Field(10.0, ge=0)
    fedlgd_temperature: float = Field(0.07, gt=0)
    fedlgd_gm_target: Literal["pseudo-gradient", "client-gradients"] = "pseudo-gradient"
    fedlgd_gm_distance: Literal["ours", "mse", "cos"] = "ours"
    fedlgd_save_images: bool = False

    # Diffusion workloads (strategies diffusion-teacher, dmd2, disback; README "Generators").
    # The UNet of the teacher, the generator and the fake score; images are padded to 32x32.
    unet_channels: str = "32,64"
    unet_layers_per_block: int = Field(1, ge=1)
    unet_attention: bool = False
    # UNet2DConditionModel cross-attending to a class prompt [BOS, label] (DGQ's attention).
    unet_cross_attention: bool = False
    teacher_steps: int = Field(200, ge=1)  # local DDPM steps per teacher round
    teacher_lr: float = Field(1e-3, gt=0)
    # dmd2/disback train the teacher first for this many rounds unless it is cached.
    teacher_rounds: int = Field(10, ge=1)
    teacher_checkpoint: str = ""  # a teacher.pt to distil from; "" = the cache
    teacher_ddim_steps: int = Field(10, ge=1)  # DDIM steps when the teacher is evaluated
    generator_steps: int = Field(20, ge=1)  # local generator updates per round
    generator_lr: float = Field(1e-4, gt=0)  # generator and critic (AdamW, as DMD2)
    generator_nfe: int = Field(1, ge=1)  # student steps: 1 = one-step; 4 = [999, 749, 499, 249]
    critic_steps: int = Field(5, ge=1)  # fake-score updates per generator update (TTUR)
    gan_weight_generator: float = Field(3e-3, ge=0)
    gan_weight_critic: float = Field(1e-2, ge=0)
    disback_nodes: int = Field(4, ge=1)
    disback_degradation_steps: int = Field(200, ge=1)
    # When the target moves back a node: Alg. 1's fixed schedule, or once converged.
    disback_switch: Literal["schedule", "converged"] = "schedule"
    fid_samples: int = Field(500, ge=10)  # generated images per FID evaluation
    fid_feature_steps: int = Field(500, ge=1)  # training steps of the FID feature network
    grid_per_class: int = Field(8, ge=1)  # sample-grid columns (one row per class)
    # Post-training quantization of the teacher (strategy diffusion-ptq; README "Quantization").
    quant_bits: str = "W8A8"  # W<weight bits>A<activation bits>, 2..8 each
    quant_method: Literal["naive", "edadm", "dgq"] = "naive"
    quant_groups: int = Field(8, ge=1)  # DGQ: activation groups per layer (1 = per-tensor)
    quant_per_timestep: bool = True  # one activation range per sampling step
    quant_calibration_source: Literal["local", "trajectory"] = "local"
    quant_calibration_samples: int = Field(256, ge=1)  # per client, over all timesteps
    quant_recon_iters: int = Field(100, ge=0)  # EDA-DM: FBR iterations per block (0 = off)
    quant_tdac_lambda: float = Field(1.2, ge=0)  # EDA-DM: TDAC diversity weight λ
    quant_eval_personal: bool = False  # also score each client's own (personal) quantization

    # Participation.
    fraction_train: float = Field(1.0, gt=0, le=1)
    fraction_evaluate: float = Field(1.0, ge=0, le=1)
    min_available_nodes: int = Field(2, ge=1)
    # Seconds a round's training (or evaluation) phase waits for replies; a node
    # that has not replied by then is dropped from the run (see strategies/exchange.py).
    round_timeout: float = Field(3600.0, gt=0)

    # Evaluation, results, caching, devices.
    server_eval: bool = True
    runs_dir: str = "~/fedmatch-runs"
    run_name: str = ""
    resume: bool = False
    # A JSON file of cells (run configs) this one `flwr run` runs one after another on
    # the same nodes; written by `fedmatch bench` (see fedmatch/cells.py).
    cells_file: str = ""
    cache_dir: str = "~/.cache/fedmatch"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("runs_dir", "cache_dir")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        # The ServerApp runs in the working directory of whichever `flwr run` first
        # started the background SuperLink, so a relative path would land somewhere
        # the user did not choose.
        if not value:
            raise ValueError("must not be empty")
        if not Path(value).expanduser().is_absolute():
            raise ValueError(
                "must be an absolute path or start with '~' (relative paths would resolve "
                "against the background SuperLink's working directory)"
            )
        return value

    @field_validator("run_name")
    @classmethod
    def _run_name_chars(cls, value: str) -> str:
        if value and not _RUN_NAME.match(value):
            raise ValueError(
                "must start with a letter or digit and contain only letters, digits, "
                "'.', '_' and '-' (or be empty for an automatic name)"
            )
        return value

    @field_validator("domains")
    @classmethod
    def _domains_syntax(cls, value: str) -> str:
        names = [part.strip() for part in value.split(",")]
        if not value.strip() or any(not name for name in names):
            raise ValueError("must be 'all' or a comma-separated list of domain names")
        if len(set(names)) != len(names):
            raise ValueError("lists a domain more than once")
        return value

    @field_validator("mmd_bandwidth_multipliers")
    @classmethod
    def _multipliers(cls, value: str) -> str:
        parse_multipliers(value)
        return value

    @field_validator("dsa_strategy")
    @classmethod
    def _dsa_strategy(cls, value: str) -> str:
        # Imported here: fedmatch.distill imports the models, which import this module.
        from fedmatch.distill.dsa import parse_strategy

        parse_strategy(value)
        return value

    @field_validator("unet_channels")
    @classmethod
    def _unet_channels(cls, value: str) -> str:
        from fedmatch.diffusion.unet import parse_channels

        parse_channels(value)
        return value

    @field_validator("quant_bits")
    @classmethod
    def _quant_bits(cls, value: str) -> str:
        from fedmatch.quant.qmodules import QuantSpec, parse_bits

        w, a = parse_bits(value)
        QuantSpec(weight_bits=w, act_bits=a).validate()
        return value

    @field_validator("generator_nfe")
    @classmethod
    def _generator_nfe(cls, value: int) -> int:
        from fedmatch.diffusion.dmd2 import student_timesteps

        student_timesteps(value)
        return value

    @model_validator(mode="after")
    def _generator_checks(self) -> RunConfig:
        if self.unet_cross_attention:
            # the head-width check needs both keys; named in the message (unet.py)
            from fedmatch.diffusion.unet import UNetSpec, parse_channels

            UNetSpec(channels=parse_channels(self.unet_channels), cross_attention=True).validate()
        if self.strategy == "disback" and self.disback_degradation_steps < self.disback_nodes:
            raise ValueError(
                f"run-config key 'disback-degradation-steps' = {self.disback_degradation_steps} "
                f"is smaller than disback-nodes={self.disback_nodes}: one path node is kept "
                "every steps/nodes degradation steps"
            )
        if self.teacher_checkpoint and not Path(self.teacher_checkpoint).expanduser().is_absolute():
            raise ValueError(
                f"run-config key 'teacher-checkpoint' = {self.teacher_checkpoint!r}: must be "
                "an absolute path (or empty for the cached teacher)"
            )
        if self.train_data == "distilled" and self.strategy in GENERATOR_STRATEGIES:
            raise ValueError(
                f"run-config key 'train-data' = 'distilled' is not allowed with "
                f"strategy={self.strategy!r}: the diffusion workloads train on real data"
            )
        return self

    @model_validator(mode="after")
    def _distill_checks(self) -> RunConfig:
        if self.distill_method == "ncfm" and self.ncfm_psi_lr > 0 and self.ncfm_frequencies <= 16:
            raise ValueError(
                f"run-config key 'ncfm-frequencies' = {self.ncfm_frequencies}: the NCFM sampling "
                "network (ncfm-psi-lr > 0) draws 16 frequencies per mixture component and "
                "needs at least two components; use more than 16, or ncfm-psi-lr=0"
            )
        if self.ncfm_calibration > 0 and self.ncfm_feature_nets == 0:
            raise ValueError(
                f"run-config key 'ncfm-calibration' = {self.ncfm_calibration} needs "
                "'ncfm-feature-nets' >= 1 (it is 0): the calibration loss is a trained feature "
                "network's cross-entropy; set ncfm-feature-nets or ncfm-calibration=0"
            )
        return self

    @model_validator(mode="after")
    def _train_data_checks(self) -> RunConfig:
        # fedlgd always trains on local virtual data: either value means that for it.
        if self.train_data == "distilled" and self.strategy in ("fedka", "feddm"):
            raise ValueError(
                f"run-config key 'train-data' = 'distilled' is not allowed with "
                f"strategy={self.strategy!r}: it trains the classifier strategies (fedavg, "
                "fedprox, fedbn, scaffold, fednova, feddyn, moon, vhl) on local virtual data; "
                "feddm distils by itself and fedka aligns real source data"
            )
        return self

    @model_validator(mode="after")
    def _fedka_checks(self) -> RunConfig:
        if self.strategy == "fedka" and not self.target_domain:
            raise ValueError(
                "strategy='fedka' needs target-domain: the held-out domain whose unlabelled "
                "training split the server keeps (the other domains are the clients')"
            )
        if self.target_domain and self.domains.strip() != "all":
            names = [part.strip() for part in self.domains.split(",")]
            if self.target_domain not in names:
                raise ValueError(
                    f"target-domain={self.target_domain!r} is not among domains="
                    f"{self.domains!r}: list it there (it is held out from the clients)"
                )
            if names == [self.target_domain]:
                raise ValueError(
                    f"domains={self.domains!r} leaves no source domain once target-domain="
                    f"{self.target_domain!r} is held out: list at least one more domain"
                )
        if self.domain_head and self.model != "fedka-cnn":
            raise ValueError(
                f"domain-head=true needs model='fedka-cnn' (the DANN-style CNN with a domain "
                f"head), got model={self.model!r}"
            )
        if self.target_samples < self.target_batch_size:
            raise ValueError(
                f"target-samples={self.target_samples} is smaller than target-batch-size="
                f"{self.target_batch_size}: each local step draws a batch from those samples"
            )
        return self

    @model_validator(mode="after")
    def _cross_field_checks(self) -> RunConfig:
        if self.dataset != "embedded" and not self.data_root:
            raise ValueError(
                f"data-root is empty but dataset={self.dataset!r} reads files from disk: "
                "set data-root to the folder that holds them"
            )
        if self.resume and not self.run_name:
            raise ValueError("resume=true needs run-name: the name of the run to continue")
        return self

    # ------------------------------------------------------------------ helpers

    @classmethod
    def from_flower(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Build from ``context.run_config``; raise ``ConfigError`` naming every bad key."""
        allowed = sorted(_to_key(name) for name in cls.model_fields)
        unknown = sorted(set(run_config) - set(allowed))
        if unknown:
            raise ConfigError(
                "unknown run-config key(s): "
                + ", ".join(repr(key) for key in unknown)
                + ". Allowed keys: "
                + ", ".join(allowed)
            )
        try:
            return cls.model_validate(dict(run_config))
        except ValidationError as err:
            raise ConfigError(_format_errors(err, run_config)) from None

    def to_flower(self) -> dict[str, Any]:
        """The flat dashed-key dict Flower uses (the inverse of ``from_flower``)."""
        return self.model_dump(by_alias=True)

    def domain_names(self, available: tuple[str, ...]) -> tuple[str, ...]:
        """Resolve ``domains`` against the dataset's available domain names."""
        if self.domains.strip() == "all":
            return available
        names = tuple(part.strip() for part in self.domains.split(","))
        bad = [name for name in names if name not in available]
        if bad:
            raise ConfigError(
                f"run-config key 'domains' = {self.domains!r}: unknown domain(s) "
                f"{', '.join(map(repr, bad))} for dataset={self.dataset!r}. "
                f"Allowed: 'all' or a comma-separated subset of {', '.join(available)}"
            )
        return names

    def source_domains(self, available: tuple[str, ...]) -> tuple[str, ...]:
        """The clients' domains: ``domain_names`` without ``target-domain`` (if one is set)."""
        names = self.domain_names(available)
        if not self.target_domain:
            return names
        if self.target_domain not in available:
            raise ConfigError(
                f"run-config key 'target-domain' = {self.target_domain!r}: unknown domain for "
                f"dataset={self.dataset!r}. Allowed: '' (none) or one of {', '.join(available)}"
            )
        return tuple(name for name in names if name != self.target_domain)

    @property
    def runs_path(self) -> Path:
        return Path(self.runs_dir).expanduser()

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()


def _format_errors(err: ValidationError, given: Mapping[str, Any]) -> str:
    lines = ["invalid run config:"]
    for item in err.errors():
        location = item.get("loc", ())
        if location:
            key = _to_key(str(location[0]))
            value = given.get(key, item.get("input"))
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"  - run-config key {key!r} = {value!r}: {message}")
        else:
            lines.append(f"  - {item['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)
