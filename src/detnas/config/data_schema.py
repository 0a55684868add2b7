"""The data a stage reads: classification folders, COCO or VOC detection sets, the search split held
out of them, and how many DataLoader workers decode them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from detnas.strict import StrictModel

# DataLoader worker processes per training process; "auto" (the default): from the CPU count, see
# data.loading.data_workers
DataWorkers = Annotated[int, Field(ge=0)] | Literal["auto"]


class ClassificationData(StrictModel):
    train: Path
    val: Path
    image_size: int = Field(32, ge=8)
    flip: bool = False
    workers: DataWorkers = "auto"


class DetectionSource(StrictModel):
    """A COCO (annotation JSON + image folder) or Pascal VOC (root with Annotations/, JPEGImages/) set."""

    format: Literal["coco", "voc"] = "coco"
    annotations: Path | None = None  # coco
    images: Path | None = None  # coco
    root: Path | None = None  # voc
    split: str | None = None  # voc: ImageSets/Main/<split>.txt

    @model_validator(mode="after")
    def _fields_of_the_format(self):
        need = ("annotations", "images") if self.format == "coco" else ("root",)
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"a {self.format} data source needs {' and '.join(missing)}")
        return self


class HoldoutConfig(StrictModel):
    """The search split: images carved out of the training set by a seeded draw, never trained on."""

    size: int = Field(0, ge=0)
    seed: int = 0


class DetectionData(StrictModel):
    train: DetectionSource | Annotated[list[DetectionSource], Field(min_length=1)]  # several: one set (VOC 07+12)
    test: DetectionSource | None = None
    holdout: HoldoutConfig = HoldoutConfig()
    flip: bool = True
    workers: DataWorkers = "auto"
