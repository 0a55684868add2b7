"""Per-sample randomness derived from (seed, epoch, sample key).

Augmentation drawn from a shared RNG depends on which DataLoader worker loads a sample and on
everything drawn before it, so a resumed run would not see the same augmentations. Deriving each
sample's generator from (seed, epoch, key) makes it a pure function of those three numbers.
"""

from __future__ import annotations

import numpy as np
import torch


def sample_seed(seed: int, epoch: int, key: int) -> int:
    # SeedSequence mixes the three numbers well, so neighbouring keys get unrelated streams.
    words = [seed % 2**64, epoch % 2**64, key % 2**64]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> 1)


def sample_generator(seed: int, epoch: int, key: int) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed(seed, epoch, key))
