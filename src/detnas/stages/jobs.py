"""The two supernet training stages as ``train.Job``s: classification pretraining, detection finetuning."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

from detnas.artifacts.init_weights import finetuned_supernet
from detnas.artifacts.init_weights import load_init as load_init_weights
from detnas.checkpoint import load_checkpoint
from detnas.config.runs import FINETUNE, PRETRAIN, RETRAIN, RETRAIN_PRETRAIN, SPLIT_FILE
from detnas.config.schema import EvalConfig, FinetuneConfig, PretrainConfig
from detnas.data.classification import ImageFolderDataset, classification_transform
from detnas.data.detection import collate
from detnas.data.holdout import carve_holdout
from detnas.data.loading import CachedBatches, data_workers
from detnas.data.sources import load_detection, load_training_set, source_path
from detnas.data.transforms import DetectionTransform
from detnas.distributed import is_main, map_in_rounds, on_main
from detnas.errors import UserError
from detnas.model.detector import build_detector, set_path
from detnas.model.evaluate import (
    classification_top1,
    detection_metrics,
    evaluate_classification_path,
    evaluate_detection_path,
    recalibration_batches,
)
from detnas.model.growth import GROW_IMAGES, grow_choices
from detnas.model.space import Arch, SearchSpace, arch_to_str, get_space, parse_arch
from detnas.model.supernet import ShuffleNetBackbone, path_state
from detnas.stages.tracking import LossParts
from detnas.stages.train import Job, path_for_step, run_training


def space_meta(cfg) -> dict:
    return {"space": cfg.space, "width_mult": cfg.width_mult}


def each_path(archs: list[Arch], evaluate) -> dict:
    """``{arch string: evaluate(arch)}`` with the paths shared out over the workers (each evaluates its
    own on a standalone copy: no collective inside), gathered on every worker. The final evaluation
    of a supernet is thus not repeated on every worker; a standalone network's runs on rank 0 alone."""
    results = [r for round_results in map_in_rounds(archs, evaluate) for r in round_results]
    return {arch_to_str(a): r for a, r in zip(archs, results)}


def eval_archs(space: SearchSpace, cfg: EvalConfig, seed: int, sampling) -> list[Arch]:
    """The fixed paths evaluated at the end of a stage: the configured ones, or all-0 (the ShuffleNetV2
    baseline), all-3 (all Xception) and one sampled path."""
    if cfg.archs:
        return [parse_arch(a, space) for a in cfg.archs]
    return [space.baseline, (3,) * space.num_blocks, path_for_step(space, seed + 1, 0, sampling)]


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Build models under this: their initial weights become a function of the config's seed (the
    same in every run and on every worker), and the caller's global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def pretrain_job(cfg: PretrainConfig, arch: Arch | None = None) -> Job:
    """Supernet pretraining, or with ``arch`` the classification pretraining of a standalone network."""
    space = get_space(cfg.space, cfg.width_mult)
    size = cfg.data.image_size
    train_set = ImageFolderDataset(cfg.data.train, classification_transform(size, True, cfg.data.flip), cfg.seed)
    val_set = ImageFolderDataset(cfg.data.val, classification_transform(size, False))
    with seeded_init(cfg.seed):
        model = ShuffleNetBackbone(space, arch, num_classes=len(train_set.classes), dropout=cfg.dropout)
    if cfg.init is not None:
        load_init(model, cfg.init)

    def loss(model, batch, arch, device):
        x, y = batch
        logits = model.classify(x.to(device, non_blocking=True), arch)
        return F.cross_entropy(logits.float(), y.to(device), label_smoothing=cfg.label_smoothing), len(y)

    def final_eval(model) -> dict:
        loading = eval_loading(cfg, model)
        if arch is not None:  # a standalone network has its own BN statistics: no recalibration
            def standalone() -> dict:
                val = CachedBatches(val_set, cfg.eval.batch_size * 4, None, loading["workers"], 0, loading["device"])
                return {"top1": {arch_to_str(arch): classification_top1(model, val)}}

            return on_main(standalone)

        @cache
        def batches() -> tuple:  # decoded by the workers that evaluate a path, once each
            recalib = recalibration_batches(train_set, cfg.eval.recalib_images, cfg.eval.batch_size, seed=cfg.seed,
                                            **loading)
            rest = {**loading, "budget_bytes": loading["budget_bytes"] - recalib.cached_bytes}
            return recalib, CachedBatches(val_set, cfg.eval.batch_size * 4, None, **rest)

        top1 = each_path(eval_archs(space, cfg.eval, cfg.seed, cfg.sampling),
                         lambda a: evaluate_classification_path(model, a, *batches(), cfg.eval.recalib_mode))
        return {"top1": top1, "chance": 1 / len(train_set.classes)}

    grow = None
    if arch is None and cfg.grow_iters:
        def grow_from_training_images(model, _batch) -> None:
            images = recalibration_batches(train_set, GROW_IMAGES, cfg.eval.batch_size, seed=cfg.seed)
            grow_choices(model, torch.cat(list(images)).to(next(model.parameters()).device))

        grow = (cfg.grow_iters, grow_from_training_images)
    return Job(
        PRETRAIN if arch is None else RETRAIN_PRETRAIN, model, train_set, None, loss,
        arch_schedule(space, cfg, arch, cfg.grow_iters), final_eval,
        {"space": space_meta(cfg), "arch": arch and arch_to_str(arch), "classes": train_set.classes,
         "config": cfg.model_dump(mode="json")}, config_model=type(cfg),
        grow=grow,
    )


def arch_schedule(space: SearchSpace, cfg, arch: Arch | None, grow_iters: int = 0):
    """The path of each step: sampled for a supernet (the ShuffleNetV2 path for the first ``grow_iters``
    steps, see model/growth.py), always ``arch`` for a standalone network."""
    if arch is not None:
        return lambda step: arch
    return lambda step: space.baseline if step < grow_iters else path_for_step(space, cfg.seed, step, cfg.sampling)


def load_init(model: ShuffleNetBackbone, path: Path) -> None:
    """Initialise ``model`` from ``init:`` (see ``artifacts/init_weights.py``); the main process prints
    what the user should know about those weights, if anything."""
    note = load_init_weights(model, path)
    if note and is_main():
        print(f"note: init {path}: {note}", file=sys.stderr)


def load_path_weights(detector: torch.nn.Module, ckpt_path: Path, arch: Arch | None, space: dict) -> None:
    """Initialise the standalone ``detector`` of ``arch`` with its path's weights in a finetuned supernet
    detector: backbone blocks, stem, FPN and heads (``arch`` None: a supernet ``detector``, all of them).
    Its BN statistics are not recalibrated: train-mode BN normalises with batch statistics, and
    finetuning replaces the running averages within tens of steps (momentum 0.1)."""
    ckpt = load_checkpoint(ckpt_path, FINETUNE, space)
    try:
        detector.load_state_dict(ckpt["model"] if arch is None else
                                 path_state(ckpt["model"], arch, prefix="backbone.body."))
    except RuntimeError as e:  # another detector shape or number of classes
        raise UserError(f"the supernet's detector does not fit this config: {' '.join(str(e).split())[:200]}",
                        ckpt_path) from None


def finetune_job(cfg: FinetuneConfig, out_dir: Path, arch: Arch | None = None, inherit: Path | None = None) -> Job:
    """Path-wise detection finetuning of the supernet; the search split is held out, and saved into
    ``out_dir`` by ``run_training`` (which first checks that the folder holds no other run).
    With ``arch``: the detection training of a standalone network (retraining), starting from the
    weights of its path in the finetuned supernet checkpoint ``inherit`` when given."""
    space = get_space(cfg.space, cfg.width_mult)
    det = cfg.detector
    full = load_training_set(cfg.data.train, DetectionTransform(det.min_size, det.max_size, cfg.data.flip),
                             cfg.seed)
    train_set, holdout = full, None
    if cfg.data.holdout.size:
        keep, held = carve_holdout(len(full), cfg.data.holdout.size, cfg.data.holdout.seed,
                                   source_path(cfg.data.train))
        train_set, holdout = full.subset(keep), full.subset(held)
    num_classes = len(full.categories)
    with seeded_init(cfg.seed):
        body = ShuffleNetBackbone(space, arch)
        model = build_detector(body, num_classes, det)
    if cfg.init is not None and arch is None and finetuned_supernet(cfg.init):  # the detector too: few-shot
        inherit = cfg.init
    elif cfg.init is not None:
        load_init(body, cfg.init)
    if inherit is not None:
        load_path_weights(model, inherit, arch, space_meta(cfg))

    parts = LossParts()

    def loss(model, batch, arch, device):
        images, targets = batch
        set_path(model, arch)
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        losses = model([im.to(device, non_blocking=True) for im in images], targets)
        parts.add(losses)
        return sum(losses.values()), len(images)

    def final_eval(model) -> dict:
        eval_set = holdout or (load_detection(cfg.data.test) if cfg.data.test else None)
        if eval_set is None:
            return {}
        eval_set = eval_set.with_transform(DetectionTransform(det.min_size, det.max_size, flip=False))
        gt = eval_set.to_coco()
        loading = eval_loading(cfg, model)
        split = "search" if holdout is not None else "test"
        if arch is not None:  # a standalone network has its own BN statistics: no recalibration
            return on_main(lambda: {"split": split, "metrics": detection_metrics(
                model, eval_set, cfg.eval.batch_size, loading["workers"], gt, cfg.eval.metric)})

        @cache
        def batches() -> tuple:  # decoded by the workers that evaluate a path, once each
            recalib = recalibration_batches(train_set, cfg.eval.recalib_images, cfg.eval.batch_size, collate,
                                            cfg.seed, **loading)
            rest = {**loading, "budget_bytes": loading["budget_bytes"] - recalib.cached_bytes}
            return recalib, CachedBatches(eval_set, cfg.eval.batch_size, collate, **rest)

        results = each_path(eval_archs(space, cfg.eval, cfg.seed, cfg.sampling),
                            lambda a: evaluate_detection_path(model, a, num_classes, det, *batches(), gt,
                                                              cfg.eval.recalib_mode, cfg.eval.metric))
        return {"split": split, "map": results}

    return Job(
        FINETUNE if arch is None else RETRAIN, model, train_set, collate, loss,
        arch_schedule(space, cfg, arch), final_eval,
        {"space": space_meta(cfg), "arch": arch and arch_to_str(arch), "classes": full.categories,
         "config": cfg.model_dump(mode="json")}, config_model=type(cfg),
        # written by the training loop once it knows that ``out_dir`` holds no other run
        write_files=None if holdout is None else lambda out: holdout.save_coco(Path(out) / SPLIT_FILE),
        loss_parts=parts,
    )


def eval_loading(cfg, model: torch.nn.Module) -> dict:
    """How the end-of-training evaluation loads its images: the stage's data workers, its cache
    budget, and the model's device (pinned memory on CUDA)."""
    return {"workers": data_workers(cfg.data.workers), "budget_bytes": cfg.eval.cache_gb * 1e9,
            "device": next(model.parameters()).device}


def run_stage(job: Job, cfg, run_dir: Path, resume: bool) -> dict:
    """Run a job with the schedule, seed, data workers, mixed precision and logging of its stage config."""
    return run_training(job, cfg.train, cfg.seed, run_dir, resume, workers=cfg.data.workers,
                        log_every=cfg.logging.log_every, checkpoint_every=cfg.logging.checkpoint_every,
                        progress=cfg.logging.progress, amp=cfg.amp)
