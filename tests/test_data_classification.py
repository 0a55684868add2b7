import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from data_builders import make_image_folder, write_image
from detnas.data import ImageFolderDataset, classification_transform
from detnas.data.classification import MEAN, STD
from detnas.errors import UserError


def test_classes_labels_and_normalized_rgb_tensors(tmp_path):
    root = make_image_folder(tmp_path, classes=("b", "a"), per_class=2, mode="L")
    ds = ImageFolderDataset(root, classification_transform(20, train=False))
    assert ds.classes == ["a", "b"] and len(ds) == 4
    assert [label for _, label in ds.samples] == [0, 0, 1, 1]
    x, label = ds[2]
    assert x.shape == (3, 20, 20) and x.dtype == torch.float32 and label == 1
    # Grayscale became three equal channels.
    assert torch.allclose(x[0] * 0.229 + 0.485, x[1] * 0.224 + 0.456, atol=1e-6)
    assert x.min() < 0  # normalized


def test_train_augmentation_reproducible_per_epoch(tmp_path):
    root = make_image_folder(tmp_path, per_class=1, size=32, mode="RGB")
    t = classification_transform(16, train=True)
    a, b = ImageFolderDataset(root, t, seed=1), ImageFolderDataset(root, t, seed=1)
    assert torch.equal(a[0][0], b[0][0])
    torch.manual_seed(123)  # the global RNG neither drives nor is consumed by augmentation
    state = torch.get_rng_state()
    first = a[0][0]
    assert torch.equal(torch.get_rng_state(), state)
    a.set_epoch(1)
    assert not torch.equal(a[0][0], first)


def _error(call, match, path):
    with pytest.raises(UserError, match=match) as e:
        call()
    assert e.value.path == str(path)


def test_bad_folders_name_the_path(tmp_path):
    _error(lambda: ImageFolderDataset(tmp_path / "none"), "image folder not found", tmp_path / "none")
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "x.png", 4, 4)
    _error(lambda: ImageFolderDataset(tmp_path / "flat"), "no class sub-folders", tmp_path / "flat")
    root = make_image_folder(tmp_path / "f", classes=("a", "b"))
    (root / "c").mkdir()
    (root / "c" / "notes.txt").write_text("not an image")
    _error(lambda: ImageFolderDataset(root), "class folder has no images", root / "c")


def test_corrupt_image_found_at_construction_truncated_one_when_loaded(tmp_path):
    root = make_image_folder(tmp_path / "f", classes=("a",), per_class=2, size=64, mode="RGB")
    (root / "a" / "0.png").write_bytes(b"garbage")
    _error(lambda: ImageFolderDataset(root), "unreadable image", root / "a" / "0.png")
    write_image(root / "a" / "0.png", 64, 64)
    data = (root / "a" / "1.png").read_bytes()
    (root / "a" / "1.png").write_bytes(data[: len(data) // 2])  # header intact, pixels cut off
    ds = ImageFolderDataset(root)
    _error(lambda: ds[1], "cannot decode image", root / "a" / "1.png")


def v2_compose(transform) -> v2.Compose:
    """The torchvision v2 pipeline that ``transform`` (a ``ClassificationTransform``) stands for: its geometry,
    then v2's tensor conversion and normalization (also the benchmark's reference,
    ``benchmarks/classification_data.py``)."""
    return v2.Compose([*transform.geometry.transforms, v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(MEAN, STD)])


@pytest.mark.parametrize("train, flip", [(True, False), (True, True), (False, False)])
def test_the_transform_gives_torchvision_v2_pipelines_numbers(train, flip):
    """``ClassificationTransform`` skips v2's per-transform dispatch for the tensor conversion: the same
    tensors, bit for bit and stride for stride, as the v2 Compose it replaces, under the same seeds."""
    rng = np.random.default_rng(0)
    ours = classification_transform(16, train, flip)
    reference = v2_compose(ours)
    for seed, (w, h) in enumerate([(40, 36), (16, 16), (11, 30), (64, 20)]):
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        torch.manual_seed(seed)
        expected = reference(image)
        torch.manual_seed(seed)
        got = ours(image)
        assert got.shape == (3, 16, 16) and torch.equal(got, expected) and got.stride() == expected.stride()
