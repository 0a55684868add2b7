"""RetinaNet never detects label 0 (background), even with a score threshold of 0, and keeps
torchvision's K+1 outputs so that its weights load into a plain torchvision RetinaNet."""

import torch

from detnas.model.detector import BACKGROUND_LOGIT, DetectorConfig, build_detector
from detnas.model.space import get_space
from detnas.model.supernet import ShuffleNetBackbone


def test_no_background_detections_and_the_background_logit_stays_pinned(one_thread):
    torch.manual_seed(0)
    cfg = DetectorConfig(kind="retinanet", min_size=64, max_size=64, score_thresh=0.0)
    det = build_detector(ShuffleNetBackbone(get_space("small"), (0,) * 20), 3, cfg)
    head = det.head.classification_head
    assert head.num_classes == 4  # K + 1, as torchvision's RetinaNet expects
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])} for _ in images]
    optimizer = torch.optim.SGD(det.parameters(), lr=0.01, momentum=0.9)
    det.train()
    for _ in range(2):
        loss = sum(det(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    background = head.cls_logits.bias.view(head.num_anchors, head.num_classes)[:, 0]
    assert torch.all(background == BACKGROUND_LOGIT)
    det.eval()
    with torch.no_grad():
        outputs = det(images)
    labels = torch.cat([o["labels"] for o in outputs])
    assert len(labels) > 0 and labels.min() >= 1
