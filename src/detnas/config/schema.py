"""Every stage's config schema, validated at the door: pretraining, finetuning, search, retraining and
the whole pipeline (which derives the configs of its stages from its own).

Defaults follow the authors' recipes (the DetNAS paper and its code) scaled down for small data on a CPU.
``detector.DetectorConfig`` (the detector's shape) stays beside the model it builds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from detnas.config.data_schema import ClassificationData, DataWorkers, DetectionData, DetectionSource
from detnas.config.tracking import WandbConfig
from detnas.model.amp import AmpSetting
from detnas.model.detector_config import DetectorConfig
from detnas.model.voc_metric import Metric
from detnas.strict import StrictModel


class SpaceConfig(StrictModel):
    space: Literal["small", "large"] = "small"
    width_mult: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _eval_archs_fit_the_space(self):
        """Every ``eval.archs`` entry is checked now, not after training when it is first used."""
        from detnas.model.space import get_space, parse_arch

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
    # the whole batch (all workers) lr was set for: a dry run with another world size x batch_size
    # warns and gives the linearly scaled lr
    lr_batch: int | None = Field(None, ge=1)

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
    """How each step's path is drawn: uniformly from the paths whose body FLOPs (MACs at 224x224) lie
    in the range (none = the whole space), or with ``fair`` every choice exactly once per four steps at
    every position (FairNAS's strict fairness: each choice gets the same number of updates)."""

    min_flops: float | None = Field(None, gt=0)
    max_flops: float | None = Field(None, gt=0)
    fair: bool = False
    # few-shot NAS (Zhao et al. 2021): the first blocks' choices fixed, e.g. [2]: a sub-supernet trained on
    # its part of the space only, started from the whole supernet (finetune's init: its checkpoint)
    prefix: list[Annotated[int, Field(ge=0, le=3)]] = []

    @model_validator(mode="after")
    def _fair_needs_the_whole_space(self):
        if self.fair and (self.min_flops is not None or self.max_flops is not None or self.prefix):
            raise ValueError("fair sampling draws from the whole space: leave min_flops, max_flops and prefix unset")
        return self


class LoggingConfig(StrictModel):
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    progress: bool = True
    wandb: WandbConfig | None = None  # mirror the TensorBoard scalars and the config to W&B


class RecalibConfig(StrictModel):
    """How a path of a supernet is scored: its BN statistics recomputed on training images first."""

    recalib_images: int = Field(256, ge=0)  # training images used to recompute a path's BN statistics
    recalib_mode: Literal["cumulative", "ema"] = "cumulative"
    batch_size: int = Field(16, ge=1)
    # decoded images (recalibration and evaluation sets together) kept in memory up to this many GB;
    # the rest are decoded again for every path. Does not change any result.
    cache_gb: float = Field(2.0, ge=0)


class EvalConfig(RecalibConfig):
    """The end-of-training evaluation of fixed paths."""

    archs: list[str] = []  # fixed paths to evaluate at the end (default: all-0 and all-3 and one random)
    metric: Metric = "coco"  # voc07 / voc: Pascal VOC's AP50 (11-point / area) beside COCO's metrics


class FitnessConfig(RecalibConfig):
    """The search's fitness of a candidate: recalibrated, then scored on the search split."""

    recalib_images: int = Field(256, ge=1)  # authors: 500 iterations x 8 images


class PretrainRecipe(StrictModel):
    """How a backbone is pretrained on classification data (supernet or standalone network)."""

    train: ScheduleConfig
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    # supernet only: train the ShuffleNetV2 path (choice 0 everywhere) alone for this many steps, then
    # grow the other choices out of it (model/growth.py) and train path-wise; 0 = path-wise from
    # the start, the authors' recipe
    grow_iters: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _grow_before_the_end(self):
        if self.grow_iters >= self.train.iters:
            raise ValueError(f"grow_iters ({self.grow_iters}) must be smaller than train.iters ({self.train.iters})")
        return self


class ClassificationRecipe(PretrainRecipe):
    """A pretraining recipe with its data."""

    data: ClassificationData


class PretrainConfig(SpaceConfig, ClassificationRecipe):
    seed: int = 0
    amp: AmpSetting = "auto"  # mixed precision: auto (bf16 on GPUs that have it, else off), off, bf16, fp16
    init: Path | None = None  # starting weights, as FinetuneConfig's; the classifier's last layer starts fresh
    sampling: SamplingConfig = SamplingConfig()
    logging: LoggingConfig = LoggingConfig()
    eval: EvalConfig = EvalConfig()


class FinetuneConfig(SpaceConfig):
    seed: int = 0
    amp: AmpSetting = "auto"
    # starting weights of the backbone (none: from scratch), a supernet or a network of this arch (or a supernet's
    # path): our checkpoints, exports' .safetensors, the DetNAS authors' ImageNet models (artifacts/init_weights.py)
    init: Path | None = None
    data: DetectionData
    detector: DetectorConfig = DetectorConfig()
    train: ScheduleConfig
    sampling: SamplingConfig = SamplingConfig()
    logging: LoggingConfig = LoggingConfig()
    eval: EvalConfig = EvalConfig()


class RetrainConfig(FinetuneConfig):
    """Retraining a fixed architecture: the same detector recipe, after classification pretraining
    of the standalone network as in the paper (``pretrain``; omit it, or pass --no-pretrain, to train
    the detector from scratch), or starting from a finetuned supernet's weights of its path
    (``supernet``: backbone, FPN and heads, as OFA and BigNAS deploy their subnets)."""

    pretrain: ClassificationRecipe | None = None
    supernet: Path | None = None  # a finetuned supernet's run folder or checkpoint: inherit its path's weights

    @model_validator(mode="after")
    def _one_start(self):
        if self.supernet is not None and (self.pretrain is not None or self.init is not None):
            raise ValueError("supernet: the network starts from the supernet's weights; leave pretrain and init "
                             "unset")
        return self

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
            space=self.space, width_mult=self.width_mult, seed=self.seed, amp=self.amp, logging=self.logging,
            eval=self.eval, **dict(self.pretrain),
        )


class SearchConfig(StrictModel):
    """Search hyper-parameters; defaults are the authors' (the DetNAS paper)."""

    # pareto: NSGA-II selection of the parents over (mAP up, FLOPs or latency down), see search/pareto.py
    strategy: Literal["evolution", "random", "pareto"] = "evolution"
    population: int = Field(50, ge=1)
    generations: int = Field(20, ge=1)
    topk: int = Field(10, ge=1)
    mutations: int = Field(20, ge=0)
    mutation_prob: float = Field(0.1, ge=0.0, le=1.0)
    crossovers: int = Field(20, ge=0)
    max_flops: float | None = Field(None, gt=0, allow_inf_nan=False, description="body MACs, e.g. 300e6")
    min_flops: float | None = Field(None, ge=0, allow_inf_nan=False, description="body MACs")
    max_params: int | None = Field(None, gt=0, description="body parameters")
    # a table written by `detnas latency`: records get the predicted latency, and with max_latency_ms
    # it is a constraint; the Pareto strategy then trades mAP against latency instead of FLOPs
    latency_table: Path | None = None
    max_latency_ms: float | None = Field(None, gt=0, allow_inf_nan=False, description="predicted latency")
    seed: int = 0
    max_tries: int = Field(100, ge=1, description="redraws per candidate slot")

    @model_validator(mode="after")
    def _check_relations(self) -> SearchConfig:
        if self.topk > self.population:
            raise ValueError(f"topk ({self.topk}) must not exceed population ({self.population})")
        if self.mutations + self.crossovers > self.population:
            raise ValueError(
                f"mutations + crossovers ({self.mutations} + {self.crossovers}) must not exceed "
                f"population ({self.population})"
            )
        if self.max_latency_ms is not None and self.latency_table is None:
            raise ValueError("max_latency_ms needs latency_table (measure one with `detnas latency`)")
        if self.min_flops is not None and self.max_flops is not None and self.min_flops > self.max_flops:
            raise ValueError(
                f"min_flops ({self.min_flops:g}) must not exceed max_flops ({self.max_flops:g})"
            )
        return self

    @property
    def budget(self) -> int:
        """Number of evaluations of a full run (fewer only if the constrained space runs out)."""
        return self.population * self.generations


class SearchStageConfig(StrictModel):
    supernet: Path  # the finetuning run folder (checkpoint.pt and search_split.json)
    # more finetuned supernets of the same search split: the fitness is the mean over all of them
    other_supernets: list[Path] = []
    search: SearchConfig = SearchConfig()
    fitness: FitnessConfig = FitnessConfig()
    workers: DataWorkers = "auto"  # DataLoader workers decoding the recalibration and search images
    amp: AmpSetting = "auto"  # of recalibration and inference
    progress: bool = True


class RetrainRecipe(StrictModel):
    # true: each network starts from the finetuned supernet's weights of its path (backbone, FPN, heads)
    # and is finetuned alone; false: from random weights, with the classification pretraining below
    # (the paper's way)
    inherit: bool = False
    pretrain: ScheduleConfig | None = None  # classification pretraining of each retrained network
    train: ScheduleConfig  # its detector training
    # each network is retrained with seeds seed, seed + 1, ...: the report compares the searched
    # network with the baseline against this seed spread
    seeds: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _one_start(self):
        if self.inherit and self.pretrain is not None:
            raise ValueError("pretrain: an inherited network is not pretrained again; remove retrain.pretrain "
                             "or set retrain.inherit: false")
        return self


class RankCheckRecipe(StrictModel):
    """How many architectures the rank check retrains, and how its agreement is summarised."""

    archs: int = Field(12, ge=3)  # in all: the included ones (searched, random best, baseline) and draws
    # standalone trainings per architecture; 2 or more measure the seed noise; 0: none, only the agreement
    # of several supernets (detnas rank-check with --supernet twice or more)
    seeds: int = Field(2, ge=0)
    topk: int = Field(3, ge=1)  # the hit rate: how many of the fitness's k best are among the k truly best
    # resamples (of the architectures and each one's seeds) for tau's interval; draws of the ceiling's simulation
    bootstrap: int = Field(2000, ge=100)


class RankCheckStageConfig(StrictModel):
    """``detnas rank-check``: a finetuned supernet, its fitness, the budget to draw architectures under
    (the search's), and the retraining recipe they are trained alone with."""

    supernet: Path  # the finetuning run folder
    # more finetuned supernets (other seeds or recipes) scored on the same architectures: how they agree
    other_supernets: list[Path] = []
    fitness: FitnessConfig = FitnessConfig()
    search: SearchConfig = SearchConfig()  # its budget (FLOPs, params) and seed
    retrain: RetrainConfig
    rank_check: RankCheckRecipe = RankCheckRecipe()
    include: list[str] = []  # architectures checked first (digits, presets, a search's best.json)

    @model_validator(mode="after")
    def _something_to_compare(self):
        if self.rank_check.seeds == 0 and not self.other_supernets:
            raise ValueError("rank_check.seeds 0 retrains nothing: it compares two or more supernets "
                             "(give --supernet twice or more), or set seeds to 1 or more")
        return self


class EvaluateConfig(StrictModel):
    """``detnas evaluate``: the set a retrained detector is scored on."""

    data: DetectionSource
    batch_size: int = Field(8, ge=1)  # images per forward pass
    metric: Metric = "coco"  # voc07 / voc: Pascal VOC's AP50 (11-point / area) beside COCO's metrics


class PipelineConfig(SpaceConfig):
    seed: int = 0
    amp: AmpSetting = "auto"  # every stage's
    # classification data for pretraining the supernet and the retrained networks (ImageNet in the paper);
    # none: no pretraining at all, everything trains on the detection data alone (DetNAS-scratch)
    classification: ClassificationData | None = None
    detection: DetectionData
    detector: DetectorConfig = DetectorConfig()
    pretrain: PretrainRecipe | None = None
    finetune: ScheduleConfig
    sampling: SamplingConfig = SamplingConfig()
    search: SearchConfig = SearchConfig()
    fitness: FitnessConfig = FitnessConfig()
    random_search: bool = True  # the same budget drawn uniformly, for comparison
    retrain: RetrainRecipe
    baseline: bool = True  # retrain ShuffleNetV2 (all choices 0) of the same space too
    # does the fitness rank like standalone training? (``detnas rank-check``; none = not run)
    rank_check: RankCheckRecipe | None = None
    eval: EvalConfig = EvalConfig()
    logging: LoggingConfig = LoggingConfig()
    # independent stages (the two searches, the retrainings) run this many at once, each in its own process
    # with its share of torch's threads; auto: 2 on a CPU with 2+ threads, else 1 (stages/lanes.py)
    parallel_stages: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    # supernets pretrained and finetuned alike with seeds seed, seed + 1, ...: the search's fitness is their
    # mean, which orders architectures less by the noise of one training run (K times the supernet cost)
    supernets: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _search_needs_a_split(self):
        if self.detection.holdout.size < 1:
            raise ValueError("detection.holdout.size must be at least 1: the search is scored on images held "
                             "out of training (the paper: 5000 of COCO trainval35k)")
        if self.search.strategy != "evolution":  # the pipeline runs the evolution (and random search) itself
            raise ValueError(f"search.strategy: the pipeline runs the evolution (and random search with "
                             f"random_search: true), not '{self.search.strategy}'; run `detnas search` with "
                             "this strategy on the pipeline's finetune folder")
        if self.rank_check is not None and self.rank_check.seeds == 0 and self.supernets == 1:
            raise ValueError("rank_check.seeds: with one supernet the pipeline's rank check needs 1 or more "
                             "retrainings per architecture (0 compares several supernets: supernets: 2 or more)")
        return self

    def common(self) -> dict:
        return {"space": self.space, "width_mult": self.width_mult, "seed": self.seed, "amp": self.amp,
                "logging": self.logging}

    def pretrain_config(self, supernet: int = 0) -> PretrainConfig | None:  # seed: seed + supernet
        if self.pretrain is None or self.classification is None:
            return None
        return PretrainConfig(**{**self.common(), "seed": self.seed + supernet}, data=self.classification,
                              sampling=self.sampling, eval=self.eval, **dict(self.pretrain))

    def finetune_config(self, init: Path | None, supernet: int = 0) -> FinetuneConfig:
        """Seed ``seed + supernet``; the search split is drawn with its own seed: the same for every supernet."""
        return FinetuneConfig(**{**self.common(), "seed": self.seed + supernet}, init=init, data=self.detection,
                              detector=self.detector, train=self.finetune, sampling=self.sampling, eval=self.eval)

    def search_config(self, finetune_dir: Path, strategy: str, others: list[Path] = ()) -> SearchStageConfig:
        """The search of the supernet in ``finetune_dir`` (with ``others``: of their mean fitness)."""
        search = self.search.model_copy(update={"strategy": strategy})
        return SearchStageConfig(supernet=finetune_dir, other_supernets=list(others), search=search,
                                 fitness=self.fitness, workers=self.detection.workers, amp=self.amp,
                                 progress=self.logging.progress)

    def retrain_config(self, finetune_dir: Path) -> RetrainConfig:
        """Each retraining's config; with ``retrain.inherit`` it starts from the supernet in ``finetune_dir``."""
        pretrain = None
        if self.retrain.pretrain is not None and self.classification is not None:
            # a standalone network has no choices to grow
            recipe = self.pretrain.model_dump(exclude={"grow_iters"}) if self.pretrain is not None else {}
            pretrain = {**recipe, "data": self.classification, "train": self.retrain.pretrain}
        data = self.detection.model_copy(update={"holdout": self.detection.holdout.model_copy(update={"size": 0})})
        return RetrainConfig(**self.common(), data=data, detector=self.detector, train=self.retrain.train,
                             eval=self.eval, pretrain=pretrain, supernet=finetune_dir if self.retrain.inherit else None)

    def rank_check_config(self, finetune_dir: Path, include: list[str],
                          others: list[Path] = ()) -> RankCheckStageConfig:
        return RankCheckStageConfig(supernet=finetune_dir, other_supernets=list(others), fitness=self.fitness,
                                    search=self.search, retrain=self.retrain_config(finetune_dir),
                                    rank_check=self.rank_check or RankCheckRecipe(), include=include)
