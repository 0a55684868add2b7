"""Reading a configured detection source (``configs.DetectionSource``) with its format's reader."""

from __future__ import annotations

from pathlib import Path

from detnas.data.coco import load_coco
from detnas.data.detection import DetectionDataset
from detnas.data.voc import load_voc
from detnas.errors import UserError


def image_dir_of(source) -> Path:
    """Where the images of a ``configs.DetectionSource`` live (COCO file names are relative to it)."""
    return Path(source.images) if source.format == "coco" else Path(source.root) / "JPEGImages"


def load_detection(source, transform=None, seed: int = 0) -> DetectionDataset:
    """Read a ``configs.DetectionSource`` with the reader of its format."""
    if source.format == "coco":
        data = load_coco(source.annotations, source.images)
    else:
        data = load_voc(source.root, source.split)
    return data.with_transform(transform, seed)


def load_training_set(source, transform=None, seed: int = 0) -> DetectionDataset:
    """``load_detection`` for training a detector: a set with no object to learn from is refused."""
    data = load_detection(source, transform, seed)
    boxes = sum(int((~r.ignore).sum()) for r in data.records)
    if boxes == 0:
        where = source.annotations if source.format == "coco" else source.root
        raise UserError(f"no objects to train a detector on: {len(data)} images and 0 boxes "
                        "(crowd and difficult objects are not trained on)", where)
    return data
