"""Configs of the two supernet training stages (and of retraining), validated at the door.

Defaults follow the authors' recipes (SPEC section 5) scaled down for small data on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from detnas.config import StrictModel
from detnas.detector import DetectorConfig


class SpaceConfig(StrictModel):
    space: Literal["small", "large"] = "small"
    width_mult: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _eval_archs_fit_the_space(self):
        """Every ``eval.archs`` entry is checked now, not after training when it is first used."""
        from detnas.space import get_space, parse_arch

        archs = getattr(getattr(self, "eval", None), "archs", [])
        space = get_space(self.space, self.width_mult) if archs else None
        for i, arch in enumerate(archs):
            try:
                parse_arch(arch, space)
            except ValueError as e:  # ArchError included
                raise ValueError(f"eval.archs[{i}]: {e}") from None
        return self


class ScheduleConfig(StrictModel):
    """SGD with linear warmup, then linear decay to 0 or steps of x0.1 at ``milestones``."""

    iters: int = Field(ge=1)
    batch_size: int = Field(ge=1)  # per worker; at least 2 (see below)
    lr: float = Field(gt=0)  # for the whole (all workers) batch
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(4e-5, ge=0)  # conv/linear weights only; BN and biases get none
    warmup_iters: int = Field(0, ge=0)
    decay: Literal["linear", "step"] = "linear"
    milestones: list[int] = []  # with decay: step
    grad_clip: float | None = Field(None, gt=0)

    @field_validator("batch_size")
    @classmethod
    def _batch_norm_needs_two(cls, v: int) -> int:
        if v < 2:  # BatchNorm in training mode fails on one sample once a feature map is 1x1
            raise ValueError(f"must be at least 2 (BatchNorm needs 2 or more images per worker), got {v}")
        return v

    @model_validator(mode="after")
    def _milestones_in_range(self):
        if any(not 0 < m < self.iters for m in self.milestones):
            raise ValueError(f"milestones must lie strictly between 0 and iters={self.iters}")
        return self


class SamplingConfig(StrictModel):
    """The range of body FLOPs (MACs at 224x224) that paths are sampled from; none = the whole space."""

    min_flops: float | None = Field(None, gt=0)
    max_flops: float | None = Field(None, gt=0)


class LoggingConfig(StrictModel):
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    progress: bool = True


class ClassificationData(StrictModel):
    train: Path
    val: Path
    image_size: int = Field(32, ge=8)
    flip: bool = False
    workers: int = Field(0, ge=0)


class DetectionSource(StrictModel):
    """A COCO (annotation JSON + image folder) or Pascal VOC (root with Annotations/, JPEGImages/) set."""

    format: Literal["coco", "voc"] = "coco"
    annotations: Path | None = None  # coco
    images: Path | None = None  # coco
    root: Path | None = None  # voc
    split: str | None = None  # voc: ImageSets/Main/<split>.txt

    @model_validator(mode="after")
    def _fields_of_the_format(self):
        need = ("annotations", "images") if self.format == "coco" else ("root",)
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"a {self.format} data source needs {' and '.join(missing)}")
        return self


class HoldoutConfig(StrictModel):
    """The search split: images carved out of the training set by a seeded draw, never trained on."""

    size: int = Field(0, ge=0)
    seed: int = 0


class DetectionData(StrictModel):
    train: DetectionSource
    test: DetectionSource | None = None
    holdout: HoldoutConfig = HoldoutConfig()
    flip: bool = True
    workers: int = Field(0, ge=0)


class EvalConfig(StrictModel):
    archs: list[str] = []  # fixed paths to evaluate at the end (default: all-0 and all-3 and one random)
    recalib_images: int = Field(256, ge=0)  # training images used to recompute a path's BN statistics
    batch_size: int = Field(16, ge=1)


class ClassificationRecipe(StrictModel):
    """How a backbone is pretrained on classification data (supernet or standalone network)."""

    data: ClassificationData
    train: ScheduleConfig
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    # supernet only: train the ShuffleNetV2 path (choice 0 everywhere) alone for this many steps, then
    # grow the other choices out of it (supernet_growth.py) and train path-wise; 0 = path-wise from
    # the start, the authors' recipe
    grow_iters: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _grow_before_the_end(self):
        if self.grow_iters >= self.train.iters:
            raise ValueError(f"grow_iters ({self.grow_iters}) must be smaller than train.iters ({self.train.iters})")
        return self


class PretrainConfig(SpaceConfig, ClassificationRecipe):
    seed: int = 0
    sampling: SamplingConfig = SamplingConfig()
    logging: LoggingConfig = LoggingConfig()
    eval: EvalConfig = EvalConfig()


class FinetuneConfig(SpaceConfig):
    seed: int = 0
    init: Path | None = None  # a pretraining checkpoint (its backbone weights); none = from scratch
    data: DetectionData
    detector: DetectorConfig = DetectorConfig()
    train: ScheduleConfig
    sampling: SamplingConfig = SamplingConfig()
    logging: LoggingConfig = LoggingConfig()
    eval: EvalConfig = EvalConfig()


class RetrainConfig(FinetuneConfig):
    """Retraining a fixed architecture: the same detector recipe, after classification pretraining
    of the standalone network as in the paper (``pretrain``; omit it, or pass --no-pretrain, to train
    the detector from scratch)."""

    pretrain: ClassificationRecipe | None = None

    @field_validator("pretrain")
    @classmethod
    def _nothing_to_grow(cls, v: ClassificationRecipe | None) -> ClassificationRecipe | None:
        if v is not None and v.grow_iters:
            raise ValueError("grow_iters grows a supernet's choices: a retrained network has none")
        return v

    @field_validator("sampling")
    @classmethod
    def _no_sampling(cls, v: SamplingConfig) -> SamplingConfig:
        if v.min_flops is not None or v.max_flops is not None:
            raise ValueError("a retrained network has one fixed architecture: no sampling range")
        return v

    def pretrain_config(self) -> PretrainConfig:
        """The standalone network's classification pretraining, as a stage config of its own."""
        return PretrainConfig(
            space=self.space, width_mult=self.width_mult, seed=self.seed, logging=self.logging,
            eval=self.eval, **dict(self.pretrain),
        )
