"""The pieces of a dry run: each reads or checks one part of a config as the run would (and refuses
what it would refuse), or describes one part of the run, as lines of text.

Models are built on PyTorch's "meta" device: shapes without storage, so that even the Large-space
supernet at 800x1333 costs no memory or time here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from detnas.config.runs import is_finished, resume_point
from detnas.config.schema import ClassificationData, DetectionData, SamplingConfig, ScheduleConfig, SearchConfig
from detnas.data.classification import ImageFolderDataset
from detnas.data.holdout import carve_holdout
from detnas.data.sources import load_detection, load_training_set, source_path
from detnas.model.detector import build_detector, set_path
from detnas.model.detector_config import DetectorConfig
from detnas.model.detector_flops import detector_macs
from detnas.model.flops import cost_table, count_params, fmt_millions, sample_arch
from detnas.model.space import Arch, SearchSpace, arch_to_str, to_arch
from detnas.model.supernet import ShuffleNetBackbone
from detnas.search.constraints import check_constraints
from detnas.stages.lanes import lanes_for, threads_per_lane

GB = 2**30


def classification_data(data: ClassificationData) -> tuple[list[str], int]:
    """Read the classification sets as pretraining will: (lines, number of classes)."""
    train, val = ImageFolderDataset(data.train), ImageFolderDataset(data.val)
    return [f"classification: {len(train):,} training images in {len(train.classes)} classes ({data.train}), "
            f"{len(val):,} validation images ({data.val})"], len(train.classes)


def detection_data(det: DetectionData, test_needed: str | None = None) -> tuple[list[str], int]:
    """Read the detection sets as training will, carve the search split: (lines, number of classes).
    ``test_needed``: what needs ``det.test`` (said when it is missing)."""
    train = load_training_set(det.train)
    where = source_path(det.train)
    carve_holdout(len(train), det.holdout.size, det.holdout.seed, where)  # refuses a split as large as train
    sets = f"{len(det.train)} sets read as one, the first " if isinstance(det.train, list) else ""
    lines = [f"detection train: {len(train):,} images, {len(train.categories)} classes ({sets}{where}); "
             f"search split: {det.holdout.size:,} of them held out"]
    if det.test is not None:
        test = load_detection(det.test)
        lines.append(f"detection test: {len(test):,} images ({source_path(det.test)})")
    elif test_needed:
        lines.append(f"detection test: none ({test_needed} needs detection.test)")
    return lines, len(train.categories)


def budget(space: SearchSpace, search: SearchConfig) -> list[str]:
    """The search constraints, met by some architecture (a one-line error when none meets them)."""
    check_constraints(space, search)
    lo, hi = cost_table(space).body_range
    limit = "none" if search.max_flops is None else fmt_millions(search.max_flops)
    return [f"search budget: body FLOPs <= {limit} (the space spans {fmt_millions(lo)}-{fmt_millions(hi)}): "
            "feasible"]


def sampling(space: SearchSpace, s: SamplingConfig, seed: int) -> list[str]:
    """The training paths' FLOPs range and first choices, met by some architecture (an ArchError when none)."""
    if s.min_flops is None and s.max_flops is None and not s.prefix:
        return []
    sample_arch(space, np.random.default_rng(seed), s.min_flops, s.max_flops, prefix=tuple(s.prefix))
    prefix = f", first choices {''.join(map(str, s.prefix))} (a few-shot part of the space)" if s.prefix else ""
    return [f"training paths' FLOPs range{prefix}: feasible"]


def eval_archs(archs: list[str]) -> list[str]:
    return [f"eval.archs: {len(archs)} architecture(s), all of the space"] if archs else []


def training(schedule: ScheduleConfig, workers: int) -> str:
    """Iterations and images a schedule trains on with ``workers`` workers."""
    batch = schedule.batch_size * workers
    return f"{schedule.iters:,} its x {batch} = {schedule.iters * batch:,} images"


def state(folder: Path) -> str:
    """What a run folder holds: finished, where an interrupted run resumes, or nothing yet."""
    if is_finished(folder):
        return "finished: skipped"
    point = resume_point(folder)
    return "to run" if point is None else f"resumes {point}"


def _meta_detector(space: SearchSpace, arch: Arch | None, detector: DetectorConfig, n_classes: int) -> nn.Module:
    """The detector around ``arch`` (None: the supernet), built on the meta device."""
    with torch.device("meta"):
        return build_detector(ShuffleNetBackbone(space, arch), n_classes, detector)


def detector_cost(space: SearchSpace, detector: DetectorConfig, n_classes: int, arch: Arch | None = None) -> list[str]:
    """The detector's FLOPs at its largest input, around ``arch`` (default: the ShuffleNetV2 baseline)."""
    size = (detector.min_size, detector.max_size)
    name = "the ShuffleNetV2 baseline" if arch is None else arch_to_str(arch)
    arch = arch or space.baseline
    macs = detector_macs(_meta_detector(space, arch, detector, n_classes), size)
    parts = ", ".join(f"{k} {fmt_millions(v)}" for k, v in macs.items() if k != "total")
    return [f"detector FLOPs of {name} at {size[0]}x{size[1]} (the largest input): "
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


def memory_header(space: SearchSpace) -> str:
    return (f"estimated memory per worker (float32, heaviest path {arch_to_str(heaviest_path(space))}; weights, "
            "gradients, momentum and activations; workspace and the CUDA context come on top):")


def heaviest_path(space: SearchSpace) -> Arch:
    return to_arch(cost_table(space).macs.argmax(1))


def pretrain_memory(space: SearchSpace, image_size: int, batch: int, n_classes: int, name: str = "pretrain") -> str:
    """Per-worker float32 memory of a pretraining step of the supernet on its heaviest path."""
    with torch.device("meta"):
        net = ShuffleNetBackbone(space, num_classes=n_classes)
        x = torch.zeros(batch, 3, image_size, image_size)
    act = _activation_bytes(net, lambda: net.classify(x, heaviest_path(space)))
    return f"  {name}: {(3 * 4 * count_params(net) + act) / GB:.1f} GB ({batch} images of {image_size}x{image_size})"


def finetune_memory(space: SearchSpace, detector: DetectorConfig, batch: int, n_classes: int,
                    name: str = "finetune") -> str:
    """Per-worker float32 memory of a detection step of the supernet on its heaviest path."""
    det = _meta_detector(space, None, detector, n_classes).train()
    set_path(det, heaviest_path(space))
    h, w = detector.min_size, detector.max_size
    with torch.device("meta"):
        x = torch.zeros(batch, 3, h, w)
    act = _activation_bytes(det.backbone, lambda: det.backbone(x))
    return (f"  {name}: {(3 * 4 * count_params(det) + act) / GB:.1f} GB ({batch} images of {h}x{w}; "
            "backbone and FPN activations, the detector heads' on top)")


def lanes(setting, workers: int) -> list[str]:
    """How many of the pipeline's independent stages run at once (``stages/lanes.py``)."""
    n = lanes_for(setting, workers, "cuda" if torch.cuda.is_available() else "cpu")
    if n == 1:
        return []
    return [f"stages side by side: {n} at a time, {threads_per_lane(n)} thread(s) each (parallel_stages: {setting}): "
            "the searches with the baseline's retraining, then the other retrainings (an estimate of the "
            "run's time counts them one after another)"]
