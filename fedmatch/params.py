"""Run-config tables: the base class of every params class and the tables methods share.

A params class is a small pydantic model that owns one ``[tool.flwr.app.config.<table>]``
table: each field is one key (kebab-case in the run config, snake_case in Python), with
its range and its cross-field rules, so a bad value is refused with the key, the value
and what is allowed.  Flower flattens the table to dotted keys (``distill.ipc``).

A method's own table lives with its strategy (``strategies/fedka.py: FedKAParams``);
the tables several methods read live here: ``distill`` (dataset distillation, used by
FedDM, FedLGD and training on distilled data), ``diffusion`` (the UNet, its teacher and
sample-quality evaluation, used by every diffusion method) and ``generator`` (one-step
generator distillation, used by DMD2 and DisBack).  ``fedmatch/methods.py`` says which
method reads which table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)


def to_key(field_name: str) -> str:
    """Python field name -> run-config key (``lambda_`` -> ``lambda``, ``a_b`` -> ``a-b``)."""
    return field_name.rstrip("_").replace("_", "-")


# How every run-config model validates (the tables here and RunConfig's common keys).
RUN_CONFIG_MODEL = ConfigDict(
    extra="forbid",
    frozen=True,
    alias_generator=to_key,
    populate_by_name=True,
    # inf/nan pass every range check and then train to NaN: refuse them outright.
    allow_inf_nan=False,
    # The docstring under each field is its documentation (docs/config.md).
    use_attribute_docstrings=True,
)


def expand_home(value: str) -> Path:
    """``Path(value).expanduser()``, or a ValueError (a run-config error) for ``~name`` of a
    user this machine does not know, where pathlib raises RuntimeError."""
    try:
        return Path(value).expanduser()
    except RuntimeError:
        user = value.split("/", 1)[0]
        raise ValueError(f"{user!r} names no user's home folder on this machine") from None


# Flower carries run-config integers as 64-bit signed integers (protobuf sint64).
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class RunConfigModel(BaseModel):
    """Base of every run-config model (RunConfig and each table): refuses, for every key,
    values that pydantic's coercion would otherwise let through."""

    model_config = RUN_CONFIG_MODEL

    @field_validator("*", mode="before")
    @classmethod
    def _plain_value(cls, value: Any, info: ValidationInfo) -> Any:
        kind = cls.model_fields[info.field_name].annotation
        # pydantic reads true as 1: `num-server-rounds = true` is a typo, not one round.
        if kind in (int, float) and isinstance(value, bool):
            raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
        if kind is int and isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(
                f"must lie in {_INT64_MIN}..{_INT64_MAX} (Flower's run-config integers are 64-bit)"
            )
        # A NUL byte ends a path at the operating system: every file call would fail later.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("contains a NUL character (\\x00), which no value may hold")
        return value


class ParamsTable(RunConfigModel):
    """One run-config table; subclasses set ``table`` and declare their keys as fields."""

    table: ClassVar[str]

    def check_run(self, run: Any) -> None:
        """Rules that need keys outside this table; raise ``ValueError`` naming them.

        ``run`` is the ``fedmatch.config.RunConfig`` being validated (typed ``Any`` because the
        run config is built from the tables, not the other way round).  Called only when the
        run's method reads this table.
        """


class DistillParams(ParamsTable):
    """Dataset distillation (DM, NCFM): the ``train.distill`` workload, FedDM, FedLGD.

    The embedding ConvNet takes ``model-width``/``-depth``/``-norm``.  Defaults are sized
    for a CPU.
    """

    table: ClassVar[str] = "distill"

    ipc: int = Field(10, ge=1)  # images per class
    """distillation: synthetic images per class (`train.distill`, `feddm`)"""
    method: Literal["dm", "ncfm"] = "dm"
    """distillation: DM (WACV 2023) or NCFM (CVPR 2025)"""
    steps: int = Field(200, ge=1)
    """distillation: optimisation steps (DM's paper runs 20,000; 200 is the CPU default)"""
    lr: float = Field(0.0, ge=0)  # 0: the method's default (DM 1.0, NCFM 0.01)
    """distillation: image learning rate; 0 = the method's default (DM: SGD 1.0, momentum 0.5;
    NCFM: AdamW 0.01)"""
    # DM's Eq. 4 matches class *means*, so each image's gradient shrinks as 1/IPC; 'larger' weighs
    # class c's term by max(1, n_c/10) (fedmatch/distill/dm.py; benchmarks/RESULTS.md, issue 29).
    image_step: Literal["larger", "per-image", "class-mean"] = "larger"
    """DM (`train.distill`, `feddm`, FedLGD's warm-up and refreshes): 'class-mean' is Eq. 4 as
    published, each image's step ∝ 1/IPC (at IPC 50 a 200-step set barely leaves its start);
    'per-image' weighs class c's term by n_c/10 (n_c: its synthetic images), so each image steps
    as at IPC 10 whatever the IPC (the same as lr × IPC/10 under DM's SGD; a tenth of Eq. 4's step
    at IPC 1); 'larger' (default) weighs it by max(1, n_c/10), the larger of the two steps: Eq. 4
    up to IPC 10, 'per-image' from IPC 10 on. All three identical at IPC 10; NCFM ignores it
    (AdamW's step does not depend on the loss scale)"""
    batch_real: int = Field(64, ge=1)
    """distillation: real images per class per step (DM/NCFM use 256/1024)"""
    # DM's code treats 28x28 MNIST as 32x32 (first conv padded by 3: 4x4 features); padding 1
    # pools 28 -> 14 -> 7 -> 3 and the last pooling drops a row and column of every feature map.
    net_padding: int = Field(1, ge=0, le=8)
    """distillation: padding of the embedding ConvNet's first convolution; 3 is DM's code for
    28x28 digits (as 32x32: 28 -> 32 -> 16 -> 8 -> 4, 2,048 features at width 128), 1 pools
    28 -> 14 -> 7 -> 3 (1,152 features)"""
    # One compiled graph serves every step's random network (fedmatch/distill/compiled.py).
    compile: bool = False
    """DM (`train.distill`, `feddm`, FedLGD's warm-up and refreshes): embed through
    `torch.compile` (one graph for every step's network): the same steps up to float rounding,
    about 1.5x faster per step on a CPU after ~20 s of compilation per process; pays from about
    a hundred steps. Needs a C++ compiler on a CPU (falls back to eager with a warning)"""
    init: Literal["real", "noise", "stats"] = "real"
    """distillation (`train.distill`, `feddm`): start from random real images, N(0, 1) noise, or
    per-class, per-channel Gaussian noise with the data's mean and std"""
    # Multi-formation (IDC; NCFM's rho = 2): each stored image decodes to factor^2 images.
    factor: int = Field(1, ge=1)
    """distillation: multi-formation (IDC, ICML 2022; NCFM's paper uses 2): each of the `ipc`
    stored images per class is a factor × factor grid of smaller images, each upsampled back to
    full size, so the set trains a model as `ipc`·factor² images at the same pixel budget; the
    set kept, sent (`feddm`) and trained on is the decoded one"""
    dsa_strategy: str = "color_crop_cutout_scale_rotate"
    """DSA transforms for distillation and for training on synthetic sets (no `flip` for digits)"""
    ncfm_alpha: float = Field(0.5, ge=0, le=1)
    """NCFM: amplitude weight α in sqrt(α·amplitude + (1−α)·phase) (Eq. 8); 0.5 as the released
    configs; the paper's ablation prefers 9:1 (0.9) at IPC 1 and 4:3 (0.571) at IPC 10 on
    CIFAR-10 (mnist IPC 10 here: 95.9 at 0.571 vs 95.7 at 0.5, 3 seeds)"""
    ncfm_frequencies: int = Field(1024, ge=1)
    """NCFM: frequencies t per step (the paper's 1,024; the released configs use 4,096: mnist IPC
    10 here 95.8 at 4,096 vs 95.9 at 1,024, 3 seeds, for 35 % more time per step)"""
    ncfm_psi_lr: float = Field(1e-3, ge=0)  # 0: no sampling network, t ~ N(0, I)
    """NCFM: ascent learning rate of the sampling network ψ; 0 = no ψ, t ~ N(0, I)"""
    # NCFM's feature networks: 0 embeds with a fresh random ConvNet per step (like DM);
    # N > 0 first trains N ConvNets on the local data and blends them with their init.
    ncfm_feature_nets: int = Field(0, ge=0)
    """NCFM: embed with blends of this many ConvNets first trained on the client's data (the
    paper's feature networks, θ = l·θ_init + (1−l)·θ_trained, l ~ U(0,1)); 0 = a fresh random
    ConvNet every step, as DM (cheap)"""
    ncfm_feature_epochs: int = Field(20, ge=1)
    """NCFM: training epochs of each feature network (the evaluation protocol's SGD and DSA)"""
    # NCFM's calibration step (code: calib_weight 1): CE of a trained feature net.
    ncfm_calibration: float = Field(0.0, ge=0)
    """NCFM: weight of the calibration step (the code's `calib_weight`, 1): after each matching
    step, one image step on the cross-entropy of a trained feature network on the augmented
    synthetic set; 0 = the pure min-max (the paper's Table 5)"""
    # One image step per class per iteration, as NCFM's code; False: one step for all.
    ncfm_step_per_class: bool = False
    """NCFM: step the images once per class per iteration, each step on that class's gradient, as
    the released code (C AdamW steps per iteration; other classes move by momentum and weight
    decay); false: one step for all classes (mnist IPC 10, seed 0: 95.1 at the code's lr 0.01
    and 96.2 at lr 0.003, against 95.7 for one shared step at lr 0.03; C Adam steps per
    iteration act as a larger step)"""
    eval_epochs: int = Field(300, ge=1)
    """epochs of the synthetic-set protocol (`feddm`'s server training; DM's code uses 1,000)"""
    # How local virtual data starts before its DM warm-up (steps): FedLGD's per-class,
    # per-channel Gaussian ('stats'), random real images or N(0, 1).
    virtual_init: Literal["stats", "real", "noise"] = "stats"
    """local virtual data (`fedlgd`, `train-data='distilled'`): start from Gaussian noise with the
    client's per-class, per-channel mean and std (FedLGD), random real images, or N(0, 1)"""
    # Keep the initial local virtual data in cache-dir, shared by runs with the same data,
    # distillation keys and seed (FedLGD and its baselines distil once per client).
    virtual_cache: bool = True
    """keep each client's initial local virtual data in `cache-dir/virtual/`, keyed by a digest of
    the data, partition, distillation keys, seed and device type: runs that differ only in
    strategy or training keys (FedLGD and its baselines) distil once per client. Set false to
    time the warm-up"""

    @field_validator("dsa_strategy")
    @classmethod
    def _dsa_strategy(cls, value: str) -> str:
        from fedmatch.distill.dsa import parse_strategy

        parse_strategy(value)
        return value

    @field_validator("factor")
    @classmethod
    def _factor_divides_the_images(cls, value: int) -> int:
        from fedmatch.data.types import IMAGE_SHAPE
        from fedmatch.distill.multiformation import check_factor

        check_factor(value, IMAGE_SHAPE[1:])
        return value

    @model_validator(mode="after")
    def _ncfm_checks(self) -> DistillParams:
        if self.method == "ncfm" and self.ncfm_psi_lr > 0 and self.ncfm_frequencies <= 16:
            raise ValueError(
                f"distill.ncfm-frequencies = {self.ncfm_frequencies}: the NCFM sampling "
                "network (distill.ncfm-psi-lr > 0) draws 16 frequencies per mixture component "
                "and needs at least two components; use more than 16, or ncfm-psi-lr=0"
            )
        if self.ncfm_calibration > 0 and self.ncfm_feature_nets == 0:
            raise ValueError(
                f"distill.ncfm-calibration = {self.ncfm_calibration} needs "
                "distill.ncfm-feature-nets >= 1 (it is 0): the calibration loss is a trained "
                "feature network's cross-entropy; set ncfm-feature-nets or ncfm-calibration=0"
            )
        return self


class DiffusionParams(ParamsTable):
    """The diffusion UNet, its DDPM teacher and sample-quality evaluation.

    Read by diffusion-teacher, dmd2, disback and diffusion-ptq; images are padded to 32x32.
    """

    table: ClassVar[str] = "diffusion"

    unet_channels: str = "32,64"
    """generators: widths per level of the diffusers `UNet2DModel` (teacher, generator and fake
    score; images edge-padded 28→32)"""
    unet_layers_per_block: int = Field(1, ge=1)
    """generators: ResNet blocks per UNet level"""
    unet_attention: bool = False
    """generators: self-attention in the UNet's mid block"""
    # UNet2DConditionModel cross-attending to a class prompt [BOS, label] (DGQ's attention).
    unet_cross_attention: bool = False
    """generators / `diffusion-ptq`: a diffusers `UNet2DConditionModel` instead, cross-attending at
    its lowest-resolution level and mid block to the class prompt [BOS, label] (a learned token
    table; the label also stays in the time embedding); the last width must be a multiple of 16
    (channels per head). A teacher cached with the other architecture is never reused"""
    # One class-embedding row per (class, domain): each client conditions on its own domain.
    domain_conditioning: bool = False
    """generators: condition the UNets on (class, domain), index domain·10 + class (the domain's
    position in `domains`), embedded as a class row plus a domain row; every client trains on its
    own domain (a client holding several domains is refused) and the server samples the domains
    in turn. A teacher cached without it is never reused"""
    # Classifier-free guidance (Ho & Salimans 2021): condition dropout in training, w in use.
    teacher_cond_dropout: float = Field(0.0, ge=0, lt=1)
    """generators: share of the teacher's training examples whose condition is replaced by a
    learned null condition (classifier-free guidance training, Ho & Salimans 2021, Alg. 1);
    > 0 adds the null row to every UNet. A teacher cached without it is never reused"""
    guidance_scale: float = Field(0.0, ge=0, le=50)
    """generators: classifier-free guidance scale w wherever the teacher is queried: its samples
    ((1 + w)·v(x, y) − w·v(x, ∅)), DMD2/DisBack's real score, and the quantized teacher's
    samples; 0 = the plain conditional model; > 0 needs `teacher-cond-dropout` > 0"""
    teacher_steps: int = Field(200, ge=1)  # local DDPM steps per teacher round
    """generators: local DDPM (v-prediction) steps per teacher round (`train.teacher`)"""
    # Mixed precision: ~1.3x per CPU step with AVX512-BF16 (RESULTS.md, issue 28); slower without.
    teacher_bf16: bool = False
    """generators: train the teacher under bfloat16 autocast (float32 weights and AdamW): faster
    on GPUs and on CPUs with bfloat16 instructions (AVX512-BF16/AMX), slower on other CPUs. A
    teacher cached without it is never reused"""
    # FedAvg weighs clients by examples; equal weights give a small domain a say (issue 28).
    teacher_weighting: Literal["examples", "uniform"] = "examples"
    """generators: how the server averages the clients' teachers each round: `examples` = by
    local training examples (FedAvg), `uniform` = every client alike, whatever its size (a small
    domain, e.g. optdigits' 1,438 images beside mnist's, then counts as much as a large one). The
    server sets the weights itself. A teacher cached with the other weighting is never reused"""
    teacher_lr: float = Field(1e-3, gt=0)
    """generators: teacher AdamW learning rate (also DisBack's degradation)"""
    teacher_lr_final: float = Field(0.0, ge=0)
    """generators: > 0: the teacher's learning rate decays by a cosine from `teacher-lr` in the
    first teacher round to this in the last (the server sends each round's value); 0 = constant
    `teacher-lr`"""
    # dmd2/disback/diffusion-ptq train the teacher first for this many rounds unless cached.
    teacher_rounds: int = Field(10, ge=1)
    """`dmd2`/`disback`: federated teacher rounds run first when no cached teacher matches (a
    `diffusion-teacher` run with `num-server-rounds` = this and the same data/UNet keys writes
    the one they reuse)"""
    teacher_checkpoint: str = ""  # a teacher.pt to start from; "" = the cache
    """`dmd2`/`disback`: distil this `teacher-*.pt` instead of the cached one"""
    teacher_ddim_steps: int = Field(10, ge=1)  # sampler steps when the teacher is evaluated
    """generators: network evaluations of the teacher's sampler (`teacher-sampler`) when the
    teacher or its quantized copy draws samples, and the calibration timesteps of `diffusion-ptq`"""
    # DPM-Solver++(2M) won at equal cost on the five-domain teacher (RESULTS.md, issue 28).
    teacher_sampler: Literal["dpm++2m", "ddim"] = "dpm++2m"
    """generators: the teacher's sampler: `dpm++2m` = DPM-Solver++(2M) (Lu et al. 2022) with steps
    uniform in log-SNR, `ddim` = DDIM (η = 0, trailing spacing); used for the teacher's and the
    quantized teacher's samples and `diffusion-ptq`'s calibration timesteps and trajectories"""
    fid_samples: int = Field(500, ge=10)  # generated images per FID evaluation
    """generators: images generated per server-side FID evaluation (balanced classes, fixed seed)"""
    fid_feature_steps: int = Field(500, ge=1)  # training steps of the FID feature network
    """generators: training steps of the FID-digits feature network (cached in `cache-dir`)"""
    # Epochs of the per-domain classifiers that read the samples' classes; 0 = no scoring.
    accuracy_epochs: int = Field(3, ge=0)
    """generators: epochs of the independent per-domain classifier (a ConvNet trained on that
    domain's real training split, cached in `cache-dir`) that scores the class accuracy of
    samples per domain, beside its accuracy on real test images (metrics `sample-accuracy`,
    `real-accuracy`); 0 turns the scoring off"""
    eval_every: int = Field(1, ge=1)
    """generators: score the samples (FID-digits, class accuracy, grid) before round 1, every
    this many rounds and after the last; sampling 500 images costs more than a short round"""
    grid_per_class: int = Field(8, ge=1)  # sample-grid columns (one row per class)
    """generators: columns of the per-round sample grid PNG (one row per class)"""

    @field_validator("unet_channels")
    @classmethod
    def _unet_channels(cls, value: str) -> str:
        from fedmatch.diffusion.unet import parse_channels

        parse_channels(value)
        return value

    @field_validator("teacher_checkpoint")
    @classmethod
    def _checkpoint_absolute(cls, value: str) -> str:
        if value and not expand_home(value).is_absolute():
            raise ValueError("must be an absolute path (or empty for the cached teacher)")
        return value

    @model_validator(mode="after")
    def _guidance_needs_null_condition(self) -> DiffusionParams:
        if self.guidance_scale > 0 and self.teacher_cond_dropout == 0:
            raise ValueError(
                f"diffusion.guidance-scale = {self.guidance_scale:g} needs a teacher trained "
                "with a null condition, but diffusion.teacher-cond-dropout = 0; set "
                "teacher-cond-dropout (e.g. 0.1) or guidance-scale = 0"
            )
        return self

    @model_validator(mode="after")
    def _cross_attention_heads(self) -> DiffusionParams:
        if self.unet_cross_attention:
            # The head-width check needs both keys; unet.py names them in its message.
            from fedmatch.diffusion.unet import UNetSpec, parse_channels

            UNetSpec(channels=parse_channels(self.unet_channels), cross_attention=True).validate()
        return self


class GeneratorParams(ParamsTable):
    """One-step generator distillation by distribution matching (DMD2; DisBack builds on it)."""

    table: ClassVar[str] = "generator"

    steps: int = Field(20, ge=1)  # local generator updates per round
    """`dmd2`/`disback`: local generator updates per round (`train.generator`)"""
    lr: float = Field(1e-4, gt=0)  # generator and critic (AdamW, as DMD2)
    """`dmd2`/`disback`: AdamW learning rate of generator, fake score and GAN head"""
    nfe: int = Field(1, ge=1)  # student steps: 1 = one-step; 4 = [999, 749, 499, 249]
    """`dmd2`/`disback`: generator steps; 1 = one-step (t = 999), 4 = [999, 749, 499, 249] trained
    with backward simulation"""
    critic_steps: int = Field(5, ge=1)  # fake-score updates per generator update (TTUR)
    """`dmd2`/`disback`: fake-score (+ GAN head) updates per generator update (two time-scale
    rule)"""
    gan_weight_generator: float = Field(3e-3, ge=0)
    """`dmd2`/`disback`: weight of the generator's GAN loss (0 = no GAN term for G)"""
    gan_weight_critic: float = Field(1e-2, ge=0)
    """`dmd2`/`disback`: weight of the discriminator loss on the fake score (0 = no GAN; the head
    then never sees real images)"""

    @field_validator("nfe")
    @classmethod
    def _nfe(cls, value: int) -> int:
        from fedmatch.diffusion.dmd2 import student_timesteps

        student_timesteps(value)
        return value
