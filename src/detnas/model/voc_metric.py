"""Pascal VOC's box mAP at IoU 0.5, as its devkit scores it: VOC2007's 11-point interpolated AP
(``voc07``, what VOC papers, DetNAS's included, report) or the area under the interpolated
precision-recall curve of VOC2010 and later (``voc``).

The devkit's rules: per class, detections in descending score order; each takes the ground-truth box
of its class in its image that it overlaps most, and counts as a true positive when the IoU exceeds
0.5 (strictly) and that box is not taken yet, else as a false positive; one on a ``difficult`` box
counts as neither (here: annotations with ``iscrowd`` 1, as ``DetectionDataset.to_coco`` writes
difficult objects). The devkit's +1 in box widths comes from its inclusive pixel coordinates; boxes
here are continuous (``data/voc.py``), so plain IoU is the same overlap. Classes without ground truth
are left out of the mean (the devkit would divide by zero).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

import numpy as np

Metric = Literal["coco", "voc07", "voc"]
METRIC_KEYS = {"voc07": "VOC07_AP50", "voc": "VOC_AP50"}  # the name each adds to the metrics


def _xyxy(bbox) -> np.ndarray:
    x, y, w, h = bbox
    return np.array([x, y, x + w, y + h], dtype=np.float64)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    return inter / (area + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter)


def average_precision(recall: np.ndarray, precision: np.ndarray, eleven_point: bool) -> float:
    """AP of one class from its cumulative recall and precision (in detection order)."""
    if eleven_point:  # mean over recall 0, 0.1, ..., 1 of the best precision at that recall or more
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                              for t in np.linspace(0, 1, 11)]))
    r = np.concatenate(([0.0], recall, [1.0]))
    p = np.concatenate(([0.0], precision, [0.0]))
    p = np.maximum.accumulate(p[::-1])[::-1]  # the precision envelope, non-increasing
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def voc_ap50(gt: dict, detections: list[dict], eleven_point: bool = True) -> float:
    """Mean over classes of VOC's AP at IoU 0.5 of ``detections`` ({"image_id", "category_id", "bbox":
    [x, y, w, h], "score"}) against the COCO-format ``gt``, as a fraction; -1 if no class has ground truth."""
    truth = defaultdict(lambda: (np.zeros((0, 4)), np.zeros(0, dtype=bool)))
    for a in gt["annotations"]:
        boxes, difficult = truth[a["category_id"], a["image_id"]]
        truth[a["category_id"], a["image_id"]] = (np.vstack([boxes, _xyxy(a["bbox"])]),
                                                   np.append(difficult, bool(a.get("iscrowd", 0))))
    by_class = defaultdict(list)
    for d in detections:
        by_class[d["category_id"]].append(d)
    aps = []
    for category in sorted({c["id"] for c in gt["categories"]}):
        positives = sum(int((~d).sum()) for (c, _), (_, d) in truth.items() if c == category)
        if positives == 0:
            continue
        dets = sorted(by_class[category], key=lambda d: -d["score"])  # stable: ties keep their order
        taken = {key: np.zeros(len(value[1]), dtype=bool) for key, value in truth.items() if key[0] == category}
        hits = []  # 1 true positive, 0 false positive; difficult matches are left out
        for d in dets:
            key = (category, d["image_id"])
            boxes, difficult = truth[key] if key in truth else (np.zeros((0, 4)), np.zeros(0, dtype=bool))
            overlaps = _iou(_xyxy(d["bbox"]), boxes) if len(boxes) else np.zeros(0)
            best = int(overlaps.argmax()) if len(overlaps) else -1
            if best >= 0 and overlaps[best] > 0.5:
                if difficult[best]:
                    continue
                hits.append(0 if taken[key][best] else 1)
                taken[key][best] = True
            else:
                hits.append(0)
        tp = np.cumsum(hits, dtype=np.float64)
        fp = np.cumsum(1 - np.asarray(hits, dtype=np.float64))
        recall = tp / positives
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps.append(average_precision(recall, precision, eleven_point))
    return float(np.mean(aps)) if aps else -1.0
