"""The images a path's BN statistics are recalibrated on are a seeded random sample of the training set.

Training sets are often ordered (an ImageFolder lists its samples class by class): the first N
images would be one class, and a path's statistics from them make it look much worse than it is.
"""

import torch

from detnas.model.evaluate import recalibration_batches


class Indexed(torch.utils.data.Dataset):
    """Item i is (tensor([i]), i // 10): ten classes of ten images, in class order like an ImageFolder."""

    def __len__(self):
        return 100

    def __getitem__(self, i):
        return torch.tensor([i]), i // 10


def drawn(n, batch_size=4, seed=0):
    return torch.cat([b.flatten() for b in recalibration_batches(Indexed(), n, batch_size, seed=seed)]).tolist()


def test_a_seeded_sample_without_repeats_across_classes():
    picked = drawn(20)
    assert len(picked) == 20 == len(set(picked))
    assert picked != list(range(20))
    assert len({i // 10 for i in picked}) >= 6  # the first 20 images would span 2 of the 10 classes
    assert picked == drawn(20) and picked != drawn(20, seed=1)


def test_batches_hold_the_batch_size_and_the_sample_is_capped_at_the_dataset():
    assert [len(b) for b in recalibration_batches(Indexed(), 10, 4)] == [4, 4, 2]
    assert sorted(drawn(500)) == list(range(100))
