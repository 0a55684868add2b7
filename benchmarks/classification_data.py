"""Time a sample of the demo's pretraining data: ``ImageFolderDataset[i]`` (decode, geometry, tensor
conversion) with ``ClassificationTransform`` against the torchvision v2 Compose it replaces (the same
tensors, ``tests/test_data_classification.py``), in alternating rounds on one thread, so each round's
ratio is paired.

    python benchmarks/classification_data.py [--rounds 15] [--samples 256]
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import demo_settings, quartiles  # also puts tests/ on the path
from detnas.data.classification import ImageFolderDataset, classification_transform
from test_data_classification import v2_compose  # the reference the test holds the transform to


def ms_per_sample(dataset: ImageFolderDataset, samples: int) -> float:
    start = time.perf_counter()
    for i in range(samples):
        dataset[i % len(dataset)]
    return (time.perf_counter() - start) * 1e3 / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--samples", type=int, default=256, help="samples per round and pipeline")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = demo_settings().pretrain_config()
    size = cfg.data.image_size
    print(f"the demo's pretraining data at {size} px, {args.samples} samples a round, {args.rounds} rounds, "
          "1 thread; ms per sample, median (25-75%)\n")
    print("| split | torchvision v2 Compose | ClassificationTransform | speed-up |")
    print("|---|---:|---:|---:|")
    for split, root, train in [("train", cfg.data.train, True), ("val", cfg.data.val, False)]:
        ours = classification_transform(size, train, cfg.data.flip)
        dataset = ImageFolderDataset(root, ours, cfg.seed)
        pipelines = {"v2": v2_compose(ours), "ours": ours}
        times = {name: [] for name in pipelines}
        for _ in range(args.rounds):
            for name, transform in pipelines.items():
                dataset.transform = transform
                times[name].append(ms_per_sample(dataset, args.samples))
        ratios = [a / b for a, b in zip(times["v2"], times["ours"])]
        cells = []
        for values in (times["v2"], times["ours"]):
            q1, q2, q3 = quartiles(values)
            cells.append(f"{q2:.3f} ({q1:.3f}-{q3:.3f})")
        q1, q2, q3 = quartiles(ratios)
        print(f"| {split} | {cells[0]} | {cells[1]} | {q2:.2f}x ({q1:.2f}-{q3:.2f}) |")


if __name__ == "__main__":
    main()
