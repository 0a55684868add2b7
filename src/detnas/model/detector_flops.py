"""MACs of a whole detector (backbone + FPN + heads) at a given input size, by hooks on its modules.

Same convention as ``flops.py`` (conv + linear MACs). The two-stage box head runs once per proposal,
so it is counted for the detector's test-time proposal count (``rpn_post_nms_top_n_test``), the
worst case; RoIAlign, NMS and box decoding are not multiply-accumulates and are not counted.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN

from detnas.model.flops import count_macs


@torch.no_grad()
def detector_macs(detector: nn.Module, input_size: int | tuple[int, int]) -> dict[str, int]:
    """{"backbone", "fpn", "rpn" | "head", "box_head", "total"} MACs for one image of ``input_size``
    (the size the network sees, after the detector's own resizing)."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    was_training = detector.training
    detector.eval()
    try:
        x = torch.zeros(1, 3, h, w, device=next(detector.parameters()).device)
        backbone = detector.backbone
        body = count_macs(backbone.body, x)
        with_fpn = count_macs(backbone, x)
        features = list(backbone(x).values())
        out = {"backbone": body, "fpn": with_fpn - body}
        if isinstance(detector, FasterRCNN):
            out["rpn"] = count_macs(detector.rpn.head, features)
            roi = detector.roi_heads
            n = detector.rpn._post_nms_top_n["testing"]
            size = roi.box_roi_pool.output_size
            pooled = torch.zeros(n, backbone.out_channels, *size, device=x.device)
            out["box_head"] = count_macs(roi.box_head, pooled)
            out["box_head"] += count_macs(roi.box_predictor, roi.box_head(pooled))
        else:
            out["head"] = count_macs(detector.head, features)
        # count_macs gives per-item MACs; the box head's "batch" is the proposals
        if "box_head" in out:
            out["box_head"] *= n
        out["total"] = sum(out.values())
        return out
    finally:
        detector.train(was_training)


def detector_costs(space, arch, kind: str, num_classes: int, input_size: int, fpn_channels: int,
                   box_head_channels: int, proposals: int) -> dict:
    """``{"kind", **detector_macs}`` of a square-input detector of ``kind`` around ``arch`` with the
    given head sizes (the box head counted for ``proposals`` test-time proposals)."""
    from pydantic import ValidationError

    from detnas.errors import UserError
    from detnas.model.detector import DetectorConfig, build_detector
    from detnas.model.supernet import ShuffleNetBackbone
    from detnas.strict import describe_error

    try:
        cfg = DetectorConfig(kind=kind, fpn_channels=fpn_channels, box_head_channels=box_head_channels,
                             rpn_post_nms_top_n_test=proposals, rpn_pre_nms_top_n_test=max(proposals, 1000),
                             min_size=input_size, max_size=input_size)
    except ValidationError as e:
        raise UserError(f"bad detector option: {describe_error(e)}") from None
    model = build_detector(ShuffleNetBackbone(space, arch), num_classes, cfg)
    return {"kind": kind, **detector_macs(model, input_size)}
