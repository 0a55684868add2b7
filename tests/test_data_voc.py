import pytest

from data_builders import make_voc
from detnas.data import load_voc
from detnas.errors import UserError


def test_boxes_labels_classes_and_difficult(tmp_path):
    ds = load_voc(make_voc(tmp_path))
    assert ds.categories == ["cat", "dog", "person"]  # sorted union of names
    assert ds.image_ids == [1, 2]
    _, target = ds[0]
    # 1-based inclusive (11, 6, 30, 25) -> continuous (10, 5, 30, 25); the difficult person is not trained on.
    assert target["boxes"].tolist() == [[10, 5, 30, 25]] and target["labels"].tolist() == [2]
    assert target["orig_size"] == (48, 64)
    gt = ds.to_coco()
    assert [(a["image_id"], a["category_id"], a["bbox"], a["iscrowd"]) for a in gt["annotations"]] == [
        (1, 2, [10.0, 5.0, 20.0, 20.0], 0),
        (1, 3, [0.0, 0.0, 64.0, 48.0], 1),  # difficult: an ignore region for the evaluator
        (2, 1, [4.0, 4.0, 16.0, 36.0], 0),
    ]
    assert gt["images"][1] == {"id": 2, "file_name": "000002.jpg", "width": 64, "height": 48}


def test_split_keeps_ids_and_classes_of_the_whole_root(tmp_path):
    root = make_voc(tmp_path, splits={"val": ["000002"]})
    val = load_voc(root, "val")
    assert val.image_ids == [2] and val.categories == ["cat", "dog", "person"]
    fixed = load_voc(root, "val", classes=["person", "dog", "cat"])
    assert fixed[0][1]["labels"].tolist() == [3]


def test_out_of_image_boxes_clipped_or_dropped(tmp_path):
    root = make_voc(tmp_path, objects={"a": [("x", (50, 40, 80, 60)), ("x", (70, 10, 75, 20))]})
    _, target = load_voc(root)[0]
    assert target["boxes"].tolist() == [[49, 39, 64, 48]]


def test_missing_size_read_from_image_header(tmp_path):
    root = make_voc(tmp_path, objects={"a": [("x", (1, 1, 5, 5))]}, size=(40, 30))
    xml = root / "Annotations" / "a.xml"
    xml.write_text(xml.read_text().replace("<width>40</width><height>30</height>", ""))
    assert load_voc(root)[0][1]["orig_size"] == (30, 40)


def _error(call, match, path):
    with pytest.raises(UserError, match=match) as e:
        call()
    assert e.value.path == str(path)


def test_bad_inputs_name_the_file(tmp_path):
    root = make_voc(tmp_path / "voc")
    _error(lambda: load_voc(tmp_path / "none"), "VOC folder not found", tmp_path / "none")
    _error(lambda: load_voc(root, "train"), "split file not found", root / "ImageSets" / "Main" / "train.txt")
    _error(lambda: load_voc(root, classes=["dog", "person"]), "'cat' is not one of the given classes",
           root / "Annotations" / "000002.xml")
    (root / "JPEGImages" / "000002.jpg").unlink()
    _error(lambda: load_voc(root), "image for .*000002.xml not found", root / "JPEGImages" / "000002.jpg")

    xml = root / "Annotations" / "000001.xml"
    xml.write_text(xml.read_text().replace("<xmin>11</xmin>", ""))
    _error(lambda: load_voc(root), r"object 0 \(dog\): <bndbox> needs numeric", xml)
    xml.write_text("<annotation><object>")
    _error(lambda: load_voc(root), "malformed XML", xml)

    empty = tmp_path / "empty"
    empty.mkdir()
    _error(lambda: load_voc(empty), "missing the 'Annotations' folder", empty / "Annotations")


def test_split_listing_an_unknown_id(tmp_path):
    root = make_voc(tmp_path, splits={"train": ["000001", "000009"]})
    _error(lambda: load_voc(root, "train"), "'000009' is listed", root / "Annotations" / "000009.xml")


def test_undecodable_image_fails_when_loaded(tmp_path):
    root = make_voc(tmp_path)
    (root / "JPEGImages" / "000001.jpg").write_bytes(b"\xff\xd8 truncated")
    ds = load_voc(root)
    _error(lambda: ds[0], "cannot decode image", root / "JPEGImages" / "000001.jpg")
