"""Exporting a retrained detector (reading it back: ``weights.py``).

``export_model(checkpoint, out_dir)`` writes all files into a temp folder first and moves them into
``out_dir`` only when every one is complete (a failed export leaves ``out_dir`` as it was):

- ``backbone.safetensors``: the backbone with its FPN (``BackboneWithFPN`` state: ``body.*``, ``fpn.*``)
- ``detector.safetensors``: the whole detector (backbone, RPN and box heads, or RetinaNet's head)
- ``arch.json``: the architecture, space, width, FPN shape, feature map names, class names and the
  detector config; moved in last, so an ``arch.json`` means the export is complete
- ``detector.onnx`` (with ``onnx=True``, which needs the ``onnx`` package: ``pip install
  'detnas[export]'``): the whole detector for one image of any size.

Each safetensors file carries the SHA-256 of its tensors in its metadata (``sha256``), checked when
``weights.backbone(...)`` reads it.

ONNX: torchvision's detectors contain data-dependent control flow (NMS keeps a data-dependent number
of boxes), which ``torch.export`` cannot capture: in torch 2.14 the dynamo exporter
(``torch.onnx.export(..., dynamo=True)``) fails on them with ``GuardOnDataDependentSymNode`` inside
``batched_nms``. The TorchScript-based exporter (``dynamo=False``), which torchvision's own ONNX tests
use, traces them correctly, with dynamic image height and width, so that is the one used here.
"""

from __future__ import annotations

import copy
import json
import types
import warnings
from pathlib import Path

import torch
from torch import nn

from detnas.artifacts.weights import (
    ARCH_FILE,
    BACKBONE_FILE,
    CHECKSUM,
    DETECTOR_FILE,
    EXPORT_FORMAT,
    ONNX_FILE,
    load_trained_detector,
    tensors_sha256,
)
from detnas.atomic import atomic_write, staged_files, write_text_atomic
from detnas.errors import UserError

EXPORT_VERSION = 1
ONNX_OPSET = 17


def feature_names(kind: str) -> list[str]:
    """The names of the feature maps ``BackboneWithFPN`` returns (strides 4..64 or 8..128)."""
    return ["p2", "p3", "p4", "p5", "pool"] if kind == "fpn" else ["p3", "p4", "p5", "p6", "p7"]


def _save_safetensors(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    # safetensors refuses views and tensors sharing storage: give it contiguous copies
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    metadata = {**metadata, CHECKSUM: tensors_sha256(tensors)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


class OneImageDetector(nn.Module):
    """A torchvision detector as ``image -> (boxes, scores, labels)``: fixed output order (FasterRCNN
    and RetinaNet build their output dicts in different key orders) and a tensor input, for ONNX."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        # a shallow copy that shares the weights but has its own transform, so ``detector`` is unchanged
        self.detector = copy.copy(detector)
        self.detector._modules = dict(detector._modules)
        self.detector.transform = copy.copy(detector.transform)
        self.detector.transform.resize = types.MethodType(_resize_like_eager, self.detector.transform)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.detector([image])[0]
        return out["boxes"], out["scores"], out["labels"]


def _resize_like_eager(transform, image: torch.Tensor, target=None):
    """``GeneralizedRCNNTransform.resize`` at inference, traceable with the eager output size.

    torchvision's traced path computes the scale in float32, so where ``side * scale`` is a whole
    number (e.g. 100 * 96/100) ONNX can resize to one pixel less than PyTorch; here the size is
    computed as eager PyTorch does, ``floor(side * scale)`` in float64, and passed to the resize.
    """
    shape = torch._shape_as_tensor(image)[-2:].to(torch.float64)  # a traced value, not a constant
    # only 1-d tensors: the exporter computes with Python scalars and 0-d tensors in float32
    sides = torch.cat([shape.min(0, keepdim=True).values, shape.max(0, keepdim=True).values])
    limits = torch.tensor([transform.min_size[-1], transform.max_size], dtype=torch.float64)
    scale = (limits / sides).min(0, keepdim=True).values
    size = torch.floor(shape * scale).to(torch.int64)
    image = nn.functional.interpolate(image[None], size=(size[0], size[1]), mode="bilinear", align_corners=False)
    return image[0], target


def _export_onnx(detector: nn.Module, path: Path, min_size: int, max_size: int) -> None:
    """The whole detector for one image: input ``image`` float32 [3, H, W] RGB in [0, 1] (any H, W);
    outputs ``boxes`` [N, 4] (x1, y1, x2, y2 in the input's pixels), ``scores`` [N], ``labels`` [N]."""
    model = OneImageDetector(detector).eval()
    width = min(max_size, round(min_size * 4 / 3))
    image = torch.rand(3, min_size, width, generator=torch.Generator().manual_seed(0))

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python values; expected for these models
            torch.onnx.export(
                model, (image,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                input_names=["image"], output_names=["boxes", "scores", "labels"],
                dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "detections"},
                              "scores": {0: "detections"}, "labels": {0: "detections"}},
            )

    atomic_write(path, write)


def require_onnx() -> None:
    """The ONNX export needs the ``onnx`` package, which the plain install does not bring."""
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        raise UserError("the ONNX export needs the onnx package: pip install 'detnas[export]' "
                        "(or export without --onnx)")


def export_model(checkpoint: str | Path, out_dir: str | Path, onnx: bool = False) -> dict:
    """Export the retrained detector in ``checkpoint`` to ``out_dir`` (see the module docstring).

    Returns ``{"files": {name: path}, "arch": ..., "onnx_exporter": "torchscript" | None}``.
    A supernet (``finetune``) checkpoint is refused with a one-line error suggesting ``detnas retrain``.
    """
    from detnas.model.detector import DetectorConfig

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if onnx:
        require_onnx()
    detector, info = load_trained_detector(checkpoint, "export")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError("export folder is an existing file", out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the export folder: {e.strerror}", out_dir) from None
    cfg = DetectorConfig(**info["detector"])
    body = detector.backbone.body
    meta = {"format": EXPORT_FORMAT, "arch": info["arch"], "space": info["space"],
            "width_mult": str(info["width_mult"]), "kind": cfg.kind}

    files = {"backbone": BACKBONE_FILE, "detector": DETECTOR_FILE, "onnx": ONNX_FILE if onnx else None}
    exporter = "torchscript" if onnx else None
    arch_json = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "arch": info["arch"],
        "space": info["space"],
        "width_mult": info["width_mult"],
        "kind": cfg.kind,
        "fpn_channels": cfg.fpn_channels,
        "out_channels": detector.backbone.out_channels,
        "stage_channels": list(body.stage_channels),
        "feature_maps": feature_names(cfg.kind),
        "classes": info["classes"],
        "num_classes": len(info["classes"]),  # labels 1..K; torchvision's num_classes is K + 1
        "detector": info["detector"],
        "files": files,
        "onnx": None if not onnx else {
            "exporter": exporter, "opset": ONNX_OPSET,
            "input": "image: float32 [3, height, width], RGB in [0, 1], any size (resized inside)",
            "outputs": "boxes: float32 [N, 4] x1 y1 x2 y2 in input pixels; scores: float32 [N]; "
                       "labels: int64 [N] in 1..K",
        },
        "checkpoint": str(checkpoint),
        "step": info["step"],
    }
    state = detector.state_dict()
    prefix = "backbone."
    # a detector.onnx from an earlier export would not match this arch.json
    with staged_files(out_dir, ARCH_FILE, stale=() if onnx else (ONNX_FILE,)) as staging:
        _save_safetensors(staging / BACKBONE_FILE,
                          {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                          {**meta, "content": "BackboneWithFPN"})
        _save_safetensors(staging / DETECTOR_FILE, state, {**meta, "content": "detector"})
        if onnx:
            _export_onnx(detector, staging / ONNX_FILE, cfg.min_size, cfg.max_size)
        write_text_atomic(staging / ARCH_FILE, json.dumps(arch_json, indent=2) + "\n")
    written = {name: out_dir / f for name, f in files.items() if f is not None}
    return {"files": {**written, "arch": out_dir / ARCH_FILE}, "arch": info["arch"], "onnx_exporter": exporter}
