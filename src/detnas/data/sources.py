"""Reading a configured detection source (``configs.DetectionSource``) with its format's reader."""

from __future__ import annotations

from pathlib import Path

from detnas.data.coco import load_coco
from detnas.data.detection import DetectionDataset, concat_datasets
from detnas.data.voc import load_voc
from detnas.errors import UserError


def image_dir_of(source) -> Path:
    """Where the images of a ``configs.DetectionSource`` live (COCO file names are relative to it); of a
    list of sources, the first's (the file names of several sets read as one are absolute paths)."""
    if isinstance(source, list):
        return image_dir_of(source[0])
    return Path(source.images) if source.format == "coco" else Path(source.root) / "JPEGImages"


def source_path(source) -> Path:
    """The file or folder that names a source (or the first of a list) in messages."""
    if isinstance(source, list):
        return source_path(source[0])
    return Path(source.annotations if source.format == "coco" else source.root)


def load_detection(source, transform=None, seed: int = 0) -> DetectionDataset:
    """Read a ``configs.DetectionSource`` with the reader of its format; a list of them as one set
    (``detection.concat_datasets``: classes matched by name, e.g. VOC 07+12)."""
    if isinstance(source, list):
        data = concat_datasets([load_detection(s) for s in source]) if len(source) > 1 else load_detection(source[0])
    elif source.format == "coco":
        data = load_coco(source.annotations, source.images)
    else:
        data = load_voc(source.root, source.split)
    return data.with_transform(transform, seed)


def load_training_set(source, transform=None, seed: int = 0) -> DetectionDataset:
    """``load_detection`` for training a detector: a set with no object to learn from is refused."""
    data = load_detection(source, transform, seed)
    boxes = sum(int((~r.ignore).sum()) for r in data.records)
    if boxes == 0:
        where = source_path(source)
        raise UserError(f"no objects to train a detector on: {len(data)} images and 0 boxes "
                        "(crowd and difficult objects are not trained on)", where)
    return data
