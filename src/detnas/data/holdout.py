"""The held-out search split: carved from the detection training set by a seeded draw.

Finetuning trains on the rest, and writes the split as its own COCO annotation file in the run
folder; the search reads that file for fitness. The test split never enters either.
"""

from __future__ import annotations

import numpy as np

from detnas.errors import UserError


def carve_holdout(n_images: int, size: int, seed: int, source=None) -> tuple[list[int], list[int]]:
    """(training indices, held-out indices): ``size`` images drawn without replacement from ``seed``."""
    if size >= n_images:
        raise UserError(f"search split of {size} images is not smaller than the training set ({n_images} images)",
                        source)
    held = np.sort(np.random.default_rng(seed).choice(n_images, size, replace=False))
    keep = np.setdiff1d(np.arange(n_images), held)
    return keep.tolist(), held.tolist()
