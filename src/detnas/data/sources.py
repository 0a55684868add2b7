"""Reading a configured detection source (``train_config.DetectionSource``) with its format's reader."""

from __future__ import annotations

from pathlib import Path

from detnas.data.coco import load_coco
from detnas.data.detection import DetectionDataset
from detnas.data.voc import load_voc


def image_dir_of(source) -> Path:
    """Where the images of a ``train_config.DetectionSource`` live (COCO file names are relative to it)."""
    return Path(source.images) if source.format == "coco" else Path(source.root) / "JPEGImages"


def load_detection(source, transform=None, seed: int = 0) -> DetectionDataset:
    """Read a ``train_config.DetectionSource`` with the reader of its format."""
    if source.format == "coco":
        data = load_coco(source.annotations, source.images)
    else:
        data = load_voc(source.root, source.split)
    return data.with_transform(transform, seed)
