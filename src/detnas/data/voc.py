"""Pascal VOC detection data: ``root/Annotations/*.xml``, ``root/JPEGImages/``, optional
``root/ImageSets/Main/<split>.txt``."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from detnas.data.detection import DetectionDataset, make_records
from detnas.data.images import check_image
from detnas.errors import UserError


def load_voc(root: str | Path, split: str | None = None, classes: Sequence[str] | None = None) -> DetectionDataset:
    """Read a VOC folder (all annotations, or those listed in ImageSets/Main/<split>.txt).

    Classes default to the sorted union of object names over *all* XML files, so every split of one
    root gets the same labels; pass ``classes`` to fix the order. Image ids are 1-based positions in
    the sorted list of all annotation files (also the same in every split). VOC's 1-based inclusive
    pixel coordinates become continuous ones: (xmin - 1, ymin - 1, xmax, ymax). ``difficult``
    objects are ignore regions, as VOC's own evaluation treats them.
    """
    root = Path(root)
    ann_dir, img_dir = root / "Annotations", root / "JPEGImages"
    if not root.is_dir():
        raise UserError("VOC folder not found", root)
    if not ann_dir.is_dir():
        raise UserError("missing the 'Annotations' folder of a Pascal VOC dataset", ann_dir)
    all_ids = sorted(p.stem for p in ann_dir.glob("*.xml"))
    if not all_ids:
        raise UserError("no .xml annotation files", ann_dir)
    parsed = {stem: _parse(ann_dir / f"{stem}.xml") for stem in all_ids}
    ids = all_ids if split is None else _read_split(root / "ImageSets" / "Main" / f"{split}.txt", ann_dir)

    if classes is None:
        classes = sorted({name for p in parsed.values() for name, _, _ in p["objects"]})
    label_of = {name: k for k, name in enumerate(classes, start=1)}
    image_id_of = {stem: i for i, stem in enumerate(all_ids, start=1)}

    raw = []
    for stem in ids:
        p, xml = parsed[stem], ann_dir / f"{stem}.xml"
        path = _image_path(img_dir, stem, p["filename"], xml)
        width, height = p["size"] or check_image(path)
        for name, _, _ in p["objects"]:
            if name not in label_of:
                raise UserError(f"object class '{name}' is not one of the given classes", xml)
        raw.append({
            "image_id": image_id_of[stem], "file_name": path.name, "path": path, "width": width, "height": height,
            "boxes": [box for _, box, _ in p["objects"]],
            "labels": [label_of[name] for name, _, _ in p["objects"]],
            "ignore": [difficult for _, _, difficult in p["objects"]],
        })
    return DetectionDataset(make_records(raw, ann_dir), classes)


def _read_split(path: Path, ann_dir: Path) -> list[str]:
    try:
        ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise UserError("split file not found", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read split file: {e}", path) from None
    for stem in ids:
        if not (ann_dir / f"{stem}.xml").is_file():
            raise UserError(f"'{stem}' is listed in {path} but has no annotation", ann_dir / f"{stem}.xml")
    return ids


def _image_path(img_dir: Path, stem: str, filename: str | None, xml: Path) -> Path:
    # The VOC convention is JPEGImages/<id>.jpg; labelling tools writing other formats set <filename>.
    candidates = [img_dir / f"{stem}.jpg"] + ([img_dir / filename] if filename else [])
    for path in candidates:
        if path.is_file():
            return path
    raise UserError(f"image for {xml} not found", candidates[-1])


def _parse(xml: Path) -> dict:
    try:
        tree = ET.parse(xml)
    except ET.ParseError as e:
        raise UserError(f"malformed XML: {e}", xml) from None
    except OSError as e:
        raise UserError(f"cannot read annotation file: {e}", xml) from None
    top = tree.getroot()
    try:
        size = int(top.findtext("size/width", "0")), int(top.findtext("size/height", "0"))
    except ValueError:
        raise UserError("<size> width and height must be integers", xml) from None
    objects = []
    for i, obj in enumerate(top.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise UserError(f"object {i}: missing <name>", xml)
        try:
            x1, y1, x2, y2 = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise UserError(f"object {i} ({name}): <bndbox> needs numeric xmin, ymin, xmax, ymax", xml) from None
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        objects.append((name, (x1 - 1, y1 - 1, x2, y2), difficult))
    return {"filename": top.findtext("filename"), "size": size if min(size) > 0 else None, "objects": objects}
