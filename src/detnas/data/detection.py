"""The detection dataset both readers (COCO JSON, Pascal VOC XML) produce.

Model labels are contiguous 1..K (0 is background, as torchvision's detectors expect); ``categories[k-1]``
is the name of label k. Annotations are kept in original-image pixels (xyxy, float64); images are
decoded lazily in ``__getitem__`` and not cached.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from detnas.atomic import write_json_atomic
from detnas.data.images import load_rgb
from detnas.data.seeding import sample_generator
from detnas.data.transforms import DetectionTransform
from detnas.errors import UserError

log = logging.getLogger("detnas")


@dataclass(frozen=True)
class ImageRecord:
    """One image and its objects in original pixels. ``ignore`` marks COCO crowd regions and VOC
    ``difficult`` objects: not trained on, and written with iscrowd=1 so the evaluator neither rewards
    nor penalizes detections on them."""

    image_id: int
    file_name: str  # as written in the annotation, relative to the image folder
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float64 xyxy, clipped to the image, non-degenerate
    labels: np.ndarray  # (N,) int64 in 1..K
    ignore: np.ndarray  # (N,) bool


def make_records(raw: list[dict], source: Path) -> list[ImageRecord]:
    """Clip boxes to their image, drop those left with zero width or height (one warning per file).

    ``raw`` items hold image_id, file_name, path, width, height and lists boxes (xyxy), labels, ignore."""
    records, dropped = [], 0
    for r in raw:
        boxes = np.asarray(r["boxes"], dtype=np.float64).reshape(-1, 4)
        boxes = np.clip(boxes, 0, [r["width"], r["height"], r["width"], r["height"]])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        dropped += int((~keep).sum())
        labels = np.asarray(r["labels"], dtype=np.int64).reshape(-1)[keep]
        ignore = np.asarray(r["ignore"], dtype=bool).reshape(-1)[keep]
        records.append(ImageRecord(
            r["image_id"], r["file_name"], r["path"], r["width"], r["height"], boxes[keep], labels, ignore
        ))
    if dropped:
        log.warning("%s: dropped %d boxes with zero width or height after clipping to the image", source, dropped)
    return records


class DetectionDataset(torch.utils.data.Dataset):
    """``dataset[i] -> (image, target)``: image float CHW in [0, 1]; target keys

    - ``boxes``: float32 (N, 4) xyxy in the returned image's pixels (ignored objects left out)
    - ``labels``: int64 (N,) in 1..K
    - ``image_id``: int
    - ``scale``: float, returned size / original size; divide predicted boxes by it to get original pixels
    - ``orig_size``: (height, width) of the original image

    Random flips are a function of (seed, epoch, image_id), so a resumed run sees the same ones: call
    ``set_epoch`` before reading an epoch's samples (in the process that reads them: DataLoader workers
    hold copies of the dataset; the training loop sends the epoch with each index, ``train.EpochIndexed``).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        categories: Sequence[str],
        transform: DetectionTransform | None = None,
        seed: int = 0,
    ):
        self.records = list(records)
        self.categories = list(categories)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    @property
    def image_ids(self) -> list[int]:
        return [r.image_id for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def with_transform(self, transform: DetectionTransform | None, seed: int | None = None) -> DetectionDataset:
        """The same images with another transform (e.g. a training and an evaluation view of one split)."""
        return self._view(self.records, transform, self.seed if seed is None else seed)

    def subset(self, indices: Sequence[int]) -> DetectionDataset:
        return self._view([self.records[i] for i in indices], self.transform, self.seed)

    def _view(self, records, transform, seed) -> DetectionDataset:
        view = DetectionDataset(records, self.categories, transform, seed)
        view.epoch = self.epoch
        return view

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        r = self.records[index]
        pil = load_rgb(r.path)
        if pil.size != (r.width, r.height):
            raise UserError(
                f"image is {pil.size[0]}x{pil.size[1]} but its annotation says {r.width}x{r.height}", r.path
            )
        keep = ~r.ignore
        boxes = torch.as_tensor(r.boxes[keep], dtype=torch.float32)
        if self.transform is None:
            image, scale = F.to_dtype(F.pil_to_tensor(pil), torch.float32, scale=True), 1.0
        else:
            generator = sample_generator(self.seed, self.epoch, r.image_id)
            image, boxes, scale = self.transform(pil, boxes, generator)
        target = {
            "boxes": boxes,
            "labels": torch.as_tensor(r.labels[keep]),
            "image_id": r.image_id,
            "scale": scale,
            "orig_size": (r.height, r.width),
        }
        return image, target

    def to_coco(self) -> dict:
        """Ground truth in COCO format, original pixels, category ids = model labels 1..K.

        ``area`` is the box area (there are no masks); ignored objects get iscrowd=1."""
        images, annotations = [], []
        for r in self.records:
            images.append({"id": r.image_id, "file_name": r.file_name, "width": r.width, "height": r.height})
            for (x1, y1, x2, y2), label, ignore in zip(r.boxes.tolist(), r.labels.tolist(), r.ignore.tolist()):
                w, h = x2 - x1, y2 - y1
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": r.image_id,
                    "category_id": label,
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": int(ignore),
                })
        categories = [{"id": k, "name": name} for k, name in enumerate(self.categories, start=1)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def save_coco(self, path: str | Path) -> None:
        write_json_atomic(self.to_coco(), Path(path))


def concat_datasets(parts: Sequence[DetectionDataset]) -> DetectionDataset:
    """One dataset of several (e.g. VOC2007 and VOC2012 trainval, the paper's VOC 07+12).

    Classes are matched by name: the first set's labels, then names new in later sets appended in
    their order. Image ids become 1..N over all sets (each set numbers its own from 1), and file names
    the images' absolute paths, so that a subset saved as COCO JSON (the search split) finds every
    image whichever folder it came from."""
    categories = list(parts[0].categories)
    for part in parts[1:]:
        categories += [name for name in part.categories if name not in categories]
    label_of = {name: k for k, name in enumerate(categories, start=1)}
    records = []
    for part in parts:
        to_merged = np.array([0] + [label_of[name] for name in part.categories], dtype=np.int64)
        records += [replace(r, image_id=i, file_name=str(Path(r.path).resolve()), labels=to_merged[r.labels])
                    for i, r in enumerate(part.records, start=len(records) + 1)]
    return DetectionDataset(records, categories)


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Detection batches stay lists: images differ in size and torchvision's detectors take lists."""
    images, targets = zip(*batch)
    return list(images), list(targets)
