"""Evaluating one path: BatchNorm recalibration, classification top-1 and detection mAP.

A supernet's BN running statistics mix every path that ever ran through a block, so a path is only
judged fairly after its statistics are recomputed on training images (as the DetNAS paper does). We recalibrate
an *extracted* standalone network, which leaves the supernet untouched and runs only the path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import nn

from detnas.data.detection import DetectionDataset, collate
from detnas.data.loading import CachedBatches, loader_options
from detnas.model.cocoeval import coco_map, detections_from_outputs
from detnas.model.layout import apply_layout
from detnas.model.voc_metric import METRIC_KEYS, Metric, voc_ap50

RecalibMode = Literal["cumulative", "ema"]


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, forward, batches: Iterable, mode: RecalibMode = "cumulative", momentum: float = 0.1
) -> None:
    """Reset the BN statistics of ``model`` and recompute them with ``forward(batch)`` in train mode.

    ``cumulative`` averages over all batches equally (momentum=None); ``ema`` is the authors' choice
    (running average with ``momentum``), which weighs the last batches most.
    """
    bns = _batchnorms(model)
    saved = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None if mode == "cumulative" else momentum
    model.train()
    try:
        for batch in batches:
            forward(batch)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.train(was_training)


def detector_backbone_forward(detector: nn.Module):
    """A ``forward(images)`` that runs only the backbone of a torchvision detector, after its own
    normalisation and resizing: BN layers live only there, so recalibration needs nothing else."""

    def forward(images: Sequence[torch.Tensor]) -> None:
        device = next(detector.parameters()).device
        image_list, _ = detector.transform([im.to(device) for im in images])
        detector.backbone.body(image_list.tensors)

    return forward


@torch.no_grad()
def predict_batches(detector: nn.Module, batches: Iterable) -> list[dict]:
    """COCO-format detections of ``detector`` on (images, targets) batches, in original image pixels."""
    detector.eval()
    device = next(detector.parameters()).device
    detections = []
    for images, targets in batches:
        detections += detections_from_outputs(detector([im.to(device, non_blocking=True) for im in images]), targets)
    return detections


def predict(detector: nn.Module, dataset: DetectionDataset, batch_size: int = 16, workers: int = 0) -> list[dict]:
    """COCO-format detections of ``detector`` on ``dataset``, in original image pixels."""
    device = next(detector.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate,
                                         **loader_options(workers, device))
    return predict_batches(detector, loader)


def box_metrics(gt: dict, detections: list[dict], metric: Metric = "coco") -> dict[str, float]:
    """COCO's box metrics (AP, AP50, ...), and with ``metric`` ``voc07`` or ``voc`` Pascal VOC's AP50
    too (11-point or area: ``VOC07_AP50``, ``VOC_AP50``)."""
    metrics = coco_map(gt, detections)
    if metric != "coco":
        metrics[METRIC_KEYS[metric]] = voc_ap50(gt, detections, eleven_point=metric == "voc07")
    return metrics


def detection_metrics(
    detector: nn.Module, dataset: DetectionDataset, batch_size: int = 16, workers: int = 0, gt: dict | None = None,
    metric: Metric = "coco",
) -> dict[str, float]:
    """Box metrics (``box_metrics``) of ``detector`` on ``dataset`` (give it the eval transform)."""
    detections = predict(detector, dataset, batch_size, workers)
    return box_metrics(gt if gt is not None else dataset.to_coco(), detections, metric)


@torch.no_grad()
def classification_top1(model: nn.Module, loader: Iterable, arch=None) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for x, y in loader:
        logits = model.classify(x.to(device), arch)
        correct += int((logits.argmax(1).cpu() == y).sum())
        total += len(y)
    return correct / max(total, 1)


def recalibration_batches(dataset, n_images: int, batch_size: int, collate_fn=None, seed: int = 0,
                          workers: int = 0, budget_bytes: float = math.inf, device=None) -> CachedBatches:
    """The image batches of ``n_images`` drawn at random (seeded, without replacement) from ``dataset``
    with its transform, kept decoded in memory while they fit ``budget_bytes`` (see ``CachedBatches``),
    so that recalibrating many paths does not decode them again.

    A random draw, not the first images: datasets are often ordered (an ImageFolder by class), and
    BN statistics of one class make every path look worse than it is.
    """
    n = min(n_images, len(dataset))
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    subset = torch.utils.data.Subset(dataset, chosen.tolist())
    return CachedBatches(subset, batch_size, collate_fn, workers, budget_bytes, device, keep=lambda batch: batch[0])


def recalibrated_path(supernet_detector: nn.Module, arch, num_classes: int, detector_cfg, recalib: Iterable,
                      mode: RecalibMode = "cumulative") -> nn.Module:
    """The standalone detector of one path (on the supernet's device, in the layout of model/layout.py)
    with its BN statistics recomputed on ``recalib`` image batches."""
    from detnas.model.detector import extract_detector

    device = next(supernet_detector.parameters()).device
    sub = apply_layout(extract_detector(supernet_detector, arch, num_classes, detector_cfg).to(device), device)
    recalibrate_bn(sub, detector_backbone_forward(sub), recalib, mode)
    return sub


def evaluate_detection_path(
    supernet_detector: nn.Module, arch, num_classes: int, detector_cfg, recalib: Iterable, eval_batches: Iterable,
    gt: dict, mode: RecalibMode = "cumulative", metric: Metric = "coco",
) -> dict[str, float]:
    """mAP of one path: extract it, recalibrate its BN on ``recalib`` image batches, evaluate on
    ``eval_batches`` ((images, targets) batches of the set whose ground truth is ``gt``). Also returns
    the seconds spent in each phase."""
    t0 = time.perf_counter()
    sub = recalibrated_path(supernet_detector, arch, num_classes, detector_cfg, recalib, mode)
    t1 = time.perf_counter()
    detections = predict_batches(sub, eval_batches)
    t2 = time.perf_counter()
    metrics = box_metrics(gt, detections, metric)
    t3 = time.perf_counter()
    return {**metrics, "seconds_recalib": t1 - t0, "seconds_inference": t2 - t1, "seconds_cocoeval": t3 - t2}


def evaluate_classification_path(supernet: nn.Module, arch, recalib: Iterable, val_loader,
                                 mode: RecalibMode = "cumulative") -> float:
    """Top-1 of one path of a classification supernet after BN recalibration."""
    device = next(supernet.parameters()).device
    sub = apply_layout(supernet.subnet(arch).to(device), device)
    recalibrate_bn(sub, lambda x: sub.classify(x.to(device)), recalib, mode)
    return classification_top1(sub, val_loader)
