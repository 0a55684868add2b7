"""How well does growing preserve the trained ShuffleNetV2 path? Trains the demo supernet's
ShuffleNetV2 path alone for the demo's ``grow_iters`` steps, grows the other choices out of it with
and without fitting the stride-2 Xception branches, and prints the top-1 of several paths right
after growing (BN recalibrated on 256 random training images; chance is 10%).

A path that loses accuracy at the moment of growing starts path-wise training behind the others.

    .venv/bin/python benchmarks/growth_fidelity.py [--fit-steps 0 300 600]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from _common import demo_settings
from detnas.data.classification import ImageFolderDataset, classification_transform
from detnas.data.loading import CachedBatches
from detnas.model import growth as supernet_growth
from detnas.model.evaluate import evaluate_classification_path, recalibration_batches
from detnas.model.space import get_space
from detnas.stages.jobs import pretrain_job
from detnas.stages.train import run_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fit-steps", type=int, nargs="+", default=[0, 300],
                        help="Adam steps fitting the stride-2 Xception branches")
    args = parser.parse_args()
    demo = demo_settings()
    grow = demo.pretrain.grow_iters
    # the demo's schedule, but stopped where it grows: the ShuffleNetV2 path alone, no growth
    recipe = demo.pretrain.model_copy(update={"train": demo.pretrain.train.model_copy(update={"iters": grow}),
                                              "grow_iters": 0})
    cfg = demo.model_copy(update={"pretrain": recipe}).pretrain_config()
    space = get_space(cfg.space, cfg.width_mult)
    job = pretrain_job(cfg)
    job.arch_for_step = lambda step: (0,) * space.num_blocks
    job.final_eval = lambda model: {}  # evaluated below, after growing
    with tempfile.TemporaryDirectory() as tmp:
        run_training(job, cfg.train, cfg.seed, Path(tmp), False, log_every=10**6, checkpoint_every=10**6,
                     progress=False)
    trained = job.model
    train_set = ImageFolderDataset(cfg.data.train, classification_transform(cfg.data.image_size, True, cfg.data.flip),
                                   cfg.seed)
    val_set = ImageFolderDataset(cfg.data.val, classification_transform(cfg.data.image_size, False))
    recalib = recalibration_batches(train_set, 256, 64, seed=cfg.seed)
    val = CachedBatches(val_set, 256)
    images = torch.cat(list(recalibration_batches(train_set, supernet_growth.GROW_IMAGES, 64, seed=cfg.seed)))
    strided = {i for i, block in enumerate(space.blocks()) if block.stride == 2}
    n = space.num_blocks
    paths = {
        "all-0": (0,) * n,
        "all-Xception": (3,) * n,
        "all-0, Xception at stride 2": tuple(3 if i in strided else 0 for i in range(n)),
        "all-Xception, choice 0 at stride 2": tuple(0 if i in strided else 3 for i in range(n)),
        "all-7x7": (2,) * n,
    }
    print(f"\ntop-1 right after growing at step {grow}, in %\n")
    print("| stride-2 Xception | " + " | ".join(paths) + " | relative error left | seconds |")
    print("|---|" + "---:|" * (len(paths) + 2))
    for steps in args.fit_steps:
        model = copy.deepcopy(trained)
        start = time.perf_counter()
        fitted = supernet_growth.grow_choices(model, images, steps)
        seconds = time.perf_counter() - start
        top1 = [evaluate_classification_path(model, p, recalib, val) for p in paths.values()]
        errors = f"{min(fitted.values()):.2f}-{max(fitted.values()):.2f}"
        print(f"| {'copied' if steps == 0 else f'fitted, {steps} steps'} | "
              + " | ".join(f"{100 * t:.1f}" for t in top1) + f" | {errors} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
