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
from detnas.config.runs import CLASSIFICATION_STAGES, FINETUNE, RETRAIN, RETRAIN_PRETRAIN, SUPERNET_STAGES
from detnas.digest import content_sha256
from detnas.errors import UserError, read_json
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
    from detnas.model.space import ArchError, arch_to_str, get_space, parse_arch
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


WEIGHT_STAGES = (RETRAIN, RETRAIN_PRETRAIN, *SUPERNET_STAGES)


def _read_weights(path: Path, arch, space_meta: dict) -> tuple[dict, bool]:
    """The state of ``arch``'s ``BackboneWithFPN`` held by ``path`` (keys ``body.*``, ``fpn.*``), and
    whether it holds the body only (a classification network: the FPN keeps its fresh initialisation).

    ``path``: an exported ``backbone.safetensors`` or ``detector.safetensors``, or one of our
    checkpoints: a retrained detector, a retrain-pretraining network, or a supernet (pretrain or
    finetune), whose weights on ``arch``'s path are taken.
    """
    from detnas.model.space import arch_to_str
    from detnas.model.supernet import supernet_key_to_subnet

    if not path.is_file():
        raise UserError("weights file not found", path)
    stage = None
    if path.suffix == ".safetensors":
        state = load_safetensors(path)
    else:
        data = load_checkpoint(path, WEIGHT_STAGES, space_meta)
        stage, state = data["stage"], data.get("model")
        if not isinstance(state, dict):
            raise UserError("checkpoint has no model weights", path)
        if stage in (RETRAIN, RETRAIN_PRETRAIN) and data.get("arch") not in (None, arch_to_str(arch)):
            raise UserError(f"checkpoint is for architecture {data.get('arch')}, not {arch_to_str(arch)}", path)
    body_only = stage in CLASSIFICATION_STAGES
    if body_only:  # a classification network: its body, without the classifier head
        state = {f"body.{k}": v for k, v in state.items() if not k.startswith("head.")}
    elif not any(k.startswith("body.") for k in state) and any(k.startswith("backbone.body.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}  # a whole detector
    if stage in SUPERNET_STAGES:  # a supernet: the choices on this path
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
    from detnas.model.space import resolve_arch
    from detnas.model.supernet import ShuffleNetBackbone

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
    if weights is False:
        weights = None
    elif weights is True:
        raise UserError("weights=True is ambiguous: give the path of a weights file")
    weights = None if weights is None else Path(weights)
    try:
        values, search_space = resolve_arch(text if text is not None else arch, space,
                                             None if width_mult is None else float(width_mult))
    except ValueError as e:  # ArchError included
        raise UserError(str(e), source) from None
    state, body_only = None, False
    if weights is not None:
        space_meta = {"space": search_space.name, "width_mult": search_space.width_mult}
        state, body_only = _read_weights(weights, values, space_meta)
        stored_kind, stored_channels = _fpn_shape(state)
        kind, fpn_channels = kind or stored_kind, fpn_channels or stored_channels
    kind = kind or "fpn"
    if kind not in ("fpn", "retinanet"):
        raise UserError(f"kind must be 'fpn' or 'retinanet', got {kind!r}", source)
    module = BackboneWithFPN(ShuffleNetBackbone(search_space, values), kind, int(fpn_channels or DEFAULT_FPN_CHANNELS))
    if state is not None:
        _load_state(module, state, weights, body_only)
    return module
