"""The detector's shape as a config section: pydantic only, so configs load without torchvision."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from detnas.strict import StrictModel

DetectorKind = Literal["fpn", "retinanet"]


class DetectorConfig(StrictModel):
    """Detector shape. Defaults are scaled for small images on a CPU; the paper's are in comments."""

    kind: DetectorKind = "fpn"
    fpn_channels: int = Field(64, ge=8)  # paper: 256
    box_head_channels: int = Field(256, ge=8)  # paper: 1024 (two-MLP head of FPN Faster R-CNN)
    anchor_size: int = Field(8, ge=1)  # anchor size at stride 4 (P2), doubling per level; paper: 32
    min_size: int = Field(128, ge=32)  # shorter image side; paper: 800
    max_size: int = Field(213, ge=32)  # longer side cap; paper: 1333
    rpn_pre_nms_top_n_train: int = Field(600, ge=1)  # paper: 2000
    rpn_post_nms_top_n_train: int = Field(300, ge=1)  # paper: 2000
    rpn_pre_nms_top_n_test: int = Field(300, ge=1)  # paper: 1000
    rpn_post_nms_top_n_test: int = Field(150, ge=1)  # paper: 1000
    box_batch_size_per_image: int = Field(128, ge=1)  # paper: 512
    detections_per_img: int = Field(100, ge=1)
    score_thresh: float = Field(0.05, ge=0, le=1)

    @model_validator(mode="after")
    def _sizes_in_order(self):
        if self.min_size > self.max_size:
            raise ValueError(f"min_size {self.min_size} is larger than max_size {self.max_size}")
        return self
