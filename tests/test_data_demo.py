import json

import numpy as np
import pytest

from detnas.data import ImageFolderDataset, build_demo_data, demo, load_coco
from detnas.errors import UserError

TINY = dict(cls_train=40, cls_val=10, det_train=8, det_val=4, det_test=4, image_size=64, digit_height=(10, 30))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "data"
    return root, build_demo_data(root, seed=0, **TINY)


def _annotations(path):
    return json.loads(path.read_text())["annotations"]


def test_same_seed_same_bytes_other_seed_other_data(built, tmp_path):
    root, paths = built
    again = build_demo_data(tmp_path / "again", seed=0, **TINY)
    for name in ("det_train_json", "det_val_json", "det_test_json"):
        assert getattr(again, name).read_bytes() == getattr(paths, name).read_bytes()
    first = sorted(paths.det_images.iterdir())[0]
    assert (again.det_images / first.name).read_bytes() == first.read_bytes()
    other = build_demo_data(tmp_path / "other", seed=1, **TINY)
    assert other.det_train_json.read_bytes() != paths.det_train_json.read_bytes()


def test_val_and_test_digits_never_seen_in_training(built):
    _, paths = built
    train, val, test = ({a["mnist_index"] for a in _annotations(p)}
                        for p in (paths.det_train_json, paths.det_val_json, paths.det_test_json))
    cls_train = {int(p.stem) for p in paths.cls_train.rglob("*.png")}
    assert train and val and test
    assert not (val | test) & (train | cls_train)
    assert not val & test


def test_read_by_the_same_readers_as_user_data(built):
    _, paths = built
    cls = ImageFolderDataset(paths.cls_train)
    assert cls.classes == [str(d) for d in range(10)] and len(cls) == 40
    assert sorted(label for _, label in cls.samples) == sorted(list(range(10)) * 4)  # stratified
    assert len(ImageFolderDataset(paths.cls_val)) == 10
    det = load_coco(paths.det_train_json, paths.det_images)
    assert det.categories == ["digit"] and len(det) == 8  # by default every digit is one class
    image, target = det[0]
    assert image.shape == (3, 64, 64)
    assert ((target["boxes"] >= 0) & (target["boxes"] <= 64)).all()
    assert sum(len(det[i][1]["labels"]) for i in range(len(det))) == len(_annotations(paths.det_train_json))


def test_ten_classes_label_each_digit_by_its_value(tmp_path):
    paths = build_demo_data(tmp_path / "ten", seed=0, **{**TINY, "one_class": False})
    coco = json.loads(paths.det_train_json.read_text())
    assert [c["name"] for c in coco["categories"]] == [str(d) for d in range(10)]
    labels = demo.mnist_digits()[1]
    assert coco["annotations"]
    assert all(a["category_id"] == labels[a["mnist_index"]] + 1 for a in coco["annotations"])


def test_background_blur_smooths_the_photo_not_the_digits():
    digits = demo.mnist_digits()[0][:50]
    checker = [np.kron((np.indices((50, 50)).sum(0) % 2) * 255, np.ones((2, 2)))[..., None].repeat(3, -1)
               .astype(np.uint8)]  # 2 px squares: detail a blur removes
    sharp, _ = demo._render_image(checker, digits, np.arange(50), np.random.default_rng(3), 64, (10, 20), 0.0)
    soft, objects = demo._render_image(checker, digits, np.arange(50), np.random.default_rng(3), 64, (10, 20), 2.0)
    background = np.ones((64, 64), bool)
    for (x1, y1, x2, y2), _ in objects:
        background[y1:y2, x1:x2] = False
    assert soft[background].std() < 0.2 * sharp[background].std()
    for (x1, y1, x2, y2), _ in objects:  # the same digits in the same places, drawn sharp on the blur
        assert np.abs(soft[y1:y2, x1:x2].astype(int) - 128).max() > 64


def test_boxes_tight_around_digit_pixels():
    digits = demo.mnist_digits()[0][:50]
    grey = [np.full((100, 100, 3), 128, np.uint8)]  # a flat photo: every changed pixel belongs to a digit
    rng = np.random.default_rng(0)
    n_boxes = 0
    for _ in range(10):
        image, objects = demo._render_image(grey, digits, np.arange(50), rng, 64, (10, 40))
        changed = (image != 128).any(-1)
        inside = np.zeros_like(changed)
        for (x1, y1, x2, y2), _ in objects:
            inside[y1:y2, x1:x2] = True
            # Each border row and column of the box holds a clearly visible digit pixel.
            strong = (np.abs(image[y1:y2, x1:x2].astype(int) - 128) >= 16).any(-1)
            assert strong[0].any() and strong[-1].any() and strong[:, 0].any() and strong[:, -1].any()
            n_boxes += 1
        assert not (changed & ~inside).any()
    assert n_boxes >= 10


def test_cache_hit_rebuild_and_interrupted_build(built, tmp_path, monkeypatch):
    root, paths = built
    real_generate = demo._generate

    def interrupted(out, params):
        (out / "half-written").write_text("")
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_generate", interrupted)
    assert build_demo_data(root, seed=0, **TINY) == paths  # cached: nothing generated
    with pytest.raises(KeyboardInterrupt):
        build_demo_data(tmp_path / "fresh", seed=0, **TINY)
    assert list(tmp_path.iterdir()) == []  # neither the root nor a partial folder is left

    (paths.det_val_json).unlink()  # a damaged cache is rebuilt
    monkeypatch.setattr(demo, "_generate", real_generate)
    build_demo_data(root, seed=0, **TINY)
    assert paths.det_val_json.is_file()


def test_refuses_to_replace_a_foreign_folder_and_bad_sizes(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("")
    with pytest.raises(UserError, match="not a detnas demo data folder"):
        build_demo_data(tmp_path / "mine", **TINY)
    assert (tmp_path / "mine" / "thesis.tex").is_file()
    with pytest.raises(UserError, match="cls_train \\+ cls_val <= 5000"):
        build_demo_data(tmp_path / "x", **{**TINY, "cls_train": 4500, "cls_val": 1000})
