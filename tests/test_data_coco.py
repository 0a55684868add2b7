import json
import logging
import re

import numpy as np
import pytest
import torch

from data_builders import make_coco, write_image
from detnas.data import collate, load_coco
from detnas.errors import UserError


def test_boxes_labels_and_target_keys(tmp_path):
    # Non-contiguous category ids become labels 1..K in id order.
    ann, images = make_coco(tmp_path, n_images=2, categories={7: "dog", 3: "cat"},
                            objects={1: [(3, [4, 2, 10, 8]), (7, [30, 20, 12, 16])]})
    ds = load_coco(ann, images)
    assert ds.categories == ["cat", "dog"]
    assert ds.image_ids == [1, 2] and len(ds) == 2
    image, target = ds[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert target["boxes"].tolist() == [[4, 2, 14, 10], [30, 20, 42, 36]]
    assert target["boxes"].dtype == torch.float32
    assert target["labels"].tolist() == [1, 2] and target["labels"].dtype == torch.int64
    assert target["image_id"] == 1 and target["scale"] == 1.0 and target["orig_size"] == (48, 64)
    # An image without objects is kept, with empty tensors of the right shapes.
    _, empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_boxes_clipped_and_degenerate_dropped_with_one_warning(tmp_path, caplog):
    ann, images = make_coco(tmp_path, n_images=1, objects={1: [
        (1, [-5, -4, 20, 10]),  # clipped to [0, 0, 15, 6]
        (1, [50, 40, 30, 30]),  # clipped to [50, 40, 64, 48]
        (1, [70, 10, 5, 5]),    # entirely right of the image: dropped
        (2, [10, 10, 0, 5]),    # zero width: dropped
    ]})
    with caplog.at_level(logging.WARNING, logger="detnas"):
        ds = load_coco(ann, images)
    _, target = ds[0]
    assert target["boxes"].tolist() == [[0, 0, 15, 6], [50, 40, 64, 48]]
    assert target["labels"].tolist() == [1, 1]
    warnings = [r for r in caplog.records if r.name == "detnas"]
    assert len(warnings) == 1 and "dropped 2 boxes" in warnings[0].getMessage()
    assert str(ann) in warnings[0].getMessage()


def test_crowd_regions_not_trained_but_kept_for_evaluation(tmp_path):
    ann, images = make_coco(tmp_path, n_images=1, objects={1: [(1, [1, 2, 3, 4])]}, crowd={1: [(2, [20, 20, 10, 10])]})
    ds = load_coco(ann, images)
    assert ds[0][1]["labels"].tolist() == [1]
    gt = ds.to_coco()
    assert [(a["category_id"], a["iscrowd"]) for a in gt["annotations"]] == [(1, 0), (2, 1)]


def test_to_coco_round_trips_original_coordinates(tmp_path):
    ann, images = make_coco(tmp_path, n_images=3, categories={5: "a", 9: "b"},
                            objects={1: [(9, [1.5, 2.25, 10.5, 7.75])], 3: [(5, [0, 0, 64, 48])]})
    ds = load_coco(ann, images)
    gt = ds.to_coco()
    assert gt["categories"] == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    assert gt["images"][0] == {"id": 1, "file_name": "img1.png", "width": 64, "height": 48}
    a, b = gt["annotations"]
    assert (a["image_id"], a["category_id"], a["iscrowd"]) == (1, 2, 0)
    np.testing.assert_allclose(a["bbox"], [1.5, 2.25, 10.5, 7.75])
    assert a["area"] == pytest.approx(10.5 * 7.75)
    assert (b["image_id"], b["category_id"], b["bbox"], b["area"]) == (3, 1, [0, 0, 64, 48], 64 * 48)
    # Saved ground truth reads back as the same dataset (category ids are now the labels themselves).
    saved = tmp_path / "out" / "gt.json"
    ds.save_coco(saved)
    assert [p.name for p in saved.parent.iterdir()] == ["gt.json"]  # no temporary file left behind
    again = load_coco(saved, images)
    assert again.categories == ds.categories and again.image_ids == ds.image_ids
    assert json.loads(saved.read_text()) == again.to_coco() == gt


def test_subset_and_transform_after_resize(tmp_path):
    from detnas.data import DetectionTransform

    ann, images = make_coco(tmp_path, n_images=4)
    ds = load_coco(ann, images).with_transform(DetectionTransform(24, 100))
    sub = ds.subset([3, 1])
    assert sub.image_ids == [4, 2] and len(sub) == 2
    image, target = sub[0]  # image 4: cat [16, 8, 10, 8], no dog
    assert image.shape == (3, 24, 32) and target["scale"] == 0.5
    assert target["boxes"].tolist() == [[8, 4, 13, 8]]
    assert sub.to_coco()["images"][0]["id"] == 4
    images_, targets = collate([sub[0], sub[1]])
    assert isinstance(images_, list) and len(images_) == 2 and [t["image_id"] for t in targets] == [4, 2]


def _write(path, data):
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _valid():
    return {"images": [{"id": 1, "file_name": "img1.png", "width": 64, "height": 48}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}],
            "categories": [{"id": 1, "name": "cat"}]}


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("images"), "missing key 'images'"),
    (lambda d: d["categories"][0].pop("name"), "categories[0]: missing key 'name'"),
    (lambda d: d["images"][0].pop("width"), "images[0]: missing key 'width'"),
    (lambda d: d["annotations"][0].pop("bbox"), "annotations[0]: 'bbox' must be"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "annotations[0]: 'bbox' must be"),
    (lambda d: d["annotations"][0].update(image_id=9), "image_id 9 is not in 'images'"),
    (lambda d: d["annotations"][0].update(category_id=4), "category_id 4 is not in 'categories'"),
    (lambda d: d["images"].append(dict(d["images"][0])), "duplicate image id 1"),
    (lambda d: d["images"][0].update(height=0), "'height' must be a positive integer"),
])
def test_bad_annotation_file_names_file_and_place(tmp_path, change, message):
    _, images = make_coco(tmp_path, n_images=1)
    data = _valid()
    change(data)
    ann = _write(tmp_path / "bad.json", data)
    with pytest.raises(UserError, match=re.escape(message)) as e:
        load_coco(ann, images)
    assert e.value.path == str(ann)


def test_missing_or_malformed_annotation_file(tmp_path):
    _, images = make_coco(tmp_path, n_images=1)
    with pytest.raises(UserError, match="annotation file not found") as e:
        load_coco(tmp_path / "nope.json", images)
    assert e.value.path == str(tmp_path / "nope.json")
    bad = _write(tmp_path / "bad.json", '{"images": [')
    with pytest.raises(UserError, match="malformed JSON at line 1") as e:
        load_coco(bad, images)
    assert e.value.path == str(bad)


def test_missing_image_fails_at_construction(tmp_path):
    ann, images = make_coco(tmp_path, n_images=2)
    (images / "img2.png").unlink()
    with pytest.raises(UserError, match="not found") as e:
        load_coco(ann, images)
    assert e.value.path == str(images / "img2.png")
    with pytest.raises(UserError, match="image folder not found"):
        load_coco(ann, tmp_path / "elsewhere")


def test_undecodable_or_resized_image_fails_when_loaded(tmp_path):
    ann, images = make_coco(tmp_path, n_images=2)
    (images / "img1.png").write_bytes(b"not an image")
    write_image(images / "img2.png", 32, 32)
    ds = load_coco(ann, images)  # existence is checked up front, decoding lazily
    with pytest.raises(UserError, match="cannot decode image") as e:
        ds[0]
    assert e.value.path == str(images / "img1.png")
    with pytest.raises(UserError, match="image is 32x32 but its annotation says 64x48") as e:
        ds[1]
    assert e.value.path == str(images / "img2.png")
