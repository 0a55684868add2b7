"""Exporting a retrained detector, and loading its backbone into your own torchvision detector.

``export_model(checkpoint, out_dir)`` writes all files into a temp folder first and moves them into
``out_dir`` only when every one is complete (a failed export leaves ``out_dir`` as it was):

- ``backbone.safetensors``: the backbone with its FPN (``BackboneWithFPN`` state: ``body.*``, ``fpn.*``)
- ``detector.safetensors``: the whole detector (backbone, RPN and box heads, or RetinaNet's head)
- ``arch.json``: the architecture, space, width, FPN shape, feature map names, class names and the
  detector config; moved in last, so an ``arch.json`` means the export is complete
- ``detector.onnx`` (with ``onnx=True``, which needs the ``onnx`` package: ``pip install
  'detnas[export]'``): the whole detector for one image of any size.

Each safetensors file carries the SHA-256 of its tensors in its metadata (``sha256``), checked when
``backbone(...)`` reads it.

ONNX: torchvision's detectors contain data-dependent control flow (NMS keeps a data-dependent number
of boxes), which ``torch.export`` cannot capture: in torch 2.14 the dynamo exporter
(``torch.onnx.export(..., dynamo=True)``) fails on them with ``GuardOnDataDependentSymNode`` inside
``batched_nms``. The TorchScript-based exporter (``dynamo=False``), which torchvision's own ONNX tests
use, traces them correctly, with dynamic image height and width, so that is the one used here.

``backbone(...)`` (also ``detnas.backbone``) builds the backbone for a plain torchvision detector.
"""

from __future__ import annotations

import copy
import json
import os
import types
import warnings
from pathlib import Path

import torch
from torch import nn

from detnas.atomic import atomic_write, staged_files, write_text_atomic
from detnas.digest import content_sha256
from detnas.errors import UserError, read_json

BACKBONE_FILE = "backbone.safetensors"
DETECTOR_FILE = "detector.safetensors"
ARCH_FILE = "arch.json"
ONNX_FILE = "detector.onnx"
EXPORT_FORMAT = "detnas-export"
EXPORT_VERSION = 1
ONNX_OPSET = 17
CHECKSUM = "sha256"
DEFAULT_FPN_CHANNELS = 256  # torchvision's and the paper's; exports carry their own


def feature_names(kind: str) -> list[str]:
    """The names of the feature maps ``BackboneWithFPN`` returns (strides 4..64 or 8..128)."""
    return ["p2", "p3", "p4", "p5", "pool"] if kind == "fpn" else ["p3", "p4", "p5", "p6", "p7"]


def _save_safetensors(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    # safetensors refuses views and tensors sharing storage: give it contiguous copies
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    metadata = {**metadata, CHECKSUM: _tensors_sha256(tensors)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    return content_sha256(dict(sorted(tensors.items())))  # safetensors does not keep the order


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``path``, checked against the checksum in its metadata when it has one."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            stored = (f.metadata() or {}).get(CHECKSUM)
    except Exception as e:  # safetensors raises its own error type for truncated or foreign files
        raise UserError(f"not a readable safetensors file: {str(e).splitlines()[0]}", path) from None
    if stored is not None and stored != _tensors_sha256(state):
        raise UserError("weights file is damaged: its tensors do not match the checksum stored in it", path)
    return state


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
    from detnas.detector import DetectorConfig
    from detnas.inference import load_trained_detector

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


def _read_arch_json(path: Path) -> dict:
    data = read_json(path, "arch file")
    if not isinstance(data, dict):
        raise UserError("expected a JSON object (an arch.json written by `detnas export`)", path)
    for key in ("arch", "space"):
        if not isinstance(data.get(key), str):
            raise UserError(f"missing or invalid '{key}' (an arch.json written by `detnas export`)", path)
    return data


WEIGHT_STAGES = ("retrain", "retrain-pretrain", "pretrain", "finetune")


def _read_weights(path: Path, arch, space_meta: dict) -> tuple[dict, bool]:
    """The state of ``arch``'s ``BackboneWithFPN`` held by ``path`` (keys ``body.*``, ``fpn.*``), and
    whether it holds the body only (a classification network: the FPN keeps its fresh initialisation).

    ``path``: an exported ``backbone.safetensors`` or ``detector.safetensors``, or one of our
    checkpoints: a retrained detector, a retrain-pretraining network, or a supernet (pretrain or
    finetune), whose weights on ``arch``'s path are taken.
    """
    from detnas.space import arch_to_str
    from detnas.supernet import supernet_key_to_subnet

    if not path.is_file():
        raise UserError("weights file not found", path)
    stage = None
    if path.suffix == ".safetensors":
        state = _load_safetensors(path)
    else:
        from detnas.checkpoint import load_checkpoint

        data = load_checkpoint(path, WEIGHT_STAGES, space_meta)
        stage, state = data["stage"], data.get("model")
        if not isinstance(state, dict):
            raise UserError("checkpoint has no model weights", path)
        if stage in ("retrain", "retrain-pretrain") and data.get("arch") not in (None, arch_to_str(arch)):
            raise UserError(f"checkpoint is for architecture {data.get('arch')}, not {arch_to_str(arch)}", path)
    body_only = stage in ("pretrain", "retrain-pretrain")
    if body_only:  # a classification network: its body, without the classifier head
        state = {f"body.{k}": v for k, v in state.items() if not k.startswith("head.")}
    elif not any(k.startswith("body.") for k in state) and any(k.startswith("backbone.body.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}  # a whole detector
    if stage in ("pretrain", "finetune"):  # a supernet: the choices on this path
        mapped = ((supernet_key_to_subnet(k, arch, prefix="body."), v) for k, v in state.items())
        state = {k: v for k, v in mapped if k is not None}
    return state, body_only


def _load_state(module: nn.Module, state: dict, weights: Path, body_only: bool = False) -> None:
    """``module.load_state_dict(state)``, strict (``body_only``: the FPN may be missing); a mismatch is a
    one-line ``UserError`` naming ``weights``."""
    try:
        result = module.load_state_dict(state, strict=not body_only)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        raise UserError(f"the weights do not fit this backbone: {' '.join(lines[1:3])[:300]}", weights) from None
    if body_only:
        missing = [k for k in result.missing_keys if not k.startswith("fpn.")]
        if missing or result.unexpected_keys:
            shown = ", ".join((missing + result.unexpected_keys)[:3])
            raise UserError(f"the weights do not fit this backbone (e.g. {shown})", weights)


def _fpn_shape(state: dict) -> tuple[str | None, int | None]:
    """(kind, fpn_channels) of the FPN whose weights are in ``state``, if any."""
    inner = state.get("fpn.inner_blocks.0.0.weight")
    if inner is None:
        return None, None
    return ("retinanet" if "fpn.extra_blocks.p6.weight" in state else "fpn"), int(inner.shape[0])


def backbone(
    arch: str | Path | list[int],
    space: str | None = None,
    width_mult: float | None = None,
    weights: str | Path | bool | None = None,
    kind: str | None = None,
    fpn_channels: int | None = None,
) -> nn.Module:
    """A DetNAS backbone with its FPN (``detnas.detector.BackboneWithFPN``), for torchvision detectors.

    ``arch`` is one of:

    - the path of an ``arch.json`` written by ``detnas export``: space, width, kind and FPN width come
      from it, and ``weights`` defaults to the ``backbone.safetensors`` beside it (``weights=False``:
      fresh initialisation);
    - a digit string, a JSON list or a preset name (``detnas space`` lists them): ``space`` defaults to
      the preset's or the one with that many blocks, ``width_mult`` to the preset's or 1.0, ``kind`` to
      ``"fpn"`` (``"retinanet"``: P3-P7), ``fpn_channels`` to 256 (or what ``weights`` holds);
      ``weights`` is optional.

    ``weights`` may be a ``backbone.safetensors`` or ``detector.safetensors`` from ``detnas export``, a
    retrained detector checkpoint, a classification pretraining checkpoint (then only the body is
    loaded), or a supernet checkpoint (``pretrain``/``finetune``: the weights on ``arch``'s path; their
    BN statistics mix all paths, so recalibrate them or retrain). The module returns an ``OrderedDict``
    of feature maps named ``p2, p3, p4, p5, pool``
    (FPN; strides 4, 8, 16, 32, 64) or ``p3 ... p7`` (RetinaNet), each with ``out_channels`` channels.

    Example: the exported backbone in a plain torchvision Faster R-CNN, with our anchors (one size per
    level, doubling from ``anchor_size`` at P2) and RoI pooler (P2-P5, 7x7)::

        import json, detnas, torchvision
        from detnas.detector import DetectorConfig, anchor_generator, roi_pooler

        meta = json.load(open("export/arch.json"))
        cfg = DetectorConfig(**meta["detector"])
        model = torchvision.models.detection.FasterRCNN(
            detnas.backbone("export/arch.json"),
            num_classes=len(meta["classes"]) + 1,  # + background
            rpn_anchor_generator=anchor_generator(cfg),  # 5 levels: p2..p5 and pool
            box_roi_pool=roi_pooler(cfg),  # MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 7, 2)
            min_size=cfg.min_size, max_size=cfg.max_size,
        )

    For a RetinaNet backbone (``kind="retinanet"``) pass ``anchor_generator=anchor_generator(cfg)`` to
    ``torchvision.models.detection.RetinaNet``. The backbone's BatchNorm layers are ordinary
    ``nn.BatchNorm2d``: with small per-GPU batches, freeze them or convert them to SyncBatchNorm.
    """
    from detnas.detector import BackboneWithFPN
    from detnas.space import PRESETS, SPACES, get_space, parse_arch
    from detnas.supernet import ShuffleNetBackbone

    source: Path | None = None
    text = arch if isinstance(arch, (str, Path)) else None
    if isinstance(arch, Path) or (isinstance(arch, str) and (arch.endswith(".json") or os.sep in arch)):
        source = Path(arch)
        meta = _read_arch_json(source)
        given_args = {"space": space, "width_mult": width_mult, "kind": kind, "fpn_channels": fpn_channels}
        for name, given in given_args.items():
            stored = meta.get(name)
            if given is not None and stored is not None and given != stored:
                raise UserError(f"{name}={given!r} was given but the export has {name}={stored!r}", source)
        text, space, width_mult = meta["arch"], meta["space"], meta.get("width_mult", 1.0)
        kind, fpn_channels = meta.get("kind", "fpn"), meta.get("fpn_channels")
        if weights is None:
            weights = source.parent / meta.get("files", {}).get("backbone", BACKBONE_FILE)
    preset = PRESETS.get(text.strip()) if isinstance(text, str) else None
    if weights is False:
        weights = None
    elif weights is True:
        raise UserError("weights=True is ambiguous: give the path of a weights file")
    weights = None if weights is None else Path(weights)
    try:
        if space is None:
            space = preset.space if preset else None
        values = parse_arch(text if text is not None else arch)
        if space is None:
            space = next(name for name, sp in SPACES.items() if sp.num_blocks == len(values))
        if width_mult is None:
            width_mult = preset.width_mult if preset else 1.0
        search_space = get_space(space, float(width_mult))
        values = parse_arch(text if text is not None else arch, search_space)
    except ValueError as e:  # ArchError included
        raise UserError(str(e), source) from None
    state, body_only = None, False
    if weights is not None:
        state, body_only = _read_weights(weights, values, {"space": space, "width_mult": float(width_mult)})
        stored_kind, stored_channels = _fpn_shape(state)
        kind, fpn_channels = kind or stored_kind, fpn_channels or stored_channels
    kind = kind or "fpn"
    if kind not in ("fpn", "retinanet"):
        raise UserError(f"kind must be 'fpn' or 'retinanet', got {kind!r}", source)
    module = BackboneWithFPN(ShuffleNetBackbone(search_space, values), kind, int(fpn_channels or DEFAULT_FPN_CHANNELS))
    if state is not None:
        _load_state(module, state, weights, body_only)
    return module
