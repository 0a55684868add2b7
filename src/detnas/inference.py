"""Using a retrained detector: load it from its checkpoint, evaluate it on a COCO or VOC set.

A retrained checkpoint (``detnas retrain``) holds the architecture, the search space, the class names,
the detector config and the weights of one standalone detector, so nothing else is needed to rebuild
it. Every problem with the file is a one-line ``UserError`` that names it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from detnas.checkpoint import load_checkpoint
from detnas.errors import UserError

RETRAIN_STAGE = "retrain"


def read_retrained(path: str | Path, purpose: str = "use") -> dict:
    """The checkpoint at ``path`` after checking it holds a retrained detector.

    A supernet checkpoint (``finetune``/``pretrain``) gets a one-line error that says to run
    ``detnas retrain`` first; ``purpose`` ("export", "evaluate") goes into that message.
    """
    data = load_checkpoint(path)
    stage = data.get("stage")
    if stage == "finetune":
        raise UserError(
            f"this is a supernet detector checkpoint (stage 'finetune'), not a standalone detector to {purpose}: "
            f"retrain the searched architecture with `detnas retrain` and {purpose} its checkpoint",
            path,
        )
    if stage != RETRAIN_STAGE:
        raise UserError(f"checkpoint is from stage '{stage}', expected a retrained detector (stage 'retrain')", path)
    for key, kind in (("space", dict), ("arch", str), ("classes", list), ("config", dict), ("model", dict)):
        if not isinstance(data.get(key), kind):
            raise UserError(f"retrained checkpoint lacks a valid '{key}' entry", path)
    if not isinstance(data["config"].get("detector"), dict):
        raise UserError("retrained checkpoint lacks the detector config ('config' -> 'detector')", path)
    return data


def load_trained_detector(path: str | Path, purpose: str = "use") -> tuple[nn.Module, dict]:
    """The retrained detector in ``path`` (in eval mode, on the CPU) and a description of it.

    ``info`` holds ``arch`` (digit string), ``space``, ``width_mult``, ``classes`` (names of labels
    1..K), ``detector`` (the ``DetectorConfig`` as a dict), ``kind`` and ``step``.
    """
    from detnas.detector import DetectorConfig, build_detector
    from detnas.space import ArchError, arch_to_str, get_space, parse_arch
    from detnas.supernet import ShuffleNetBackbone

    data = read_retrained(path, purpose)
    space_meta = data["space"]
    try:
        space = get_space(str(space_meta.get("space")), float(space_meta.get("width_mult", 1.0)))
        arch = parse_arch(data["arch"], space)
    except (ArchError, TypeError, ValueError) as e:
        raise UserError(f"bad architecture or search space in the checkpoint: {e}", path) from None
    try:
        cfg = DetectorConfig(**data["config"]["detector"])
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise UserError(f"bad detector config in the checkpoint: {where}: {first['msg']}", path) from None
    classes = [str(c) for c in data["classes"]]
    if not classes:
        raise UserError("retrained checkpoint has no classes", path)
    detector = build_detector(ShuffleNetBackbone(space, arch), len(classes), cfg)
    try:
        detector.load_state_dict(data["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        summary = " ".join(line.strip() for line in first[:2])
        raise UserError(f"the weights do not fit the detector the checkpoint describes: {summary}", path) from None
    info = {
        "arch": arch_to_str(arch),
        "space": space.name,
        "width_mult": float(space_meta.get("width_mult", 1.0)),
        "classes": classes,
        "kind": cfg.kind,
        "detector": cfg.model_dump(mode="json"),
        "step": data.get("step"),
    }
    return detector.eval(), info


def _gt_in_checkpoint_labels(dataset, classes: list[str], data_path) -> dict:
    """The dataset's ground truth with category ids = the checkpoint's labels, matched by class name.

    The dataset's own labels follow its categories (COCO ids, VOC names found), which need not be the
    checkpoint's order; classes the checkpoint knows but the data lacks simply have no ground truth.
    """
    label_of = {name: k for k, name in enumerate(classes, start=1)}
    unknown = [c for c in dataset.categories if c not in label_of]
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise UserError(
            f"the dataset has classes the detector was not trained on: {shown} (its classes: {', '.join(classes)})",
            data_path,
        )
    gt = dataset.to_coco()
    to_ckpt = {k: label_of[name] for k, name in enumerate(dataset.categories, start=1)}
    return {
        **gt,
        "annotations": [{**a, "category_id": to_ckpt[a["category_id"]]} for a in gt["annotations"]],
        "categories": [{"id": k, "name": name} for k, name in enumerate(classes, start=1)],
    }


def evaluate_checkpoint(
    path: str | Path, source, batch_size: int = 8, device: str | torch.device | None = None
) -> dict[str, float]:
    """COCO box metrics (AP, AP50, AP75, APs, APm, APl as fractions; -1 where COCO has nothing to
    score) of the retrained detector in ``path`` on ``source`` (a ``train_config.DetectionSource``),
    with the evaluation transform of the checkpoint's detector config (no flip).

    ``device`` defaults to CUDA when available, else the CPU.
    """
    detector, info = load_trained_detector(path, "evaluate")
    return evaluate_detector(detector, info, source, batch_size, device)


def evaluate_detector(
    detector: nn.Module, info: dict, source, batch_size: int = 8, device: str | torch.device | None = None
) -> dict[str, float]:
    """``evaluate_checkpoint`` for a detector already loaded with ``load_trained_detector``."""
    from detnas.data.sources import image_dir_of, load_detection
    from detnas.data.transforms import DetectionTransform
    from detnas.evaluate import detection_metrics

    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    cfg = info["detector"]
    dataset = load_detection(source, DetectionTransform(cfg["min_size"], cfg["max_size"], flip=False))
    data_path = source.annotations if source.format == "coco" else source.root
    if len(dataset) == 0:
        raise UserError(f"no images to evaluate (image folder {image_dir_of(source)})", data_path)
    gt = _gt_in_checkpoint_labels(dataset, info["classes"], data_path)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    return detection_metrics(detector.to(device), dataset, batch_size, gt=gt)
