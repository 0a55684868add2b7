"""``detnas predict``: COCO results a COCO tool reads, the drawn images, and one-line errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from faster_coco_eval import COCO
from PIL import Image

from cli_checks import one_line_error
from data_builders import make_retrained, write_image
from detnas.artifacts.predict import DETECTIONS_FILE, IMAGES_FILE
from detnas.data.transforms import DetectionTransform

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("predict") / "retrained.pt"
    return path, make_retrained(path)


def expected_detections(det, path, thresh: float) -> np.ndarray:
    """(x1, y1, x2, y2, label, score) rows of the detector on the image, in original pixels."""
    cfg = det.transform
    image = Image.open(path).convert("RGB")
    tensor, _, scale = DetectionTransform(cfg.min_size[0], cfg.max_size)(image, torch.zeros(0, 4))
    with torch.no_grad():
        out = det.eval()([tensor])[0]
    keep = out["scores"] >= thresh
    rows = torch.cat([out["boxes"][keep] / scale, out["labels"][keep, None], out["scores"][keep, None]], 1)
    return rows.double().numpy()


def test_predict_a_folder(tmp_path, checkpoint, cli_here):
    ckpt, det = checkpoint
    images = tmp_path / "images"
    write_image(images / "a.png", 80, 64, seed=1)
    write_image(images / "b.jpg", 50, 90, seed=2)
    write_image(images / "c.png", 64, 64, seed=3, mode="L")
    (images / "notes.txt").write_text("not an image, not picked up")
    r = cli_here("predict", "--checkpoint", ckpt, images, "--out", tmp_path / "out", "--score-thresh", "0.2")
    assert "on 3 images" in r.stdout

    meta = json.loads((tmp_path / "out" / IMAGES_FILE).read_text())
    results = json.loads((tmp_path / "out" / DETECTIONS_FILE).read_text())
    assert [im["file_name"] for im in meta["images"]] == ["a.png", "b.jpg", "c.png"]
    assert [(im["width"], im["height"]) for im in meta["images"]] == [(80, 64), (50, 90), (64, 64)]
    assert meta["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    # a COCO tool reads the results against the images
    gt = COCO({**meta, "annotations": []})
    loaded = gt.loadRes(results)
    assert len(loaded.getAnnIds()) == len(results) > 0

    for im in meta["images"]:
        mine = [d for d in results if d["image_id"] == im["id"]]
        got = np.array([[*d["bbox"][:2], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3],
                         d["category_id"], d["score"]] for d in mine]).reshape(-1, 6)
        want = expected_detections(det, images / im["file_name"], 0.2)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
        assert (got[:, 5] >= 0.2).all()
        drawn = Image.open(tmp_path / "out" / im["file_name"])
        assert drawn.size == (im["width"], im["height"]) and drawn.mode == "RGB"
        original = np.asarray(Image.open(images / im["file_name"]).convert("RGB"), dtype=np.int16)
        changed = np.abs(np.asarray(drawn, dtype=np.int16) - original).max(2) > 60  # boxes, not JPEG noise
        assert changed.any() == (len(mine) > 0)


def test_predict_one_image_and_threshold(tmp_path, checkpoint, cli_here):
    ckpt, det = checkpoint
    image = write_image(tmp_path / "one.png", 64, 64, seed=5)
    cli_here("predict", "--checkpoint", ckpt, image, "--out", tmp_path / "all", "--score-thresh", "0")
    cli_here("predict", "--checkpoint", ckpt, image, "--out", tmp_path / "none", "--score-thresh", "1")
    everything = json.loads((tmp_path / "all" / DETECTIONS_FILE).read_text())
    assert len(everything) == len(expected_detections(det, image, 0.0)) > 10
    assert json.loads((tmp_path / "none" / DETECTIONS_FILE).read_text()) == []
    # nothing drawn: the image comes back unchanged
    assert np.array_equal(np.asarray(Image.open(tmp_path / "none" / "one.png")), np.asarray(Image.open(image)))


def test_bad_inputs_are_one_line_errors(tmp_path, checkpoint, cli_here):
    ckpt, _ = checkpoint
    out = tmp_path / "out"
    one_line_error(cli_here("predict", "--checkpoint", ckpt, tmp_path / "nope.jpg", "--out", out, check=False),
                   "nope.jpg", "not found")
    text = tmp_path / "notes.png"
    text.write_text("hello")
    one_line_error(cli_here("predict", "--checkpoint", ckpt, text, "--out", out, check=False),
                   "notes.png", "unreadable image")
    folder = tmp_path / "mixed"
    write_image(folder / "good.png", 32, 32)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    one_line_error(cli_here("predict", "--checkpoint", ckpt, folder, "--out", out, check=False), "broken.jpg")
    (tmp_path / "empty").mkdir()
    one_line_error(cli_here("predict", "--checkpoint", ckpt, tmp_path / "empty", "--out", out, check=False),
                   "no image files")
    one_line_error(cli_here("predict", "--checkpoint", ckpt, folder / "good.png", "--out", folder, check=False),
                   "own folder")
    one_line_error(cli_here("predict", "--checkpoint", tmp_path / "missing.pt", folder / "good.png", "--out", out,
                            check=False), "missing.pt")
    assert not out.exists()  # nothing was written by a refused run


def test_report_gallery_shows_searched_and_baseline_detections(tmp_path, checkpoint):
    from data_builders import make_coco
    from detnas.config.runs import CHECKPOINT, RETRAIN_DETECTOR_DIR, retrain_dir
    from detnas.config.schema import DetectionSource
    from detnas.stages.report import GALLERY_IMAGES, GALLERY_SCORE, gallery

    ckpt, det = checkpoint
    ann, images = make_coco(tmp_path / "test", n_images=4, size=(80, 64))
    source = DetectionSource(annotations=ann, images=images)
    out = tmp_path / "run"
    assert gallery(out, source) == []  # no retrained detectors yet: no gallery
    for name in ("searched", "baseline"):
        target = retrain_dir(out, name, 0) / RETRAIN_DETECTOR_DIR / CHECKPOINT
        target.parent.mkdir(parents=True)
        target.write_bytes(ckpt.read_bytes())
    lines = gallery(out, source)
    rows = [line for line in lines if line.startswith("| img")]
    assert len(rows) == GALLERY_IMAGES == 3
    for k, row in enumerate(rows):
        n = len(expected_detections(det, images / f"img{k + 1}.png", GALLERY_SCORE))
        assert row == (f"| img{k + 1}.png | ![searched: {n} detections](gallery/searched-{k}.png) "
                       f"| ![baseline: {n} detections](gallery/baseline-{k}.png) |")
        assert Image.open(out / "gallery" / f"searched-{k}.png").size == (80, 64)
