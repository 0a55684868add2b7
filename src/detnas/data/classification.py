"""Classification data for supernet pretraining: an ImageFolder (one sub-folder per class)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from detnas.data.images import check_image, load_rgb
from detnas.data.seeding import sample_seed
from detnas.errors import UserError

# ImageNet statistics: what ShuffleNetV2-style backbones are trained with.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class ClassificationTransform:
    """A PIL image to a normalized float32 CHW tensor, after optional PIL geometry (torchvision v2
    transforms). The same numbers as ``v2.Compose([*geometry, ToImage(), ToDtype(float32, scale=True),
    Normalize(MEAN, STD)])``, in four tensor operations: v2's per-transform dispatch cost more than the
    arithmetic on a 32 px image (0.09 of a demo sample's 0.38 ms, BENCHMARKS.md)."""

    def __init__(self, geometry: list[v2.Transform]):
        self.geometry = v2.Compose(geometry) if geometry else None
        self.mean = torch.tensor(MEAN).view(-1, 1, 1)
        self.std = torch.tensor(STD).view(-1, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self.geometry is not None:
            image = self.geometry(image)
        # HWC bytes viewed as CHW, as torchvision's pil_to_tensor does; scaled as its to_dtype, then normalized
        pixels = torch.from_numpy(np.array(image, np.uint8, copy=True)).permute(2, 0, 1)
        return pixels.to(torch.float32).mul_(1.0 / 255).sub_(self.mean).div_(self.std)


def classification_transform(size: int, train: bool, flip: bool = False,
                             min_crop: float = 0.25) -> ClassificationTransform:
    """Train: random-resized crop (area fraction in [min_crop, 1]) to size x size, optional horizontal flip.
    Eval: resize the shorter side to size / 0.875, center crop size x size.

    Flip is off by default because it changes the meaning of some classes (digits, text).
    """
    if train:
        geometry = [v2.RandomResizedCrop(size, scale=(min_crop, 1.0), antialias=True)]
        if flip:
            geometry.append(v2.RandomHorizontalFlip())
    else:
        geometry = [v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)]
    return ClassificationTransform(geometry)


def normalized_tensor() -> ClassificationTransform:
    """No geometry: tensor and normalization only (the default, for images that already share one size)."""
    return ClassificationTransform([])


class ImageFolderDataset(torch.utils.data.Dataset):
    """``root/<class name>/<image>``; classes are the sorted sub-folder names, labels their positions.

    Every file is header-checked at construction, so a bad file fails the run before training starts.
    Random augmentation is seeded per sample from (seed, epoch, index): call ``set_epoch`` before
    reading an epoch's samples (in the process that reads them, see ``train.EpochIndexed``).
    """

    def __init__(self, root: str | Path, transform: Callable | None = None, seed: int = 0):
        self.root = Path(root)
        self.transform = transform or normalized_tensor()
        self.seed = seed
        self.epoch = 0
        if not self.root.is_dir():
            raise UserError("image folder not found", self.root)
        class_dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise UserError("no class sub-folders (expected root/<class>/<image>)", self.root)
        self.classes = [d.name for d in class_dirs]
        self.samples: list[tuple[Path, int]] = []
        for label, d in enumerate(class_dirs):
            files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
            if not files:
                raise UserError(f"class folder has no images ({', '.join(IMG_EXTENSIONS)})", d)
            self.samples += [(p, label) for p in files]
        for path, _ in self.samples:
            check_image(path)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = load_rgb(path)
        # torchvision transforms draw from the global CPU RNG: give it this sample's seed, then restore it.
        # Only the CPU generator: torch.manual_seed also queues a seeding of every accelerator, recording
        # a stack trace for each (0.8 ms a sample, a quarter of a 32 px training step).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, index))
            return self.transform(image), label

