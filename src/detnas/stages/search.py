"""Stage 3: search the finetuned detection supernet for the path with the best mAP on the search split.

Every worker loads the supernet once and keeps it in memory; the recalibration images and the search
split are decoded once and kept too, as far as ``fitness.cache_gb`` allows (the rest stream through
DataLoader workers for every candidate, with the same results). Per candidate we extract the
standalone detector of the path (a cheap copy of the path's weights, never the whole supernet),
recalibrate its BN, and evaluate on the held-out split that finetuning wrote. The test split is
never read here.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

from detnas.checkpoint import load_checkpoint
from detnas.config.runs import CHECKPOINT, FINETUNE, SPLIT_FILE
from detnas.config.schema import FinetuneConfig, FitnessConfig, SearchStageConfig
from detnas.data.coco import load_coco
from detnas.data.detection import collate
from detnas.data.loading import CachedBatches, Workers, data_workers
from detnas.data.sources import image_dir_of, load_detection
from detnas.data.transforms import DetectionTransform
from detnas.digest import file_sha256
from detnas.distributed import init_distributed
from detnas.errors import UserError
from detnas.model.amp import AmpSetting, autocast, resolve_amp
from detnas.model.detector import DetectorConfig, build_detector
from detnas.model.evaluate import evaluate_detection_path, recalibration_batches
from detnas.model.space import get_space, parse_arch
from detnas.model.supernet import ShuffleNetBackbone
from detnas.search.engine import SearchResult, run_search
from detnas.search.fitness_check import check_fitness, checked_count, write_check
from detnas.stages import preemption
from detnas.stages.run_guard import guarded_run
from detnas.stages.tracking import log_search


class SupernetEvaluator:
    """``evaluate(arch) -> {"map", "ap50", timings...}`` for one finetuned supernet run."""

    def __init__(self, finetune_dir: Path, fitness: FitnessConfig, workers: Workers = "auto",
                 amp: AmpSetting = "auto"):
        finetune_dir = self.finetune_dir = Path(finetune_dir)
        state = load_checkpoint(finetune_dir / CHECKPOINT, FINETUNE)
        if state["step"] < state["config"]["train"]["iters"]:
            raise UserError("the supernet's finetuning has not finished (resume it first)", finetune_dir / CHECKPOINT)
        self.cfg = FinetuneConfig.model_validate(state["config"])
        split_file = finetune_dir / SPLIT_FILE
        if not split_file.exists():
            raise UserError("no search split: finetune with data.holdout.size > 0 so that one is held out",
                            split_file)
        self.space = get_space(self.cfg.space, self.cfg.width_mult)
        self.detector_cfg: DetectorConfig = self.cfg.detector
        self.classes = state["classes"]
        self.device = init_distributed().device
        self.amp = resolve_amp(amp, self.device)
        detector = build_detector(ShuffleNetBackbone(self.space), len(self.classes), self.detector_cfg)
        detector.load_state_dict(state["model"])
        self.detector = detector.to(self.device).eval()
        det = self.detector_cfg
        self.search_set = load_coco(split_file, image_dir_of(self.cfg.data.train)).with_transform(
            DetectionTransform(det.min_size, det.max_size, flip=False)
        )
        if self.search_set.categories != self.classes:
            raise UserError("search split categories differ from the supernet's classes", split_file)
        self.gt = self.search_set.to_coco()
        # recalibrate on training images (never the search split) with the augmentation finetuning used
        train = load_detection(self.cfg.data.train,
                               DetectionTransform(det.min_size, det.max_size, flip=self.cfg.data.flip), self.cfg.seed)
        held = set(self.search_set.image_ids)
        train = train.subset([i for i, image_id in enumerate(train.image_ids) if image_id not in held])
        self.recalib_train = train
        self.fitness = fitness
        self.workers = data_workers(workers)
        budget = fitness.cache_gb * 1e9
        self.recalib = self._recalibration_batches(self.cfg.seed, budget)
        self.search_batches = CachedBatches(self.search_set, fitness.batch_size, collate, self.workers,
                                            budget - self.recalib.cached_bytes, self.device)

    def _recalibration_batches(self, seed: int, budget: float) -> CachedBatches:
        return recalibration_batches(self.recalib_train, self.fitness.recalib_images, self.fitness.batch_size,
                                     collate, seed, self.workers, budget, self.device)

    def with_recalib_seed(self, seed: int) -> SupernetEvaluator:
        """The same evaluator with BN statistics recalibrated on another random sample of training
        images: the spread between the two measures the fitness's own noise. It streams them: the
        budget is spent on this evaluator's cache."""
        other = copy.copy(self)
        other.recalib = self._recalibration_batches(seed, 0)
        return other

    def identity(self) -> dict:
        """What a candidate's fitness depends on: the supernet's weights, the search split and the
        fitness settings (not the folder's path, so a moved run can still be resumed)."""
        found = {"checkpoint_sha256": file_sha256(self.finetune_dir / CHECKPOINT),
                 "search_split_sha256": file_sha256(self.finetune_dir / SPLIT_FILE),
                 "fitness": self.fitness.model_dump(mode="json", exclude={"cache_gb"})}
        # float32 adds no key, so that searches started before mixed precision existed still resume
        return found if self.amp == "off" else {**found, "amp": self.amp}

    def __call__(self, arch) -> dict:
        with autocast(self.amp, self.device):
            m = evaluate_detection_path(
                self.detector, arch, len(self.classes), self.detector_cfg, self.recalib, self.search_batches, self.gt,
                self.fitness.recalib_mode,
            )
        return {"map": m["AP"], "ap50": m["AP50"], **{k: v for k, v in m.items() if k.startswith("seconds_")}}


def run_search_stage(cfg: SearchStageConfig, out_dir: Path, resume: bool) -> SearchResult:
    """The search in ``out_dir``; a stop signal stops it after the current round of candidates."""
    with guarded_run(out_dir):
        return _search(cfg, Path(out_dir), resume)


def _search(cfg: SearchStageConfig, out_dir: Path, resume: bool) -> SearchResult:
    evaluator = SupernetEvaluator(cfg.supernet, cfg.fitness, cfg.workers, cfg.amp)

    def fitness_check(history: list[dict]) -> None:
        if checked_count(out_dir) == len(history):  # a finished search resumed: already checked
            return
        again = evaluator.with_recalib_seed(evaluator.cfg.seed + 1)
        check = check_fitness(history, lambda arch: again(parse_arch(arch, evaluator.space))["map"])
        write_check(out_dir, check)
        log_search(out_dir, history)
        for warning in check["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)

    return run_search(evaluator.space, cfg.search, evaluator, out_dir, resume=resume, progress=cfg.progress,
                      evaluator_identity=evaluator.identity(), before_finish=fitness_check,
                      at_safe_point=lambda saved: preemption.stop_if_requested(f"search in {out_dir}: {saved}"))
