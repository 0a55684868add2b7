import copy
import random

import pytest
import torch

from detnas.model.cocoeval import METRICS, coco_map, detections_from_outputs, format_metrics_table
from reference_coco import pycocotools_stats

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 7, "name": "bird"}]  # non-contiguous


def _synthetic_gt(seed: int = 0) -> dict:
    """6 images, small/medium/large boxes of 3 categories, one crowd region, one image without objects."""
    rng = random.Random(seed)
    images = [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in range(1, 7)]
    anns = []
    for image in images[:-1]:
        for side in rng.sample([8, 16, 24, 40, 64, 90, 120, 200, 300], 5):  # small < 32 < medium < 96 < large
            w, h = side * rng.uniform(0.8, 1.2), side * rng.uniform(0.8, 1.2)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            anns.append({"image_id": image["id"], "category_id": rng.choice(CATEGORIES)["id"],
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    anns.append({"image_id": 1, "category_id": 1, "bbox": [300, 200, 250, 200], "area": 50000, "iscrowd": 1})
    for i, ann in enumerate(anns, 1):
        ann["id"] = i
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


def _noisy_detections(gt: dict, seed: int = 0) -> list[dict]:
    """Jittered hits (some with the wrong class or duplicated, some on the crowd region), misses, false
    positives, random scores."""
    rng = random.Random(seed)
    dets = []
    for ann in gt["annotations"]:
        if rng.random() < 0.2 and not ann["iscrowd"]:
            continue  # missed
        x, y, w, h = ann["bbox"]
        for _ in range(rng.choice([1, 1, 2])):  # sometimes a duplicate
            j = rng.uniform(0.0, 0.25)
            box = [x + rng.uniform(-j, j) * w, y + rng.uniform(-j, j) * h, w * (1 + rng.uniform(-j, j)),
                   h * (1 + rng.uniform(-j, j))]
            cat = ann["category_id"] if rng.random() < 0.85 else rng.choice(CATEGORIES)["id"]
            dets.append({"image_id": ann["image_id"], "category_id": cat, "bbox": box, "score": rng.random()})
    for image in gt["images"]:
        for _ in range(3):  # false positives
            w, h = rng.uniform(5, 200), rng.uniform(5, 200)
            dets.append({"image_id": image["id"], "category_id": rng.choice(CATEGORIES)["id"],
                         "bbox": [rng.uniform(0, 400), rng.uniform(0, 250), w, h], "score": rng.random()})
    return dets



@pytest.mark.parametrize("seed, tied_scores", [(0, False), (1, False), (2, True)])
def test_matches_pycocotools(seed, tied_scores, capsys):
    gt = _synthetic_gt(seed)
    dets = _noisy_detections(gt, seed)
    if tied_scores:  # many equal scores: both must break ties the same way
        for det in dets:
            det["score"] = round(det["score"], 1)
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets)
    got = coco_map(gt, dets)
    assert capsys.readouterr().out == ""  # quiet
    assert (gt, dets) == (gt_before, dets_before)  # inputs untouched
    expected = pycocotools_stats(gt, dets)
    assert list(got) == list(METRICS)
    assert 0.1 < got["AP"] < 0.9 and min(got.values()) >= 0  # a non-trivial case: every size range is scored
    # Not bit-identical (summation order differs): over 50 seeds, with and without ties, |diff| <= 2.3e-16.
    assert list(got.values()) == pytest.approx(expected, abs=1e-12, rel=0)


def test_perfect_predictions_score_one():
    gt = _synthetic_gt()
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt["annotations"] if not a["iscrowd"]]
    assert coco_map(gt, dets) == {name: 1.0 for name in METRICS}


def test_no_detections_score_zero():
    gt = _synthetic_gt()
    assert coco_map(gt, []) == {name: 0.0 for name in METRICS}


def test_missing_size_range_is_minus_one():
    gt = _synthetic_gt()
    gt["annotations"] = [a for a in gt["annotations"] if a["area"] >= 96**2]  # large objects only
    metrics = coco_map(gt, _noisy_detections(gt))
    assert metrics["APs"] == metrics["APm"] == -1.0 and metrics["APl"] > 0 and metrics["AP"] > 0


def test_detections_from_outputs_maps_back_to_original_coordinates():
    outputs = [
        {"boxes": torch.tensor([[20.0, 40.0, 60.0, 100.0], [0.0, 0.0, 3.0, 5.0]]),
         "scores": torch.tensor([0.75, 0.5]), "labels": torch.tensor([3, 7])},
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)},
        {"boxes": torch.tensor([[10.0, 10.0, 30.0, 20.0]]), "scores": torch.tensor([0.25]),
         "labels": torch.tensor([1])},
    ]
    targets = [{"image_id": torch.tensor(42), "scale": 2.0}, {"image_id": 5, "scale": 1.0},
               {"image_id": 9, "scale": torch.tensor(0.5)}]
    assert detections_from_outputs(outputs, targets) == [
        {"image_id": 42, "category_id": 3, "bbox": [10.0, 20.0, 20.0, 30.0], "score": 0.75},
        {"image_id": 42, "category_id": 7, "bbox": [0.0, 0.0, 1.5, 2.5], "score": 0.5},
        {"image_id": 9, "category_id": 1, "bbox": [20.0, 20.0, 40.0, 20.0], "score": 0.25},
    ]


def test_format_metrics_table():
    table = format_metrics_table({"AP": 0.4023, "AP50": 0.61, "APs": -1.0})
    assert table.splitlines() == ["metric   value", "AP        40.2", "AP50      61.0", "APs          -"]
