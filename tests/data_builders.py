"""Tiny on-disk datasets for tests: COCO, Pascal VOC and ImageFolder layouts with random-pixel images;
and the tiny detector the tests build around them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# a detector small enough to train in seconds on a CPU (the paper's widths: 256 and 1024)
TINY_DETECTOR = {"fpn_channels": 16, "box_head_channels": 32, "min_size": 64, "max_size": 64}
# ... and cheap to train and test: few RoIs sampled per image, few proposals kept
TINY_TRAINED_DETECTOR = {**TINY_DETECTOR, "box_batch_size_per_image": 16, "rpn_post_nms_top_n_test": 20}


def write_image(path: Path, width: int, height: int, seed: int = 0, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 3 if mode == "RGB" else 1
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(path)
    return path


def make_coco(
    root: Path,
    n_images: int = 4,
    size: tuple[int, int] = (64, 48),
    categories: dict[int, str] | None = None,
    objects: dict[int, list[tuple[int, list[float]]]] | None = None,
    crowd: dict[int, list[tuple[int, list[float]]]] | None = None,
    image_folder: str = "images",
    annotation_file: str = "annotations.json",
) -> tuple[Path, Path]:
    """``root/images/img<i>.png`` (``size`` = width, height) and ``root/annotations.json``; other names
    with ``image_folder`` and ``annotation_file`` (COCO's: ``train2017``, ``annotations/instances_train2017.json``).

    Image ids are 1..n_images. ``objects`` maps an image id to (category id, [x, y, w, h]) pairs;
    ``crowd`` the same for iscrowd=1 regions. Defaults: categories {1: "cat", 2: "dog"}; image i holds
    one cat [4i, 2i, 10, 8] and, for odd i, one dog [30, 20, 12, 16]. Returns (ann_file, image_dir).
    """
    categories = categories or {1: "cat", 2: "dog"}
    if objects is None:
        objects = {i: [(1, [4 * i, 2 * i, 10, 8])] + ([(2, [30, 20, 12, 16])] if i % 2 else [])
                   for i in range(1, n_images + 1)}
    image_dir = root / image_folder
    images, annotations = [], []
    for i in range(1, n_images + 1):
        write_image(image_dir / f"img{i}.png", *size, seed=i)
        images.append({"id": i, "file_name": f"img{i}.png", "width": size[0], "height": size[1]})
    for iscrowd, table in ((0, objects), (1, crowd or {})):
        for image_id, objs in table.items():
            for cat_id, bbox in objs:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_id,
                                    "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": iscrowd})
    ann_file = root / annotation_file
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": k, "name": v} for k, v in categories.items()],
    }))
    return ann_file, image_dir


def make_voc(
    root: Path,
    objects: dict[str, list[tuple]] | None = None,
    size: tuple[int, int] = (64, 48),
    splits: dict[str, list[str]] | None = None,
) -> Path:
    """``root/{Annotations,JPEGImages,ImageSets/Main}``. ``objects`` maps an image id to
    (name, (xmin, ymin, xmax, ymax)[, difficult]) in VOC's 1-based inclusive pixels. Default: two
    images, "000001" with a dog and a difficult person, "000002" with a cat. Returns root."""
    if objects is None:
        objects = {"000001": [("dog", (11, 6, 30, 25)), ("person", (1, 1, 64, 48), 1)],
                   "000002": [("cat", (5, 5, 20, 40))]}
    for n, (stem, objs) in enumerate(objects.items()):
        write_image(root / "JPEGImages" / f"{stem}.jpg", *size, seed=n)
        xml = [f"<annotation><filename>{stem}.jpg</filename>",
               f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"]
        for name, (x1, y1, x2, y2), *difficult in objs:
            xml.append(f"<object><name>{name}</name><difficult>{difficult[0] if difficult else 0}</difficult>"
                       f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>"
                       "</object>")
        xml.append("</annotation>")
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text("".join(xml))
    for split, stems in (splits or {}).items():
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    return root


def make_image_folder(
    root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 3, size: int = 16, mode: str = "L"
) -> Path:
    """``root/<class>/<i>.png``, ``per_class`` random images of size x size per class. Returns root."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / f"{i}.png", size, size, seed=100 * c + i, mode=mode)
    return root


# a retrained detector, as `detnas retrain` saves it (evaluate, export and predict read it)
RETRAINED_ARCH = "21202112331300313132"  # COCO-FPN-300M: all four block choices, Small space
RETRAINED_CLASSES = ["cat", "dog"]


def retrained_detector_cfg(kind: str = "fpn"):
    from detnas.model.detector import DetectorConfig

    return DetectorConfig(kind=kind, fpn_channels=16, box_head_channels=32, min_size=64, max_size=96,
                          rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100, score_thresh=0.0)


def make_retrained(path, kind: str = "fpn", classes=RETRAINED_CLASSES, stage: str = "retrain"):
    """A retrained-detector checkpoint as ``detnas retrain`` writes it, with weights that give many
    detections with distinct scores: BN statistics computed on random images (not the identity that
    fresh BN layers hold) and RetinaNet's near-constant initial classification head randomised."""
    import torch

    from detnas.checkpoint import save_checkpoint
    from detnas.model.detector import build_detector
    from detnas.model.evaluate import detector_backbone_forward, recalibrate_bn
    from detnas.model.space import get_space, parse_arch
    from detnas.model.supernet import ShuffleNetBackbone

    torch.manual_seed(0)
    space = get_space("small")
    cfg = retrained_detector_cfg(kind)
    det = build_detector(ShuffleNetBackbone(space, parse_arch(RETRAINED_ARCH, space)), len(classes), cfg)
    g = torch.Generator().manual_seed(1)
    recalibrate_bn(det, detector_backbone_forward(det), [[torch.rand(3, 64, 80, generator=g) for _ in range(4)]
                                                         for _ in range(4)])
    if kind == "retinanet":
        with torch.no_grad():
            for m in det.head.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.weight.normal_(0, 0.05)
    det.eval()
    save_checkpoint(path, {
        "stage": stage, "space": {"space": "small", "width_mult": 1.0}, "arch": RETRAINED_ARCH,
        "classes": list(classes), "config": {"seed": 0, "detector": cfg.model_dump(mode="json")},
        "model": det.state_dict(), "step": 7, "optimizer": {}, "rng": {},
    })
    return det


def coco_source(annotations: Path, images: Path) -> dict:
    """A COCO detection source as a config writes it (``coco_source(*make_coco(root))``)."""
    return {"format": "coco", "annotations": str(annotations), "images": str(images)}


def merged(base: dict, update: dict) -> dict:
    """``base`` with ``update`` on top: nested dicts are merged key by key, other values replace."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def finetune_cfg(source: dict, init: Path | None = None, **sections) -> dict:
    """A finetuning config that trains a tiny detector on the detection source ``source`` in seconds,
    from the pretraining checkpoint ``init`` if given; ``sections`` are merged on top (see ``merged``)."""
    return merged({
        "seed": 5,
        "init": None if init is None else str(init),
        "data": {"train": source, "holdout": {"size": 2, "seed": 1}},
        "detector": {"min_size": 64, "max_size": 96},
        "train": {"iters": 5, "batch_size": 2, "lr": 0.01, "weight_decay": 1e-4, "grad_clip": 10.0},
        "logging": {"log_every": 1, "checkpoint_every": 100, "progress": False},
        "eval": {"archs": ["0" * 20], "recalib_images": 4, "batch_size": 2},
    }, sections)


def make_standard_layouts(root: Path) -> Path:
    """Tiny datasets in the folder layouts the packaged configs expect under ``--data-root root``:
    COCO (``annotations/instances_{train,val}2017.json``, ``train2017/``, ``val2017/``), Pascal VOC
    (``VOCdevkit/VOC2012`` trainval, ``VOCdevkit/VOC2007`` test) and ImageNet (``imagenet/{train,val}/<class>/``)."""
    for split, n in (("train", 6), ("val", 2)):
        make_coco(root, n_images=n, image_folder=f"{split}2017",
                  annotation_file=f"annotations/instances_{split}2017.json")
    objects = {f"{i:06d}": [("dog" if i % 2 else "cat", (4, 5, 24, 30))] for i in range(1, 7)}
    make_voc(root / "VOCdevkit" / "VOC2012", objects=objects, splits={"trainval": sorted(objects)})
    make_voc(root / "VOCdevkit" / "VOC2007", objects=objects, splits={"test": sorted(objects)[:2]})
    for split in ("train", "val"):
        make_image_folder(root / "imagenet" / split, classes=("a", "b"), per_class=2)
    return root
