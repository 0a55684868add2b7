import numpy as np
import pytest
import torch
from PIL import Image

from data_builders import make_coco
from detnas.data import DetectionTransform, load_coco


def _white_box_image(width, height, box):
    pixels = np.zeros((height, width, 3), np.uint8)
    x1, y1, x2, y2 = box
    pixels[y1:y2, x1:x2] = 255
    return Image.fromarray(pixels)


def _white_extent(image: torch.Tensor) -> list[int]:
    rows, cols = torch.nonzero(image[0] > 0.5, as_tuple=True)
    return [cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1]


def _call(transform, box, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return transform(_white_box_image(64, 48, box), torch.tensor([box], dtype=torch.float32), generator)


@pytest.mark.parametrize("size, max_size, scale, out_hw", [
    (24, 100, 0.5, (24, 32)),   # shorter side (48) -> 24
    (96, 100, 100 / 64, (75, 100)),  # longer side capped at max_size
])
def test_resize_keeps_aspect_and_scales_boxes(size, max_size, scale, out_hw):
    box = [8, 4, 40, 36]
    image, boxes, s = _call(DetectionTransform(size, max_size), box)
    assert s == pytest.approx(scale)
    assert tuple(image.shape) == (3, *out_hw) and image.dtype == torch.float32
    np.testing.assert_allclose(boxes[0].tolist(), [v * scale for v in box], rtol=1e-6)
    # The box still frames the white pixels (resampling blurs edges by under a pixel).
    np.testing.assert_allclose(_white_extent(image), boxes[0].tolist(), atol=1)


def test_flip_moves_boxes_with_pixels_and_depends_only_on_generator():
    box = [4, 6, 20, 30]
    t = DetectionTransform(48, 100, flip=True)
    flipped = []
    for seed in range(16):
        image, boxes, _ = _call(t, box, seed)
        flipped.append(boxes[0].tolist() == [44, 6, 60, 30])
        assert flipped[-1] or boxes[0].tolist() == box
        assert _white_extent(image) == boxes[0].tolist()
        assert torch.equal(_call(t, box, seed)[0], image)
    assert 0 < sum(flipped) < 16
    # Evaluation transforms never flip.
    for seed in range(4):
        _, boxes, _ = _call(DetectionTransform(48, 100), box, seed)
        assert boxes[0].tolist() == box


def test_dataset_flips_are_a_function_of_seed_epoch_and_image(tmp_path):
    ann, images = make_coco(tmp_path, n_images=12, objects={i: [(1, [0, 0, 10, 10])] for i in range(1, 13)})
    t = DetectionTransform(48, 64, flip=True)

    def flips(ds):
        return [ds[i][1]["boxes"][0, 0].item() > 0 for i in range(len(ds))]

    a = load_coco(ann, images).with_transform(t, seed=3)
    b = load_coco(ann, images).with_transform(t, seed=3)
    assert flips(a) == flips(b)
    assert flips(a.subset([5, 2])) == [flips(a)[5], flips(a)[2]]  # keyed by image, not position
    epoch0 = flips(a)
    a.set_epoch(1)
    assert flips(a) != epoch0
    assert flips(a.with_transform(t, seed=4)) != flips(a)
    assert 0 < sum(epoch0) < 12


def test_same_samples_whichever_worker_loads_them(tmp_path):
    from detnas.data import collate

    ann, images = make_coco(tmp_path, n_images=4)
    ds = load_coco(ann, images).with_transform(DetectionTransform(40, 64, flip=True), seed=5)
    ds.set_epoch(2)

    def boxes(num_workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=num_workers, collate_fn=collate)
        return [t["boxes"].tolist() for _, targets in loader for t in targets]

    assert boxes(0) == boxes(2)
