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
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from fedmatch.config import RunConfig


def to_key(field_name: str) -> str:
    """Python field name -> run-config key (``lambda_`` -> ``lambda``, ``a_b`` -> ``a-b``)."""
    return field_name.rstrip("_").replace("_", "-")


class ParamsTable(BaseModel):
    """One run-config table; subclasses set ``table`` and declare their keys as fields."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_key,
        populate_by_name=True,
        # inf/nan pass every range check and then train to NaN: refuse them outright.
        allow_inf_nan=False,
    )

    table: ClassVar[str]

    def check_run(self, run: RunConfig) -> None:
        """Rules that need keys outside this table; raise ``ValueError`` naming them.

        Called only when the run's method reads this table.
        """


class DistillParams(ParamsTable):
    """Dataset distillation (DM, NCFM): the ``train.distill`` workload, FedDM, FedLGD.

    The embedding ConvNet takes ``model-width``/``-depth``/``-norm``.  Defaults are sized
    for a CPU.
    """

    table: ClassVar[str] = "distill"

    ipc: int = Field(10, ge=1)  # images per class
    method: Literal["dm", "ncfm"] = "dm"
    steps: int = Field(200, ge=1)
    lr: float = Field(0.0, ge=0)  # 0: the method's default (DM 1.0, NCFM 0.01)
    batch_real: int = Field(64, ge=1)
    init: Literal["real", "noise", "stats"] = "real"
    # Multi-formation (IDC; NCFM's rho = 2): each stored image decodes to factor^2 images.
    factor: int = Field(1, ge=1)
    dsa_strategy: str = "color_crop_cutout_scale_rotate"
    ncfm_alpha: float = Field(0.5, ge=0, le=1)
    ncfm_frequencies: int = Field(1024, ge=1)
    ncfm_psi_lr: float = Field(1e-3, ge=0)  # 0: no sampling network, t ~ N(0, I)
    # NCFM's feature networks: 0 embeds with a fresh random ConvNet per step (like DM);
    # N > 0 first trains N ConvNets on the local data and blends them with their init.
    ncfm_feature_nets: int = Field(0, ge=0)
    ncfm_feature_epochs: int = Field(20, ge=1)
    # NCFM's calibration step (code: calib_weight 1): CE of a trained feature net.
    ncfm_calibration: float = Field(0.0, ge=0)
    # One image step per class per iteration, as NCFM's code; False: one step for all.
    ncfm_step_per_class: bool = False
    eval_epochs: int = Field(300, ge=1)
    # How local virtual data starts before its DM warm-up (steps): FedLGD's per-class,
    # per-channel Gaussian ('stats'), random real images or N(0, 1).
    virtual_init: Literal["stats", "real", "noise"] = "stats"
    # Keep the initial local virtual data in cache-dir, shared by runs with the same data,
    # distillation keys and seed (FedLGD and its baselines distil once per client).
    virtual_cache: bool = True

    @field_validator("dsa_strategy")
    @classmethod
    def _dsa_strategy(cls, value: str) -> str:
        from fedmatch.distill.dsa import parse_strategy

        parse_strategy(value)
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
    unet_layers_per_block: int = Field(1, ge=1)
    unet_attention: bool = False
    # UNet2DConditionModel cross-attending to a class prompt [BOS, label] (DGQ's attention).
    unet_cross_attention: bool = False
    teacher_steps: int = Field(200, ge=1)  # local DDPM steps per teacher round
    teacher_lr: float = Field(1e-3, gt=0)
    # dmd2/disback/diffusion-ptq train the teacher first for this many rounds unless cached.
    teacher_rounds: int = Field(10, ge=1)
    teacher_checkpoint: str = ""  # a teacher.pt to start from; "" = the cache
    teacher_ddim_steps: int = Field(10, ge=1)  # DDIM steps when the teacher is evaluated
    fid_samples: int = Field(500, ge=10)  # generated images per FID evaluation
    fid_feature_steps: int = Field(500, ge=1)  # training steps of the FID feature network
    grid_per_class: int = Field(8, ge=1)  # sample-grid columns (one row per class)

    @field_validator("unet_channels")
    @classmethod
    def _unet_channels(cls, value: str) -> str:
        from fedmatch.diffusion.unet import parse_channels

        parse_channels(value)
        return value

    @field_validator("teacher_checkpoint")
    @classmethod
    def _checkpoint_absolute(cls, value: str) -> str:
        if value and not Path(value).expanduser().is_absolute():
            raise ValueError("must be an absolute path (or empty for the cached teacher)")
        return value

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
    lr: float = Field(1e-4, gt=0)  # generator and critic (AdamW, as DMD2)
    nfe: int = Field(1, ge=1)  # student steps: 1 = one-step; 4 = [999, 749, 499, 249]
    critic_steps: int = Field(5, ge=1)  # fake-score updates per generator update (TTUR)
    gan_weight_generator: float = Field(3e-3, ge=0)
    gan_weight_critic: float = Field(1e-2, ge=0)

    @field_validator("nfe")
    @classmethod
    def _nfe(cls, value: int) -> int:
        from fedmatch.diffusion.dmd2 import student_timesteps

        student_timesteps(value)
        return value
