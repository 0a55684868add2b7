"""The whole DetNAS pipeline in one command: pretrain, finetune, search (evolution and random), retrain
the searched architecture, the random-search best and the ShuffleNetV2 baseline, then a report.

Each stage writes into its own folder of the run. Rerunning the same command skips the stages that
finished and resumes the one that was interrupted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import Field, model_validator

from detnas.atomic import write_json_atomic
from detnas.checkpoint import load_checkpoint
from detnas.config import StrictModel
from detnas.detector import DetectorConfig
from detnas.distributed import broadcast_object, is_main
from detnas.report import write_report
from detnas.retrain import is_finished, run_retrain
from detnas.search import BEST_FILE, SearchConfig
from detnas.search import STATE_FILE as SEARCH_STATE_FILE
from detnas.search_stage import FitnessConfig, SearchStageConfig, run_search_stage
from detnas.space import get_space
from detnas.stages import finetune_job, pretrain_job, run_stage
from detnas.train import CHECKPOINT
from detnas.train_config import (
    ClassificationData,
    DetectionData,
    EvalConfig,
    FinetuneConfig,
    LoggingConfig,
    PretrainConfig,
    RetrainConfig,
    SamplingConfig,
    ScheduleConfig,
    SpaceConfig,
)

STATE_FILE = "pipeline.json"


class PretrainRecipe(StrictModel):
    train: ScheduleConfig
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    grow_iters: int = Field(0, ge=0)  # see ClassificationRecipe


class RetrainRecipe(StrictModel):
    pretrain: ScheduleConfig | None = None  # classification pretraining of each retrained network
    train: ScheduleConfig  # its detector training


class PipelineConfig(SpaceConfig):
    seed: int = 0
    classification: ClassificationData | None = None  # none: supernet without pretraining (DetNAS-scratch)
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
    eval: EvalConfig = EvalConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _search_needs_a_split(self):
        if self.detection.holdout.size < 1:
            raise ValueError("detection.holdout.size must be at least 1: the search is scored on images held "
                             "out of training (the paper: 5000 of COCO trainval35k)")
        return self

    def common(self) -> dict:
        return {"space": self.space, "width_mult": self.width_mult, "seed": self.seed, "logging": self.logging}

    def pretrain_config(self) -> PretrainConfig | None:
        if self.pretrain is None or self.classification is None:
            return None
        return PretrainConfig(**self.common(), data=self.classification, sampling=self.sampling, eval=self.eval,
                              **dict(self.pretrain))

    def finetune_config(self, init: Path | None) -> FinetuneConfig:
        return FinetuneConfig(**self.common(), init=init, data=self.detection, detector=self.detector,
                              train=self.finetune, sampling=self.sampling, eval=self.eval)

    def search_config(self, finetune_dir: Path, strategy: str) -> SearchStageConfig:
        return SearchStageConfig(
            supernet=finetune_dir, search=self.search.model_copy(update={"strategy": strategy}),
            fitness=self.fitness, progress=self.logging.progress,
        )

    def retrain_config(self) -> RetrainConfig:
        pretrain = None
        if self.retrain.pretrain is not None and self.classification is not None:
            # a standalone network has no choices to grow
            recipe = self.pretrain.model_dump(exclude={"grow_iters"}) if self.pretrain is not None else {}
            pretrain = {**recipe, "data": self.classification, "train": self.retrain.pretrain}
        data = self.detection.model_copy(update={"holdout": self.detection.holdout.model_copy(update={"size": 0})})
        return RetrainConfig(**self.common(), data=data, detector=self.detector, train=self.retrain.train,
                             eval=self.eval, pretrain=pretrain)


def resume_point(run_dir: Path) -> str | None:
    """Where an interrupted stage in ``run_dir`` will continue: its newest checkpoint's step, or the
    search's last finished generation; None when it has not started."""
    state = run_dir / SEARCH_STATE_FILE
    if state.exists():
        generation = json.loads(state.read_text()).get("generation")
        return f"after generation {generation} ({state})"
    checkpoints = sorted(run_dir.rglob(CHECKPOINT), key=lambda p: p.stat().st_mtime)
    if checkpoints:
        return f"at step {load_checkpoint(checkpoints[-1])['step']} ({checkpoints[-1]})"
    return None


def _last_write(folder: Path, since: float) -> float:
    """The time of the newest file in ``folder`` (``since`` when there is none)."""
    times = [p.stat().st_mtime for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return max([since, *times])


class _Stages:
    """Runs the stages in order, skipping finished ones (and saying so), and records how long each
    took, the time of an interrupted attempt included (up to its last written file)."""

    def __init__(self, out: Path):
        self.out = out
        self.path = out / STATE_FILE
        self.state = json.loads(self.path.read_text()) if self.path.exists() else {"seconds": {}}
        running = self.state.pop("running", None)  # a stage that was interrupted
        if running is not None:
            self._add(running["stage"], _last_write(Path(running["dir"]), running["started"]) - running["started"])

    def _add(self, name: str, seconds: float) -> None:
        self.state["seconds"][name] = self.state["seconds"].get(name, 0.0) + seconds
        self._save()

    def _save(self) -> None:
        if is_main():
            write_json_atomic(self.state, self.path, indent=2)

    def run(self, name: str, done: bool, run_dir: Path, fn) -> None:
        if broadcast_object(done):  # rank 0 decides, so that every worker runs the same stages
            if is_main():
                print(f"pipeline: {name} finished earlier, skipped", flush=True)
            return
        point = resume_point(run_dir) if is_main() else None
        if point is not None:
            print(f"pipeline: {name} resumes {point}", flush=True)
        self.state["running"] = {"stage": name, "dir": str(run_dir), "started": time.time()}
        self._save()
        start = time.perf_counter()
        fn()
        del self.state["running"]
        self._add(name, time.perf_counter() - start)


def run_pipeline(cfg: PipelineConfig, out: Path) -> Path:
    """Run (or continue) the pipeline in ``out``; returns the path of ``report.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages(out)
    space = get_space(cfg.space, cfg.width_mult)

    pre_cfg = cfg.pretrain_config()
    init = None
    if pre_cfg is not None:
        pre_dir = out / "pretrain"
        stages.run("pretrain", is_finished(pre_dir), pre_dir,
                   lambda: run_stage(pretrain_job(pre_cfg), pre_cfg, pre_dir, resume=True))
        init = pre_dir / CHECKPOINT

    ft_cfg = cfg.finetune_config(init)
    ft_dir = out / "finetune"
    stages.run("finetune", is_finished(ft_dir), ft_dir,
               lambda: run_stage(finetune_job(ft_cfg, ft_dir), ft_cfg, ft_dir, resume=True))

    strategies = ["evolution"] + (["random"] if cfg.random_search else [])
    for strategy in strategies:
        s_dir = out / ("search" if strategy == "evolution" else "random_search")
        s_cfg = cfg.search_config(ft_dir, strategy)
        stages.run(f"search ({strategy})", (s_dir / BEST_FILE).exists(), s_dir,
                   lambda: run_search_stage(s_cfg, s_dir, resume=True))

    rt_cfg = cfg.retrain_config()
    candidates = {"searched": str(out / "search" / BEST_FILE)}
    if cfg.random_search:
        candidates["random"] = str(out / "random_search" / BEST_FILE)
    if cfg.baseline:
        candidates["baseline"] = "0" * space.num_blocks
    for name, arch in candidates.items():
        r_dir = out / "retrain" / name
        stages.run(f"retrain ({name})", (r_dir / "result.json").exists(), r_dir,
                   lambda: run_retrain(arch, rt_cfg, r_dir, resume=True, pretrain=rt_cfg.pretrain is not None))
    if is_main():
        return write_report(out, stages.state["seconds"], cfg)
    return out / "report.md"
