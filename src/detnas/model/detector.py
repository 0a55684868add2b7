"""Detectors from torchvision around a DetNAS backbone (supernet or standalone).

FPN Faster R-CNN takes P2-P6 built from C2..C5; RetinaNet takes P3-P7 built from C3..C5 (P6/P7 from
P5). For the supernet, the path is whatever ``set_path`` last set, so torchvision's detectors, which
call ``backbone(images)``, need no change.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from detnas.model.amp import float32_outputs
from detnas.model.detector_config import DetectorConfig, DetectorKind
from detnas.model.layout import same_layout
from detnas.model.roi_align import GatherMultiScaleRoIAlign
from detnas.model.space import Arch
from detnas.model.supernet import ShuffleNetBackbone, path_state


class BackboneWithFPN(nn.Module):
    """A DetNAS backbone followed by torchvision's FeaturePyramidNetwork.

    ``out_channels`` is what torchvision's detectors read to size their heads.
    """

    def __init__(self, body: ShuffleNetBackbone, kind: DetectorKind, fpn_channels: int):
        super().__init__()
        self.body = body
        if kind == "fpn":
            self.in_features = ["c2", "c3", "c4", "c5"]
            extra = LastLevelMaxPool()
        else:
            self.in_features = ["c3", "c4", "c5"]
            extra = LastLevelP6P7(fpn_channels, fpn_channels)
        channels = dict(zip(["c2", "c3", "c4", "c5"], body.stage_channels))
        self.fpn = FeaturePyramidNetwork([channels[f] for f in self.in_features], fpn_channels, extra_blocks=extra)
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        # name the pyramid levels p2..p7 after their strides, as the detection literature does
        return self.fpn(OrderedDict((f"p{f[1]}", feats[f]) for f in self.in_features))


def anchor_generator(cfg: DetectorConfig) -> AnchorGenerator:
    """The anchors of ``cfg``'s detector, one size group per pyramid level.

    FPN: one size per level P2..P6 (``anchor_size`` doubling per level); RetinaNet: three octave scales
    per level P3..P7, as in the RetinaNet paper. Three aspect ratios everywhere.
    """
    levels = 5
    if cfg.kind == "fpn":
        sizes = tuple((cfg.anchor_size * 2**i,) for i in range(levels))
    else:
        sizes = tuple(
            tuple(int(cfg.anchor_size * 2 ** (i + 1) * 2 ** (j / 3)) for j in range(3)) for i in range(levels)
        )
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * levels)


def roi_pooler(cfg: DetectorConfig) -> GatherMultiScaleRoIAlign:
    """The RoI pooler of the FPN Faster R-CNN: RoIs go to P2..P5 by size; the level mapping's
    reference box (224 at an 800-pixel short side) scales with the image size. torchvision's
    ``MultiScaleRoIAlign``, faster on the CPU (model/roi_align.py)."""
    return GatherMultiScaleRoIAlign(
        ["p2", "p3", "p4", "p5"], output_size=7, sampling_ratio=2,
        canonical_scale=max(1, round(224 * cfg.min_size / 800)),
    )


def build_detector(body: ShuffleNetBackbone, num_classes: int, cfg: DetectorConfig) -> nn.Module:
    """A torchvision detector for ``num_classes`` object classes (labels 1..K; 0 is background)."""
    if body.head is not None:
        raise ValueError("the detector backbone must not carry a classification head")
    backbone = BackboneWithFPN(body, cfg.kind, cfg.fpn_channels)
    common = dict(min_size=cfg.min_size, max_size=cfg.max_size)
    if cfg.kind == "fpn":
        faster_rcnn = FasterRCNN(
            backbone,
            rpn_anchor_generator=anchor_generator(cfg),
            box_roi_pool=roi_pooler(cfg),
            box_head=TwoMLPHead(cfg.fpn_channels * 7 * 7, cfg.box_head_channels),
            box_predictor=FastRCNNPredictor(cfg.box_head_channels, num_classes + 1),
            rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
            rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
            box_batch_size_per_image=cfg.box_batch_size_per_image,
            box_detections_per_img=cfg.detections_per_img,
            box_score_thresh=cfg.score_thresh,
            **common,
        )
        # mixed precision: features and head outputs leave in float32 (see amp.py)
        float32_outputs(faster_rcnn.backbone, faster_rcnn.rpn.head, faster_rcnn.roi_heads.box_predictor)
        return faster_rcnn
    retinanet = RetinaNet(
        backbone,
        num_classes=num_classes + 1,
        anchor_generator=anchor_generator(cfg),
        score_thresh=cfg.score_thresh,
        detections_per_img=cfg.detections_per_img,
        **common,
    )
    silence_background(retinanet)
    float32_outputs(retinanet.backbone, retinanet.head)
    return retinanet


BACKGROUND_LOGIT = -1e4  # sigmoid gives exactly 0.0 in float32: never above any score threshold


@torch.no_grad()
def silence_background(retinanet: RetinaNet) -> None:
    """RetinaNet keeps torchvision's K+1 outputs (label 0 unused, so the weights load into a plain
    torchvision RetinaNet), but its label-0 logit is pinned far below zero: its score is exactly 0,
    so it is never detected, and the focal loss gives it no gradient to move back."""
    head = retinanet.head.classification_head
    head.cls_logits.bias.view(head.num_anchors, head.num_classes)[:, 0] = BACKGROUND_LOGIT


def detector_body(detector: nn.Module) -> ShuffleNetBackbone:
    return detector.backbone.body


def set_path(detector: nn.Module, arch: Arch) -> None:
    """Route the supernet detector's next forward passes through ``arch``."""
    detector_body(detector).active_arch = tuple(arch)


def extract_detector(detector: nn.Module, arch: Arch, num_classes: int, cfg: DetectorConfig) -> nn.Module:
    """A standalone detector of ``arch`` with copies of the supernet detector's weights and BN statistics."""
    body = detector_body(detector)
    sub = build_detector(ShuffleNetBackbone(body.space, arch), num_classes, cfg)
    sub.load_state_dict(path_state(detector.state_dict(), arch, prefix="backbone.body."))
    return same_layout(sub, detector).train(detector.training)
