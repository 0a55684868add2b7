"""Detection transforms: aspect-preserving resize and horizontal flip, boxes moved with the pixels."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F


class DetectionTransform:
    """Resize so the shorter side is ``size`` and the longer at most ``max_size``; with ``flip``, mirror
    horizontally with probability 0.5 (training). Returns (image float CHW in [0, 1], boxes, scale).

    Boxes are multiplied by the same ``scale`` that is reported, so dividing predictions by it maps
    them back exactly; the image itself is rounded to whole pixels (at most half a pixel off).
    The flip draw comes from ``generator``; the dataset derives it from (seed, epoch, image_id).
    """

    def __init__(self, size: int, max_size: int, flip: bool = False):
        if size <= 0 or max_size < size:
            raise ValueError(f"need 0 < size <= max_size, got size={size}, max_size={max_size}")
        self.size = size
        self.max_size = max_size
        self.flip = flip

    def __repr__(self) -> str:
        return f"DetectionTransform(size={self.size}, max_size={self.max_size}, flip={self.flip})"

    def scale_for(self, width: int, height: int) -> float:
        return min(self.size / min(width, height), self.max_size / max(width, height))

    def __call__(
        self, image: Image.Image, boxes: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        width, height = image.size
        scale = self.scale_for(width, height)
        new_size = [max(1, round(height * scale)), max(1, round(width * scale))]
        image = F.resize(image, new_size, antialias=True)
        out = F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)
        boxes = boxes * scale
        if self.flip and torch.rand((), generator=generator) < 0.5:
            out = F.horizontal_flip(out)
            boxes = torch.stack([new_size[1] - boxes[:, 2], boxes[:, 1], new_size[1] - boxes[:, 0], boxes[:, 3]], 1)
        return out, boxes, scale
