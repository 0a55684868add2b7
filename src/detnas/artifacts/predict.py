"""Running a retrained detector on image files (``detnas predict``): COCO-format detections and the
images with their boxes, class names and scores drawn.

``detections.json`` is a COCO results list (``image_id``, ``category_id``, ``bbox`` [x, y, w, h] in
original pixels, ``score``), as ``COCO.loadRes`` reads it; ``images.json`` holds the images (ids,
file names, sizes) and the categories those ids refer to.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import nn

from detnas.atomic import write_json_atomic
from detnas.data.images import check_image, load_rgb
from detnas.data.transforms import DetectionTransform
from detnas.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DETECTIONS_FILE = "detections.json"
IMAGES_FILE = "images.json"
# one colour per class, cycled: distinguishable on photos
PALETTE = ("red", "lime", "blue", "yellow", "magenta", "cyan", "orange", "white")


def image_files(path: Path) -> list[Path]:
    """The image files to run on: ``path`` itself, or the images directly in the folder ``path``
    (by suffix, sorted by name). Each one's header is read now, so a bad file stops the run before
    anything is written."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder", path)
    elif path.exists():
        files = [path]
    else:
        raise UserError("image file or folder not found", path)
    for f in files:
        check_image(f)
    return files


@torch.no_grad()
def detect(detector: nn.Module, info: dict, path: Path, score_thresh: float) -> tuple[Image.Image, dict]:
    """The decoded image and the detections scoring at least ``score_thresh`` on it (``boxes`` xyxy in
    original pixels, ``labels`` 1..K, ``scores``), with the evaluation resize of the detector's config."""
    cfg = info["detector"]
    image = load_rgb(path)
    tensor, _, scale = DetectionTransform(cfg["min_size"], cfg["max_size"])(image, torch.zeros(0, 4))
    device = next(detector.parameters()).device
    out = detector.eval()([tensor.to(device)])[0]
    keep = out["scores"] >= score_thresh
    return image, {"boxes": out["boxes"][keep].cpu() / scale, "labels": out["labels"][keep].cpu(),
                   "scores": out["scores"][keep].cpu()}


def draw(image: Image.Image, found: dict, classes: list[str]) -> Image.Image:
    """``image`` with each detection's box and "class score" drawn on it."""
    from torchvision.transforms.v2.functional import pil_to_tensor
    from torchvision.utils import draw_bounding_boxes

    if len(found["boxes"]) == 0:
        return image
    pixels = pil_to_tensor(image)
    labels = [int(k) for k in found["labels"]]
    drawn = draw_bounding_boxes(
        pixels, found["boxes"],
        labels=[f"{classes[k - 1]} {s:.2f}" for k, s in zip(labels, found["scores"].tolist())],
        colors=[PALETTE[(k - 1) % len(PALETTE)] for k in labels], width=max(1, min(image.size) // 150),
    )
    return Image.fromarray(drawn.permute(1, 2, 0).numpy())


def run_predict(checkpoint: Path, source: Path, out: Path, score_thresh: float = 0.5,
                device: str | None = None) -> dict:
    """Detect objects in ``source`` (an image or a folder of images) with the retrained detector in
    ``checkpoint``; writes ``detections.json``, ``images.json`` and each image with its detections
    drawn (same file name) into ``out``. Returns {"images": n, "detections": n, "files": [...]}."""
    from detnas.artifacts.weights import load_trained_detector

    if not 0 <= score_thresh <= 1:
        raise UserError(f"--score-thresh must lie in [0, 1], got {score_thresh}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError("--out must be a folder, and this is a file", out)
    files = image_files(source)
    if out.exists() and any(f.parent.resolve() == out.resolve() for f in files):
        raise UserError("--out is the images' own folder: the drawn images would replace them", out)
    detector, info = load_trained_detector(checkpoint, "predict")
    detector.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    classes = info["classes"]
    out.mkdir(parents=True, exist_ok=True)
    images, detections, written = [], [], []
    for image_id, path in enumerate(files, start=1):
        image, found = detect(detector, info, path, score_thresh)
        images.append({"id": image_id, "file_name": path.name, "width": image.width, "height": image.height})
        for (x1, y1, x2, y2), label, score in zip(found["boxes"].tolist(), found["labels"].tolist(),
                                                  found["scores"].tolist()):
            detections.append({"image_id": image_id, "category_id": int(label),
                               "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
        target = out / path.name
        draw(image, found, classes).save(target)
        written.append(target)
    write_json_atomic({"images": images, "categories": [{"id": k, "name": c} for k, c in enumerate(classes, 1)],
                       "checkpoint": str(checkpoint), "arch": info["arch"], "score_thresh": score_thresh},
                      out / IMAGES_FILE, indent=2)
    write_json_atomic(detections, out / DETECTIONS_FILE)
    return {"images": len(images), "detections": len(detections), "files": written}
