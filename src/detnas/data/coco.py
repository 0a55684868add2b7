"""COCO-format detection data: one annotation JSON and a folder of images."""

from __future__ import annotations

import math
from pathlib import Path

from detnas.data.detection import DetectionDataset, make_records
from detnas.errors import UserError, read_json


def load_coco(ann_file: str | Path, image_dir: str | Path) -> DetectionDataset:
    """Read a COCO detection JSON; categories sorted by id become labels 1..K.

    Crowd annotations (iscrowd=1) are kept as ignore regions. ``annotations`` may be absent (images
    without objects). Every listed image must exist; decoding errors surface when an image is loaded.
    """
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    data = read_json(ann_file, "annotation file")
    where = _Where(ann_file)
    if not isinstance(data, dict):
        raise UserError("expected a JSON object with 'images', 'annotations' and 'categories'", ann_file)

    label_of, names = {}, []
    cats = [(where.integer(c, "id", f"categories[{i}]"), where.string(c, "name", f"categories[{i}]"), i)
            for i, c in enumerate(where.items(data, "categories"))]
    for cat_id, name, i in sorted(cats):
        if cat_id in label_of:
            raise UserError(f"categories[{i}]: duplicate category id {cat_id}", ann_file)
        label_of[cat_id] = len(names) + 1
        names.append(name)

    if not image_dir.is_dir():
        raise UserError("image folder not found", image_dir)
    raw: dict[int, dict] = {}
    for i, im in enumerate(where.items(data, "images")):
        at = f"images[{i}]"
        image_id = where.integer(im, "id", at)
        if image_id in raw:
            raise UserError(f"{at}: duplicate image id {image_id}", ann_file)
        file_name = where.string(im, "file_name", at)
        path = image_dir / file_name
        if not path.is_file():
            raise UserError(f"image listed in {ann_file} not found", path)
        raw[image_id] = {
            "image_id": image_id, "file_name": file_name, "path": path,
            "width": where.integer(im, "width", at, positive=True),
            "height": where.integer(im, "height", at, positive=True),
            "boxes": [], "labels": [], "ignore": [],
        }

    for i, a in enumerate(where.items(data, "annotations", required=False)):
        at = f"annotations[{i}]"
        image_id, cat_id = where.integer(a, "image_id", at), where.integer(a, "category_id", at)
        if image_id not in raw:
            raise UserError(f"{at}: image_id {image_id} is not in 'images'", ann_file)
        if cat_id not in label_of:
            raise UserError(f"{at}: category_id {cat_id} is not in 'categories'", ann_file)
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise UserError(f"{at}: 'bbox' must be [x, y, width, height]", ann_file)
        crowd = a.get("iscrowd", 0)
        if crowd not in (0, 1):
            raise UserError(f"{at}: 'iscrowd' must be 0 or 1", ann_file)
        x, y, w, h = bbox
        r = raw[image_id]
        r["boxes"].append((x, y, x + w, y + h))
        r["labels"].append(label_of[cat_id])
        r["ignore"].append(bool(crowd))

    return DetectionDataset(make_records(list(raw.values()), ann_file), names)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _Where:
    """Field checks whose errors name the annotation file and the JSON location."""

    def __init__(self, path: Path):
        self.path = path

    def items(self, obj: dict, key: str, required: bool = True) -> list:
        if key not in obj and not required:
            return []
        value = obj.get(key)
        if not isinstance(value, list):
            raise UserError(f"'{key}' must be a list" if key in obj else f"missing key '{key}'", self.path)
        return value

    def _get(self, obj, key: str, at: str):
        if not isinstance(obj, dict):
            raise UserError(f"{at}: expected an object", self.path)
        if key not in obj:
            raise UserError(f"{at}: missing key '{key}'", self.path)
        return obj[key]

    def integer(self, obj, key: str, at: str, positive: bool = False) -> int:
        v = self._get(obj, key, at)
        # Some converters write whole numbers as floats (640.0).
        if not (_is_number(v) and v == int(v)) or (positive and v <= 0):
            raise UserError(f"{at}: '{key}' must be a {'positive ' if positive else ''}integer, got {v!r}", self.path)
        return int(v)

    def string(self, obj, key: str, at: str) -> str:
        v = self._get(obj, key, at)
        if not isinstance(v, str) or not v:
            raise UserError(f"{at}: '{key}' must be a non-empty string", self.path)
        return v
