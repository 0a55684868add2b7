"""``detnas pipeline --dry-run``: what a pipeline run checks before its first step, and its plan; it
writes nothing.

The data are read with the stages' own readers (so a dry run refuses what the run would refuse), the
search budget and the path-sampling range are checked against the space, and the plan says, stage by
stage, how many iterations and images it takes, what the detector costs at its input size, about how
much memory a worker needs, and what the run folder already holds (finished, or where it resumes).
Models are built on PyTorch's "meta" device: shapes without storage, so that even the Large-space
supernet at 800x1333 costs no memory or time here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from detnas.config.runs import FINETUNE, PRETRAIN, RANK_CHECK, is_finished, resume_point
from detnas.config.schema import PipelineConfig
from detnas.data.classification import ImageFolderDataset
from detnas.data.holdout import carve_holdout
from detnas.data.sources import load_detection, load_training_set
from detnas.model.detector import build_detector, set_path
from detnas.model.detector_flops import detector_macs
from detnas.model.flops import cost_table, count_params, fmt_millions, sample_arch
from detnas.model.space import SearchSpace, arch_to_str, get_space, to_arch
from detnas.model.supernet import ShuffleNetBackbone
from detnas.search.constraints import check_constraints
from detnas.stages.pipeline import planned_stages

GB = 2**30


def dry_run(cfg: PipelineConfig, out: Path, workers: int = 1) -> list[str]:
    """Check ``cfg`` and its data as the run would, and describe the run in ``out`` with ``workers``
    workers, as lines of text. Raises the run's own one-line errors."""
    space = get_space(cfg.space, cfg.width_mult)
    lines = [f"config: {space.describe()} space, {cfg.detector.kind} detector, seed {cfg.seed}, {workers} worker(s)"]
    data_lines, classes = _check_data(cfg)
    lines += data_lines
    lines += _check_budget(space, cfg)
    lines += ["", f"plan (run folder {out}):"]
    for name, folder in planned_stages(cfg, out):
        lines.append(f"  {name:<28} {_state(folder):<20} {_work(cfg, name, workers)}")
    lines += ["", *_detector_cost(space, cfg, classes["detection"]), *_memory(space, cfg, classes)]
    lines.append("dry run: nothing was written")
    return lines


def _check_data(cfg: PipelineConfig) -> tuple[list[str], dict[str, int]]:
    """Read every dataset of the run as its stage will; (lines, number of classes of each kind of data)."""
    lines, classes = [], {"classification": 1000}
    needs_classification = cfg.pretrain is not None or cfg.retrain.pretrain is not None
    if cfg.classification is not None and needs_classification:
        train = ImageFolderDataset(cfg.classification.train)
        val = ImageFolderDataset(cfg.classification.val)
        classes["classification"] = len(train.classes)
        lines.append(f"classification: {len(train):,} training images in {len(train.classes)} classes "
                     f"({cfg.classification.train}), {len(val):,} validation images ({cfg.classification.val})")
    det = cfg.detection
    train = load_training_set(det.train)
    where = det.train.annotations or det.train.root
    carve_holdout(len(train), det.holdout.size, det.holdout.seed, where)  # refuses a split as large as train
    classes["detection"] = len(train.categories)
    lines.append(f"detection train: {len(train):,} images, {len(train.categories)} classes ({where}); "
                 f"search split: {det.holdout.size:,} of them held out")
    if det.test is not None:
        test = load_detection(det.test)
        lines.append(f"detection test: {len(test):,} images ({det.test.annotations or det.test.root})")
    else:
        lines.append("detection test: none (retraining needs detection.test)")
    return lines, classes


def _check_budget(space: SearchSpace, cfg: PipelineConfig) -> list[str]:
    """The search constraints and the training paths' FLOPs range, each met by some architecture."""
    check_constraints(space, cfg.search)  # a one-line error when none meets them
    lo, hi = cost_table(space).body_range
    budget = "none" if cfg.search.max_flops is None else fmt_millions(cfg.search.max_flops)
    lines = [f"search budget: body FLOPs <= {budget} (the space spans {fmt_millions(lo)}-{fmt_millions(hi)}): "
             "feasible"]
    s = cfg.sampling
    if s.min_flops is not None or s.max_flops is not None:
        sample_arch(space, np.random.default_rng(cfg.seed), s.min_flops, s.max_flops)  # ArchError if none
        lines.append("training paths' FLOPs range: feasible")
    if cfg.eval.archs:
        lines.append(f"eval.archs: {len(cfg.eval.archs)} architecture(s), all of the space")
    return lines


def _work(cfg: PipelineConfig, name: str, workers: int) -> str:
    """What stage ``name`` computes: iterations and images seen, or candidates evaluated."""

    def training(schedule) -> str:
        batch = schedule.batch_size * workers
        return f"{schedule.iters:,} its x {batch} = {schedule.iters * batch:,} images"

    if name == PRETRAIN:
        return "pretrain " + training(cfg.pretrain.train)
    if name == FINETUNE:
        return "finetune " + training(cfg.finetune)
    if name.startswith("search"):
        n = cfg.search.budget
        return (f"{n:,} candidates x ({cfg.fitness.recalib_images:,} recalibration + "
                f"{cfg.detection.holdout.size:,} search-split images)")
    if name == RANK_CHECK:
        rc = cfg.rank_check
        return f"{rc.archs} architectures scored and retrained alone x {rc.seeds} seeds"
    parts = []
    if cfg.retrain.pretrain is not None and cfg.classification is not None:
        parts.append("pretrain " + training(cfg.retrain.pretrain))
    start = "from the supernet's weights" if cfg.retrain.inherit else "detector"
    return ", ".join([*parts, f"{start} " + training(cfg.retrain.train)])


def _state(folder: Path) -> str:
    if is_finished(folder):
        return "finished: skipped"
    point = resume_point(folder)
    return "to run" if point is None else f"resumes {point}"


def _meta_detector(space: SearchSpace, arch, cfg: PipelineConfig, n_classes: int) -> nn.Module:
    """The detector around ``arch`` (None: the supernet), built on the meta device."""
    with torch.device("meta"):
        return build_detector(ShuffleNetBackbone(space, arch), n_classes, cfg.detector)


def _detector_cost(space: SearchSpace, cfg: PipelineConfig, n_classes: int) -> list[str]:
    size = (cfg.detector.min_size, cfg.detector.max_size)
    baseline = (0,) * space.num_blocks
    macs = detector_macs(_meta_detector(space, baseline, cfg, n_classes), size)
    parts = ", ".join(f"{k} {fmt_millions(v)}" for k, v in macs.items() if k != "total")
    return [f"detector FLOPs of the ShuffleNetV2 baseline at {size[0]}x{size[1]} (the largest input): "
            f"{fmt_millions(macs['total'])} ({parts})"]


def _activation_bytes(model: nn.Module, forward) -> int:
    """Bytes of the outputs of every leaf module in ``forward()``: about what backward keeps."""
    total = 0

    def hook(_m, _inp, out) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        forward()
    finally:
        for h in handles:
            h.remove()
    return total


def _memory(space: SearchSpace, cfg: PipelineConfig, classes: dict[str, int]) -> list[str]:
    """Per-worker float32 memory of the two supernet trainings on their heaviest path: weights, gradients
    and momentum of the whole supernet, and the activations of one batch."""
    heaviest = to_arch(cost_table(space).macs.argmax(1))
    lines = [f"estimated memory per worker (float32, heaviest path {arch_to_str(heaviest)}; weights, gradients, "
             "momentum and activations; workspace and the CUDA context come on top):"]
    if cfg.pretrain is not None and cfg.classification is not None:
        size, batch = cfg.classification.image_size, cfg.pretrain.train.batch_size
        with torch.device("meta"):
            net = ShuffleNetBackbone(space, num_classes=classes["classification"])
            x = torch.zeros(batch, 3, size, size)
        act = _activation_bytes(net, lambda: net.classify(x, heaviest))
        lines.append(f"  pretrain: {(3 * 4 * count_params(net) + act) / GB:.1f} GB "
                     f"({batch} images of {size}x{size})")
    det = _meta_detector(space, None, cfg, classes["detection"]).train()
    set_path(det, heaviest)
    batch, (h, w) = cfg.finetune.batch_size, (cfg.detector.min_size, cfg.detector.max_size)
    with torch.device("meta"):
        x = torch.zeros(batch, 3, h, w)
    act = _activation_bytes(det.backbone, lambda: det.backbone(x))
    lines.append(f"  finetune: {(3 * 4 * count_params(det) + act) / GB:.1f} GB ({batch} images of {h}x{w}; "
                 "backbone and FPN activations, the detector heads' on top)")
    return lines
