"""Evaluating a retrained detector (loaded by ``weights.load_trained_detector``) on a COCO or VOC set."""

from __future__ import annotations

import torch
from torch import nn

from detnas.errors import UserError


def _gt_in_checkpoint_labels(dataset, classes: list[str], data_path) -> dict:
    """The dataset's ground truth with category ids = the checkpoint's labels, matched by class name.

    The dataset's own labels follow its categories (COCO ids, VOC names found), which need not be the
    checkpoint's order; classes the checkpoint knows but the data lacks simply have no ground truth.
    """
    label_of = {name: k for k, name in enumerate(classes, start=1)}
    unknown = [c for c in dataset.categories if c not in label_of]
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise UserError(
            f"the dataset has classes the detector was not trained on: {shown} (its classes: {', '.join(classes)})",
            data_path,
        )
    gt = dataset.to_coco()
    to_ckpt = {k: label_of[name] for k, name in enumerate(dataset.categories, start=1)}
    return {
        **gt,
        "annotations": [{**a, "category_id": to_ckpt[a["category_id"]]} for a in gt["annotations"]],
        "categories": [{"id": k, "name": name} for k, name in enumerate(classes, start=1)],
    }


def evaluate_detector(
    detector: nn.Module, info: dict, source, batch_size: int = 8, device: str | torch.device | None = None,
    metric: str = "coco",
) -> dict[str, float]:
    """COCO box metrics (AP, AP50, AP75, APs, APm, APl as fractions; -1 where COCO has nothing to
    score) of a retrained detector loaded with ``weights.load_trained_detector`` (and its ``info``) on
    ``source`` (a ``configs.DetectionSource``), with the evaluation transform of its detector config
    (no flip); with ``metric`` ``voc07``/``voc`` also Pascal VOC's AP50 (``model/voc_metric.py``).
    ``device`` defaults to CUDA when available, else the CPU."""
    from detnas.data.loading import data_workers
    from detnas.data.sources import image_dir_of, load_detection
    from detnas.data.transforms import DetectionTransform
    from detnas.model.evaluate import detection_metrics

    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    cfg = info["detector"]
    dataset = load_detection(source, DetectionTransform(cfg["min_size"], cfg["max_size"], flip=False))
    data_path = source.annotations if source.format == "coco" else source.root
    if len(dataset) == 0:
        raise UserError(f"no images to evaluate (image folder {image_dir_of(source)})", data_path)
    gt = _gt_in_checkpoint_labels(dataset, info["classes"], data_path)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    return detection_metrics(detector.to(device), dataset, batch_size, data_workers(), gt, metric)
