"""Reading our files back: ``backbone(...)`` (also ``detnas.backbone``) for a plain torchvision detector,
from an export (``export.py`` writes it) or one of our checkpoints, and the retrained detector of a
``detnas retrain`` checkpoint (``load_trained_detector``).

A retrained checkpoint holds the architecture, the search space, the class names, the detector config
and the weights of one standalone detector, so nothing else is needed to rebuild it. Every problem
with a file is a one-line ``UserError`` that names it; safetensors files are checked against the
SHA-256 of their tensors stored in their metadata (``sha256``), when they have one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from detnas.checkpoint import load_checkpoint
from detnas.config.runs import CLASSIFICATION_STAGES, FINETUNE, PRETRAIN, RETRAIN, RETRAIN_PRETRAIN
from detnas.digest import content_sha256
from detnas.errors import UserError, read_json
from detnas.model.space import Arch, ArchError, SearchSpace, arch_to_str, get_space, parse_arch, resolve_arch
from detnas.strict import describe_error

BACKBONE_FILE = "backbone.safetensors"
DETECTOR_FILE = "detector.safetensors"
ARCH_FILE = "arch.json"
ONNX_FILE = "detector.onnx"
EXPORT_FORMAT = "detnas-export"
CHECKSUM = "sha256"
DEFAULT_FPN_CHANNELS = 256  # torchvision's and the paper's; exports carry their own


def read_retrained(path: str | Path, purpose: str = "use") -> dict:
    """The checkpoint at ``path`` after checking it holds a retrained detector.

    A supernet checkpoint (``finetune``/``pretrain``) gets a one-line error that says to run
    ``detnas retrain`` first; ``purpose`` ("export", "evaluate") goes into that message.
    """
    data = load_checkpoint(path)
    stage = data.get("stage")
    if stage == FINETUNE:
        raise UserError(
            f"this is a supernet detector checkpoint (stage 'finetune'), not a standalone detector to {purpose}: "
            f"retrain the searched architecture with `detnas retrain` and {purpose} its checkpoint",
            path,
        )
    if stage != RETRAIN:
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
    from detnas.model.detector import DetectorConfig, build_detector
    from detnas.model.supernet import ShuffleNetBackbone

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
        raise UserError(f"bad detector config in the checkpoint: {describe_error(e)}", path) from None
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


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    return content_sha256(dict(sorted(tensors.items())))  # safetensors does not keep the order


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``path``, checked against the checksum in its metadata when it has one."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            stored = (f.metadata() or {}).get(CHECKSUM)
    except Exception as e:  # safetensors raises its own error type for truncated or foreign files
        raise UserError(f"not a readable safetensors file: {str(e).splitlines()[0]}", path) from None
    if stored is not None and stored != tensors_sha256(state):
        raise UserError("weights file is damaged: its tensors do not match the checksum stored in it", path)
    return state


def _read_arch_json(path: Path) -> dict:
    data = read_json(path, "arch file")
    if not isinstance(data, dict):
        raise UserError("expected a JSON object (an arch.json written by `detnas export`)", path)
    for key in ("arch", "space"):
        if not isinstance(data.get(key), str):
            raise UserError(f"missing or invalid '{key}' (an arch.json written by `detnas export`)", path)
    return data


def _names_export(arch) -> bool:
    """Whether ``backbone``'s ``arch`` is the path of an export's ``arch.json`` (not an architecture)."""
    return isinstance(arch, Path) or (isinstance(arch, str) and (arch.endswith(".json") or os.sep in arch))


def _resolve(arch: str | list[int], space: str | None, width_mult: float | None) -> tuple[Arch, SearchSpace]:
    """(arch, search space) of a digit string, JSON list or preset name, by ``resolve_arch``."""
    try:
        return resolve_arch(arch, space, None if width_mult is None else float(width_mult))
    except ValueError as e:  # ArchError included
        raise UserError(str(e)) from None


def _read_export(source: Path, given: dict) -> tuple[Arch, SearchSpace, dict, Path]:
    """What the export's ``arch.json`` at ``source`` says: (arch, search space, its ``kind`` and
    ``fpn_channels``, the weights file beside it). ``given``: the caller's ``space``, ``width_mult``,
    ``kind`` and ``fpn_channels``; one that contradicts the export is an error."""
    meta = _read_arch_json(source)
    for name, value in given.items():
        stored = meta.get(name)
        if value is not None and stored is not None and value != stored:
            raise UserError(f"{name}={value!r} was given but the export has {name}={stored!r}", source)
    width_mult = meta.get("width_mult")
    try:
        search_space = get_space(meta["space"], 1.0 if width_mult is None else float(width_mult))
        values = parse_arch(meta["arch"], search_space)
    except (TypeError, ValueError) as e:  # ArchError included
        raise UserError(str(e), source) from None
    head = {"kind": meta.get("kind", "fpn"), "fpn_channels": meta.get("fpn_channels")}
    return values, search_space, head, source.parent / meta.get("files", {}).get("backbone", BACKBONE_FILE)


def _detector_backbone(state: dict) -> dict:
    """The ``BackboneWithFPN`` part (``body.*``, ``fpn.*``) of a whole detector's state; a backbone's as is."""
    if not any(k.startswith("body.") for k in state) and any(k.startswith("backbone.body.") for k in state):
        return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def _classifier_body(state: dict) -> dict:
    """A classification network's state as a ``BackboneWithFPN`` body: its classifier head dropped."""
    return {f"body.{k}": v for k, v in state.items() if not k.startswith("head.")}


def _check_arch(data: dict, path: Path, arch: Arch) -> None:
    """A standalone network's checkpoint must be of ``arch`` (when it says which it is)."""
    if data.get("arch") not in (None, arch_to_str(arch)):
        raise UserError(f"checkpoint is for architecture {data.get('arch')}, not {arch_to_str(arch)}", path)


def _exported_weights(path: Path) -> tuple[dict, bool]:
    """An export's ``backbone.safetensors`` or ``detector.safetensors``."""
    return _detector_backbone(load_safetensors(path)), False


def _retrained_weights(data: dict, path: Path, arch: Arch) -> tuple[dict, bool]:
    """A ``retrain`` checkpoint: a standalone detector of ``arch``."""
    _check_arch(data, path, arch)
    return _detector_backbone(data["model"]), False


def _retrain_pretrain_weights(data: dict, path: Path, arch: Arch) -> tuple[dict, bool]:
    """A ``retrain-pretrain`` checkpoint: a standalone classification network of ``arch``, body only."""
    _check_arch(data, path, arch)
    return _classifier_body(data["model"]), True


def _supernet_weights(data: dict, path: Path, arch: Arch) -> tuple[dict, bool]:
    """A ``pretrain`` (classification, body only) or ``finetune`` (detector) supernet checkpoint: the
    choices on ``arch``'s path."""
    from detnas.model.supernet import path_state

    body_only = data["stage"] in CLASSIFICATION_STAGES
    state = _classifier_body(data["model"]) if body_only else _detector_backbone(data["model"])
    return path_state(state, arch, prefix="body."), body_only


_CHECKPOINT_READERS = {
    RETRAIN: _retrained_weights,
    RETRAIN_PRETRAIN: _retrain_pretrain_weights,
    PRETRAIN: _supernet_weights,
    FINETUNE: _supernet_weights,
}
WEIGHT_STAGES = tuple(_CHECKPOINT_READERS)


def _read_weights(path: Path, arch: Arch, search_space: SearchSpace) -> tuple[dict, bool]:
    """The state of ``arch``'s ``BackboneWithFPN`` held by ``path`` (keys ``body.*``, ``fpn.*``), and
    whether it holds the body only (a classification network: the FPN keeps its fresh initialisation).

    ``path``: an exported ``backbone.safetensors`` or ``detector.safetensors``, or one of our
    checkpoints (of ``search_space``): a retrained detector, a retrain-pretraining network, or a
    supernet (pretrain or finetune), whose weights on ``arch``'s path are taken.
    """
    if not path.is_file():
        raise UserError("weights file not found", path)
    if path.suffix == ".safetensors":
        return _exported_weights(path)
    space_meta = {"space": search_space.name, "width_mult": search_space.width_mult}
    data = load_checkpoint(path, WEIGHT_STAGES, space_meta)
    if not isinstance(data.get("model"), dict):
        raise UserError("checkpoint has no model weights", path)
    return _CHECKPOINT_READERS[data["stage"]](data, path, arch)


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
    """A DetNAS backbone with its FPN (``detnas.model.detector.BackboneWithFPN``), for torchvision detectors.

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
        from detnas.model.detector import DetectorConfig, anchor_generator, roi_pooler

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
    from detnas.model.detector import BackboneWithFPN
    from detnas.model.supernet import ShuffleNetBackbone

    if weights is True:
        raise UserError("weights=True is ambiguous: give the path of a weights file")
    source = Path(arch) if _names_export(arch) else None
    if source is not None:
        given = {"space": space, "width_mult": width_mult, "kind": kind, "fpn_channels": fpn_channels}
        values, search_space, head, beside = _read_export(source, given)
        kind, fpn_channels = head["kind"], head["fpn_channels"]
        weights = beside if weights is None else weights
    else:
        values, search_space = _resolve(arch, space, width_mult)
    weights = None if weights is None or weights is False else Path(weights)
    state, body_only = (None, False) if weights is None else _read_weights(weights, values, search_space)
    if state is not None:  # kind and FPN width unset: those of the weights
        stored_kind, stored_channels = _fpn_shape(state)
        kind, fpn_channels = kind or stored_kind, fpn_channels or stored_channels
    kind = kind or "fpn"
    if kind not in ("fpn", "retinanet"):
        raise UserError(f"kind must be 'fpn' or 'retinanet', got {kind!r}", source)
    module = BackboneWithFPN(ShuffleNetBackbone(search_space, values), kind, int(fpn_channels or DEFAULT_FPN_CHANNELS))
    if state is not None:
        _load_state(module, state, weights, body_only)
    return module
