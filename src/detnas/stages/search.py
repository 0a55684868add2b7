"""Stage 3: search the finetuned detection supernet for the path with the best mAP on the search split.

Every worker loads the supernet once and keeps it in memory; the recalibration images and the search
split are decoded once and kept too, as far as ``fitness.cache_gb`` allows (the rest stream through
DataLoader workers for every candidate, with the same results). Per candidate we extract the
standalone detector of the path (a cheap copy of the path's weights, never the whole supernet),
recalibrate its BN, and evaluate on the held-out split that finetuning wrote. The test split is
never read here.

With ``other_supernets`` the fitness is the mean over several supernets finetuned on the same search
split (``SupernetEnsemble``), and the search's fitness check records how their orders agree.
"""

from __future__ import annotations

import copy
import statistics
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
from detnas.model.space import arch_to_str, get_space, parse_arch
from detnas.model.supernet import ShuffleNetBackbone
from detnas.search.engine import SearchResult, run_search
from detnas.search.fitness_check import check_fitness, checked_count, write_check
from detnas.stages import preemption
from detnas.stages.run_guard import guarded_run
from detnas.stages.supernet_agreement import search_agreement
from detnas.stages.tracking import log_search


class SupernetEvaluator:
    """``evaluate(arch) -> {"map", "ap50", timings...}`` for one finetuned supernet run."""

    def __init__(self, finetune_dir: Path, fitness: FitnessConfig, workers: Workers = "auto",
                 amp: AmpSetting = "auto", budget_bytes: float | None = None, share: SupernetEvaluator | None = None):
        """``budget_bytes``: for decoded images (default ``fitness.cache_gb``); ``share``: the evaluator of
        another supernet of the same search split, whose decoded search split this one uses."""
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
        if share is not None:
            _check_same_split(self, share)
        self.device = init_distributed().device
        self.amp = resolve_amp(amp, self.device)
        detector = build_detector(ShuffleNetBackbone(self.space), len(self.classes), self.detector_cfg)
        detector.load_state_dict(state["model"])
        self.detector = detector.to(self.device).eval()
        det = self.detector_cfg
        if share is not None:
            self.search_set, self.gt = share.search_set, share.gt
        else:
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
        budget = fitness.cache_gb * 1e9 if budget_bytes is None else budget_bytes
        self.recalib = self._recalibration_batches(self.cfg.seed, budget)
        self.search_batches = share.search_batches if share is not None else CachedBatches(
            self.search_set, fitness.batch_size, collate, self.workers, budget - self.recalib.cached_bytes, self.device)

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


def _check_same_split(mine: SupernetEvaluator, first: SupernetEvaluator) -> None:
    """A supernet of an ensemble must be scored as the first one is: the same space, classes and search split."""
    why = ("search space" if mine.space != first.space else "classes" if mine.classes != first.classes else
           "search split" if file_sha256(mine.finetune_dir / SPLIT_FILE) != file_sha256(first.finetune_dir / SPLIT_FILE)
           else None)
    if why is not None:
        raise UserError(f"its {why} differs from the first supernet's ({first.finetune_dir}): the supernets of one "
                        "search must be finetuned on the same data, detection.holdout included", mine.finetune_dir)


class SupernetEnsemble:
    """The mean fitness of several finetuned supernets: ``map`` and ``ap50`` are their means, ``maps`` and
    ``ap50s`` each one's (in the search's history). Each supernet keeps its own detector and is recalibrated
    on its own seed's sample of training images, as it would be alone, so that the mean is the mean of the
    single supernets' fitness; the search split, the same images for all, is decoded once. The decoded-image
    budget (``fitness.cache_gb``) is shared out equally."""

    def __init__(self, finetune_dirs: list[Path], fitness: FitnessConfig, workers: Workers = "auto",
                 amp: AmpSetting = "auto"):
        share = fitness.cache_gb * 1e9 / len(finetune_dirs)
        first = SupernetEvaluator(finetune_dirs[0], fitness, workers, amp, share)
        self.members = [first, *(SupernetEvaluator(d, fitness, workers, amp, share, first) for d in finetune_dirs[1:])]
        self.space, self.cfg = first.space, first.cfg

    def with_recalib_seed(self, seed: int) -> SupernetEnsemble:
        """Each supernet recalibrated on another sample (the k-th with ``seed + k``: with the pipeline's seeds,
        each one's own seed + 1, as it would be alone)."""
        other = copy.copy(self)
        other.members = [m.with_recalib_seed(seed + k) for k, m in enumerate(self.members)]
        return other

    def identity(self) -> dict:
        """The first supernet's identity and the other supernets' weights (the rest is checked to be the same)."""
        first, *others = self.members
        return {**first.identity(),
                "other_supernets": [{"checkpoint_sha256": file_sha256(m.finetune_dir / CHECKPOINT)} for m in others]}

    def __call__(self, arch) -> dict:
        each = [m(arch) for m in self.members]
        seconds = {k: sum(r[k] for r in each) for k in each[0] if k.startswith("seconds_")}
        maps, ap50s = [r["map"] for r in each], [r["ap50"] for r in each]
        return {"map": statistics.fmean(maps), "ap50": statistics.fmean(ap50s), "maps": maps, "ap50s": ap50s,
                **seconds}


def fitness_evaluator(cfg: SearchStageConfig) -> SupernetEvaluator | SupernetEnsemble:
    """The search's fitness: one supernet's (exactly as before ensembles, so its searches still resume),
    or with ``other_supernets`` the ensemble's."""
    if not cfg.other_supernets:
        return SupernetEvaluator(cfg.supernet, cfg.fitness, cfg.workers, cfg.amp)
    return SupernetEnsemble([cfg.supernet, *cfg.other_supernets], cfg.fitness, cfg.workers, cfg.amp)


def run_search_stage(cfg: SearchStageConfig, out_dir: Path, resume: bool) -> SearchResult:
    """The search in ``out_dir``; a stop signal stops it after the current round of candidates."""
    with guarded_run(out_dir):
        return _search(cfg, Path(out_dir), resume)


def _search(cfg: SearchStageConfig, out_dir: Path, resume: bool) -> SearchResult:
    evaluator = fitness_evaluator(cfg)

    def fitness_check(history: list[dict]) -> None:
        if checked_count(out_dir) == len(history):  # a finished search resumed: already checked
            return
        again = evaluator.with_recalib_seed(evaluator.cfg.seed + 1)
        check = check_fitness(history, lambda arch: again(parse_arch(arch, evaluator.space))["map"])
        if cfg.other_supernets:  # a by-product of the ensemble: do its supernets order the candidates alike?
            check["supernets"] = search_agreement(history)
        # the ShuffleNetV2 path's fitness beside the winner's: how far the supernet puts the baseline behind
        baseline = evaluator.space.baseline
        known = next((r["map"] for r in history if r["arch"] == arch_to_str(baseline)), None)
        check["baseline"] = {"arch": arch_to_str(baseline),
                             "map": known if known is not None else evaluator(baseline)["map"]}
        write_check(out_dir, check)
        log_search(out_dir, history)
        for warning in check["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)

    return run_search(evaluator.space, cfg.search, evaluator, out_dir, resume=resume, progress=cfg.progress,
                      evaluator_identity=evaluator.identity(), before_finish=fitness_check,
                      at_safe_point=lambda saved: preemption.stop_if_requested(f"search in {out_dir}: {saved}"))
