"""COCO box mAP with faster-coco-eval (the same numbers as pycocotools, computed in C++, silently)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from faster_coco_eval import COCO, COCOeval_faster

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6], in this order


def coco_map(gt: dict, detections: list[dict]) -> dict[str, float]:
    """COCO box AP of ``detections`` ({"image_id", "category_id", "bbox": [x, y, w, h], "score"})
    against the COCO-format ``gt`` dict, as fractions in [0, 1]; -1 where COCO has nothing to score
    (e.g. APs when the ground truth has no small object). Neither argument is modified."""
    # faster-coco-eval writes into the annotation dicts it is given ("ignore", "area", "id", ...): the
    # same gt is reused for every search candidate, so hand it copies of the (flat) annotation dicts.
    coco_gt = COCO({**gt, "annotations": [dict(a) for a in gt["annotations"]]})
    coco_dt = coco_gt.loadRes([dict(d) for d in detections])
    evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=_silent)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return {name: float(value) for name, value in zip(METRICS, evaluator.stats[: len(METRICS)])}


def _silent(*_: Any) -> None:
    pass


def format_metrics_table(metrics: dict[str, float]) -> str:
    """The metrics as percentages, as papers report them ("-": COCO had nothing to score)."""
    width = max(map(len, ["metric", *metrics]))
    lines = [f"{'metric':<{width}}  {'value':>6}"]
    lines += [f"{name:<{width}}  {'-' if value < 0 else f'{100 * value:.1f}':>6}" for name, value in metrics.items()]
    return "\n".join(lines)


def detections_from_outputs(outputs: Sequence[dict], targets: Sequence[dict]) -> list[dict]:
    """COCO detections from a batch of torchvision detector outputs ("boxes" xyxy in the resized image,
    "scores", "labels"). ``target["scale"]`` is resized/original size, so dividing by it maps boxes
    back to the original image, where the ground truth lives."""
    detections = []
    for out, target in zip(outputs, targets, strict=True):
        boxes = out["boxes"].detach().cpu().double() / float(target["scale"])
        boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh
        image_id = int(target["image_id"])
        for box, score, label in zip(boxes.tolist(), out["scores"].tolist(), out["labels"].tolist(), strict=True):
            detections.append({"image_id": image_id, "category_id": int(label), "bbox": box, "score": float(score)})
    return detections
