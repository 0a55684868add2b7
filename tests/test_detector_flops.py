import torch

from detnas.model.detector import DetectorConfig, build_detector
from detnas.model.detector_flops import detector_macs
from detnas.model.flops import arch_cost, count_macs
from detnas.model.space import get_space
from detnas.model.supernet import ShuffleNetBackbone

SMALL = get_space("small")
ARCH = (2, 1, 0, 3) * 5


def test_retinanet_count_equals_hooks_on_a_full_forward():
    det = build_detector(ShuffleNetBackbone(SMALL, ARCH), 10, DetectorConfig(kind="retinanet", min_size=96, max_size=96))
    macs = detector_macs(det, 96)
    assert macs["backbone"] == arch_cost(SMALL, ARCH, 96).body_flops
    det.eval()
    assert macs["total"] == count_macs(det, [torch.zeros(3, 96, 96)])


def test_fpn_box_head_is_counted_for_every_proposal():
    cfg = DetectorConfig(kind="fpn", min_size=96, max_size=96, fpn_channels=16, box_head_channels=32,
                         rpn_post_nms_top_n_test=50)
    macs = detector_macs(build_detector(ShuffleNetBackbone(SMALL, ARCH), 10, cfg), 96)
    per_roi = 16 * 7 * 7 * 32 + 32 * 32 + 32 * 11 + 32 * 11 * 4  # fc6, fc7, class scores, box deltas
    assert macs["box_head"] == 50 * per_roi
    assert macs["total"] == sum(v for k, v in macs.items() if k != "total")
