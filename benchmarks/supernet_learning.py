"""Does the supernet learn at the demo's pretraining budget? Top-1 of each evaluated path of the
supernet (after BN recalibration on 256 random training images) for several ``grow_iters``, next to
the same architecture trained alone for the same number of steps with the same recipe.

The demo's pretraining settings come from the packaged demo config; ``--grow 0`` is the authors'
uniform path-wise training from the first step. At this scale training is chaotic: float rounding
alone (1 or 2 threads) moves a path's top-1 by several points, so ``--seeds`` repeats each supernet
with other seeds (the evaluated random path changes with the seed; the all-0 and all-Xception paths
do not) and prints every run.

    .venv/bin/python benchmarks/supernet_learning.py [--grow 0 150] [--iters 300] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import demo_settings
from detnas.model.space import arch_to_str, get_space
from detnas.stages.jobs import eval_archs, pretrain_job, run_stage


def pretrain_config(iters: int, grow_iters: int, seed: int = 0):
    """The demo's supernet pretraining with ``iters`` steps, ``grow_iters`` and ``seed``, evaluated on
    the default paths (all-0, all-3, a random one) after recalibration on 256 random training images."""
    demo = demo_settings().model_copy(update={"seed": seed})
    recipe = demo.pretrain.model_copy(
        update={"train": demo.pretrain.train.model_copy(update={"iters": iters}), "grow_iters": grow_iters})
    evaluation = demo.eval.model_copy(update={"archs": [], "recalib_images": 256, "batch_size": 64})
    logging = demo.logging.model_copy(update={"log_every": 50, "checkpoint_every": 10**6, "progress": False})
    return demo.model_copy(update={"pretrain": recipe, "eval": evaluation, "logging": logging}).pretrain_config()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grow", type=int, nargs="+", default=[0, 150], help="grow_iters values to compare")
    parser.add_argument("--iters", type=int, default=300, help="pretraining steps (all recipes)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the supernets")
    args = parser.parse_args()
    rows: dict[str, list] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for grow in args.grow:
            for seed in args.seeds:
                cfg = pretrain_config(args.iters, grow, seed)
                name = f"supernet, grow_iters {grow}, seed {seed}"
                start = time.perf_counter()
                rows[name] = list(run_stage(pretrain_job(cfg), cfg, Path(tmp) / f"grow{grow}-{seed}",
                                            resume=False)["top1"].items())
                seconds[name] = time.perf_counter() - start
        cfg = pretrain_config(args.iters, 0)
        archs = eval_archs(get_space(cfg.space, cfg.width_mult), cfg.eval, cfg.seed, cfg.sampling)
        alone = {}
        for arch in archs:
            start = time.perf_counter()
            alone.update(run_stage(pretrain_job(cfg, arch), cfg, Path(tmp) / arch_to_str(arch), resume=False)["top1"])
            seconds[f"alone {arch_to_str(arch)}"] = time.perf_counter() - start
    names = [arch_to_str(a) for a in archs]
    print(f"\ntop-1 after {args.iters} steps, in % (all-0 / all-Xception / a random path; in brackets:"
          f" supernet / the same architecture trained alone, seed 0)\n")
    print("| recipe | all-0 | all-Xception | random path |")
    print("|---|---:|---:|---:|")
    for recipe, top1 in rows.items():
        cells = [f"{100 * t:.1f}" + (f" ({t / alone[a]:.2f})" if a in alone else f" (`{a}`)") for a, t in top1]
        print(f"| {recipe} | " + " | ".join(cells) + " |")
    print("| each path trained alone, seed 0 | " + " | ".join(f"{100 * alone[n]:.1f} (`{n}`)" for n in names) + " |")
    print("\nseconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
