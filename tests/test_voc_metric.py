"""Pascal VOC's AP50 (VOC07 11-point and area) against hand-computed cases, and several VOC
roots/years read as one training set (07+12)."""

from __future__ import annotations

import json

import pytest
import yaml
from pydantic import ValidationError

from data_builders import finetune_cfg, make_voc
from detnas.config.runs import METRICS_FILE, SPLIT_FILE
from detnas.config.schema import DetectionData, EvalConfig, EvaluateConfig
from detnas.data.coco import load_coco
from detnas.data.sources import image_dir_of, load_detection, load_training_set
from detnas.model.evaluate import box_metrics
from detnas.model.voc_metric import voc_ap50

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}]


def gt(*annotations) -> dict:
    """COCO-format ground truth of (image, category, [x, y, w, h], difficult) tuples."""
    return {"images": [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"} for i in (1, 2)],
            "categories": CATEGORIES,
            "annotations": [{"id": n, "image_id": im, "category_id": c, "bbox": box, "area": box[2] * box[3],
                             "iscrowd": int(difficult)} for n, (im, c, box, difficult) in enumerate(annotations, 1)]}


def det(image, category, box, score) -> dict:
    return {"image_id": image, "category_id": category, "bbox": box, "score": score}


TRUTH = gt((1, 1, [0, 0, 10, 10], False), (2, 1, [0, 0, 10, 10], False), (2, 1, [20, 20, 10, 10], True),
           (1, 2, [5, 5, 10, 10], False))
DETECTIONS = [
    det(1, 1, [0, 0, 10, 10], 0.9),   # cat, image 1: true positive
    det(1, 1, [0, 0, 10, 10], 0.8),   # the same box again: false positive
    det(2, 1, [20, 20, 10, 10], 0.7),  # on the difficult cat: neither
    det(2, 1, [50, 50, 10, 10], 0.6),  # nothing there: false positive
    det(2, 1, [0, 0, 10, 9], 0.5),    # IoU 0.9 with image 2's cat: true positive
    det(1, 2, [5, 5, 10, 10], 0.3),   # the dog: true positive
    det(1, 3, [0, 0, 5, 5], 0.9),     # a bird: no bird in the ground truth, so no class in the mean
]


def test_voc07_eleven_point_ap_by_hand():
    # cat: 2 positives; in score order TP FP FP TP -> recall .5 .5 .5 1, precision 1 .5 1/3 .5.
    # Best precision at recall >= t: 1 for t = 0 ... 0.5 (6 points), 0.5 for t = 0.6 ... 1 (5 points)
    cat = (6 * 1 + 5 * 0.5) / 11
    assert voc_ap50(TRUTH, DETECTIONS, eleven_point=True) == pytest.approx((cat + 1.0) / 2, abs=1e-12)


def test_voc_area_ap_by_hand():
    # cat: the precision envelope is 1 up to recall .5, then .5 up to recall 1: .5 * 1 + .5 * .5
    assert voc_ap50(TRUTH, DETECTIONS, eleven_point=False) == pytest.approx((0.75 + 1.0) / 2, abs=1e-12)


@pytest.mark.parametrize("height,expected", [(5, 0.0), (5.01, 1.0)])
def test_a_match_needs_an_iou_above_one_half(height, expected):
    truth = gt((1, 1, [0, 0, 10, 10], False))
    assert voc_ap50(truth, [det(1, 1, [0, 0, 10, height], 0.9)]) == expected  # IoU 0.5 exactly, then 0.501


def test_no_detection_and_no_ground_truth():
    assert voc_ap50(gt((1, 1, [0, 0, 10, 10], False)), []) == 0.0
    assert voc_ap50(gt(), [det(1, 1, [0, 0, 1, 1], 0.5)]) == -1.0


def test_the_metric_option_adds_its_column_beside_cocos():
    coco = box_metrics(TRUTH, DETECTIONS)
    assert "VOC07_AP50" not in coco and "AP50" in coco
    assert box_metrics(TRUTH, DETECTIONS, "voc07")["VOC07_AP50"] == voc_ap50(TRUTH, DETECTIONS, True)
    assert box_metrics(TRUTH, DETECTIONS, "voc")["VOC_AP50"] == voc_ap50(TRUTH, DETECTIONS, False)
    assert EvalConfig(metric="voc07").metric == "voc07" and EvaluateConfig(data={"format": "voc", "root": "x"},
                                                                           metric="voc").metric == "voc"
    with pytest.raises(ValidationError, match="metric"):
        EvalConfig(metric="voc12")


def test_voc_07_and_12_as_one_training_set(tmp_path):
    voc07 = make_voc(tmp_path / "VOC2007", {"000001": [("dog", (11, 6, 30, 25))], "000002": [("cat", (5, 5, 20, 40))]},
                     splits={"trainval": ["000001", "000002"]})
    voc12 = make_voc(tmp_path / "VOC2012", {"2008_000001": [("bird", (1, 1, 9, 9)), ("cat", (2, 2, 12, 12))]},
                     splits={"trainval": ["2008_000001"]})
    data = DetectionData(train=[{"format": "voc", "root": str(r), "split": "trainval"} for r in (voc07, voc12)])
    both = load_training_set(data.train)
    assert len(both) == 3 and both.categories == ["cat", "dog", "bird"]  # 2007's labels, then the new name
    names = [[both.categories[k - 1] for k in r.labels] for r in both.records]
    assert names == [["dog"], ["cat"], ["bird", "cat"]] and both.image_ids == [1, 2, 3]
    # a subset saved as COCO JSON (the search split) finds its images again from the first set's folder
    both.subset([2, 0]).save_coco(tmp_path / "split.json")
    again = load_coco(tmp_path / "split.json", image_dir_of(data.train))
    assert [r.path for r in again.records] == [both.records[2].path.resolve(), both.records[0].path.resolve()]
    assert len(load_detection(data.train[:1])) == 2  # a list of one is that set, as it was
    with pytest.raises(ValidationError, match="at least 1"):
        DetectionData(train=[])


def test_finetuning_on_voc_07_and_12_reports_voc07_ap(tmp_path, cli_here):
    """End to end: a supernet finetuned on two VOC roots, its search split carved from both, and the
    end-of-training evaluation of each path with VOC07's AP50 beside COCO's metrics."""
    roots = []
    for year, first in (("2007", 1), ("2012", 5)):
        objects = {f"{i:06d}": [("dog" if i % 2 else "cat", (4, 5, 24, 30))] for i in range(first, first + 4)}
        roots.append(make_voc(tmp_path / f"VOC{year}", objects, splits={"trainval": sorted(objects)}))
    sources = [{"format": "voc", "root": str(r), "split": "trainval"} for r in roots]
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump(finetune_cfg(sources[0], data={"train": sources, "holdout": {"size": 3}},
                                                  eval={"metric": "voc07"})))
    cli_here("finetune", "--config", config, "--out", tmp_path / "run")
    result = json.loads((tmp_path / "run" / METRICS_FILE).read_text())
    assert result["split"] == "search" and len(result["map"]) == 1
    for metrics in result["map"].values():
        assert 0 <= metrics["VOC07_AP50"] <= 1 and "AP" in metrics
    split = json.loads((tmp_path / "run" / SPLIT_FILE).read_text())
    assert len(split["images"]) == 3 and all(im["file_name"].startswith("/") for im in split["images"])
