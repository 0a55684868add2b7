"""Does the supernet learn at the demo's pretraining budget? Top-1 of each evaluated path of the
supernet (after BN recalibration on 256 random training images) for several ``grow_iters``, next to
the same architecture trained alone for the same number of steps with the same recipe.

The demo's pretraining settings come from the packaged demo config; ``--grow 0`` is the authors'
uniform path-wise training from the first step.

    .venv/bin/python benchmarks/supernet_learning.py [--grow 0 150] [--iters 300]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import demo_settings

from detnas.space import arch_to_str, get_space
from detnas.stages import eval_archs, pretrain_job, run_stage


def pretrain_config(iters: int, grow_iters: int):
    """The demo's supernet pretraining with ``iters`` steps and ``grow_iters``, evaluated on the default
    paths (all-0, all-3, a random one) after recalibration on 256 random training images."""
    demo = demo_settings()
    recipe = demo.pretrain.model_copy(
        update={"train": demo.pretrain.train.model_copy(update={"iters": iters}), "grow_iters": grow_iters})
    evaluation = demo.eval.model_copy(update={"archs": [], "recalib_images": 256, "batch_size": 64})
    logging = demo.logging.model_copy(update={"log_every": 50, "checkpoint_every": 10**6, "progress": False})
    return demo.model_copy(update={"pretrain": recipe, "eval": evaluation, "logging": logging}).pretrain_config()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grow", type=int, nargs="+", default=[0, 150], help="grow_iters values to compare")
    parser.add_argument("--iters", type=int, default=300, help="pretraining steps (all recipes)")
    args = parser.parse_args()
    rows: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for grow in args.grow:
            cfg = pretrain_config(args.iters, grow)
            start = time.perf_counter()
            rows[f"supernet, grow_iters {grow}"] = run_stage(pretrain_job(cfg), cfg, Path(tmp) / f"grow{grow}",
                                                             resume=False)["top1"]
            seconds[f"supernet, grow_iters {grow}"] = time.perf_counter() - start
        cfg = pretrain_config(args.iters, 0)
        archs = eval_archs(get_space(cfg.space, cfg.width_mult), cfg.eval, cfg.seed, cfg.sampling)
        alone = {}
        for arch in archs:
            start = time.perf_counter()
            alone.update(run_stage(pretrain_job(cfg, arch), cfg, Path(tmp) / arch_to_str(arch), resume=False)["top1"])
            seconds[f"alone {arch_to_str(arch)}"] = time.perf_counter() - start
    names = [arch_to_str(a) for a in archs]
    print(f"\ntop-1 after {args.iters} steps (in %; supernet / standalone in brackets)\n")
    print("| recipe | " + " | ".join(f"`{n}`" for n in names) + " |")
    print("|---|" + "---:|" * len(names))
    for recipe, top1 in rows.items():
        print(f"| {recipe} | " + " | ".join(f"{100 * top1[n]:.1f} ({top1[n] / alone[n]:.2f})" for n in names) + " |")
    print("| standalone, each path alone | " + " | ".join(f"{100 * alone[n]:.1f}" for n in names) + " |")
    print("\nseconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
