"""pycocotools, the reference COCO evaluator, run quietly: what our faster-coco-eval numbers must equal."""

import contextlib
import copy
import io

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def pycocotools_stats(gt: dict, dets: list[dict]) -> list[float]:
    """COCOeval.stats[0:6] (AP, AP50, AP75, APs, APm, APl) of ``dets`` against the COCO dict ``gt``."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats[:6]]
