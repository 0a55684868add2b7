"""Deploying the found network: inherited supernet weights + a short finetuning, against the paper's
retraining from random weights, on one finished pipeline run (e.g. ``detnas demo --out runs/demo``).

For the searched, random-search and baseline architectures of the run, on its test split:
- supernet weights: the path extracted from the finetuned supernet, BN recalibrated, no training;
- inherited: the same start, finetuned alone with the run's retraining schedule (``retrain.inherit``),
  ``--seeds`` seeds, run here;
- retrained: the run's own retrainings (random weights, classification pretraining, then detection),
  read from its ``retrain/`` folders.
Each cell is test AP (%) as mean ± standard deviation over seeds, with the minutes per training.

    .venv/bin/python benchmarks/inherit_vs_retrain.py --run runs/demo --seeds 3
    .venv/bin/python benchmarks/inherit_vs_retrain.py --run runs/demo --iters 60 --out runs/demo/inherit60
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import yaml

from detnas.config.runs import BEST_FILE, FINETUNE_DIR, PIPELINE_FILE, RESULT_FILE, SEARCH_DIRS, retrain_dir
from detnas.config.schema import PipelineConfig
from detnas.data.detection import collate
from detnas.data.loading import CachedBatches
from detnas.data.sources import load_detection
from detnas.data.transforms import DetectionTransform
from detnas.model.evaluate import evaluate_detection_path
from detnas.model.space import arch_to_str, get_space, resolve_arch
from detnas.stages.retrain import run_retrain
from detnas.stages.search import SupernetEvaluator
from detnas.strict import validate

NAMES = ("searched", "random", "baseline")


def candidates(run: Path, cfg: PipelineConfig) -> dict[str, tuple]:
    space = get_space(cfg.space, cfg.width_mult)
    found = {name: resolve_arch(str(run / SEARCH_DIRS[s] / BEST_FILE), space)[0]
             for name, s in (("searched", "evolution"), ("random", "random")) if (run / SEARCH_DIRS[s]).is_dir()}
    return {**found, "baseline": (0,) * space.num_blocks}


def supernet_test_ap(run: Path, cfg: PipelineConfig, archs: dict[str, tuple]) -> dict[str, float]:
    """Each path with the supernet's weights, BN recalibrated as the search does, on the test split."""
    evaluator = SupernetEvaluator(run / FINETUNE_DIR, cfg.fitness, workers=0)
    det = cfg.detector
    test = load_detection(cfg.detection.test).with_transform(DetectionTransform(det.min_size, det.max_size, False))
    batches, gt = CachedBatches(test, cfg.fitness.batch_size, collate), test.to_coco()
    return {name: evaluate_detection_path(evaluator.detector, arch, len(evaluator.classes), det, evaluator.recalib,
                                          batches, gt, cfg.fitness.recalib_mode)["AP"]
            for name, arch in archs.items()}


def scaled(schedule, iters: int | None, lr: float | None):
    """``schedule`` shortened (or lengthened) to ``iters`` steps, its warm-up scaled alike, at ``lr``."""
    update = {} if lr is None else {"lr": lr}
    if iters is not None:
        update |= {"iters": iters, "warmup_iters": round(schedule.warmup_iters * iters / schedule.iters)}
    return schedule.model_copy(update=update)


def inherited(run: Path, cfg: PipelineConfig, archs: dict[str, tuple], seeds: int, out: Path) -> dict:
    """``{name: [(test AP, minutes), ...]}`` of the inherited-and-finetuned networks, ``seeds`` each."""
    recipe = cfg.retrain.model_copy(update={"inherit": True, "pretrain": None})
    rt_cfg = cfg.model_copy(update={"retrain": recipe}).retrain_config(run / FINETUNE_DIR)
    results = {}
    for name, arch in archs.items():
        for k in range(seeds):
            t0 = time.perf_counter()
            r = run_retrain(arch, rt_cfg.model_copy(update={"seed": cfg.seed + k}), out / name / f"seed{k}",
                            resume=True)
            results.setdefault(name, []).append((r["test"]["AP"], (time.perf_counter() - t0) / 60))
    return results


def retrained(run: Path, cfg: PipelineConfig) -> dict:
    """The run's own retrainings: ``{name: [(test AP, minutes), ...]}`` (minutes from pipeline.json)."""
    seconds = json.loads((run / PIPELINE_FILE).read_text())["seconds"]
    out = {}
    for name in NAMES:
        for k in range(cfg.retrain.seeds):
            path = retrain_dir(run, name, k) / RESULT_FILE
            if path.exists():
                label = name if k == 0 else f"{name}, seed {cfg.seed + k}"
                minutes = seconds.get(f"retrain ({label})", float("nan")) / 60
                out.setdefault(name, []).append((json.loads(path.read_text())["test"]["AP"], minutes))
    return out


def cell(values: list[tuple[float, float]] | None) -> str:
    if not values:
        return "-"
    aps = [100 * ap for ap, _ in values]
    sd = statistics.stdev(aps) if len(aps) > 1 else 0.0
    return f"{statistics.fmean(aps):.1f} ± {sd:.1f} ({len(aps)}; {statistics.fmean(m for _, m in values):.1f} min)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished pipeline run folder (config.yaml, finetune/)")
    ap.add_argument("--seeds", type=int, default=3, help="inherited finetunings per architecture")
    ap.add_argument("--out", type=Path, default=None, help="where the inherited runs go (default: RUN/inherit)")
    ap.add_argument("--iters", type=int, default=None, help="inherited finetuning steps (default: the run's "
                    "retrain.train; its warm-up scaled alike)")
    ap.add_argument("--lr", type=float, default=None, help="inherited finetuning lr (default: the run's)")
    ap.add_argument("--only", action="append", choices=NAMES, help="these networks only (repeatable)")
    args = ap.parse_args()
    cfg = validate(PipelineConfig, yaml.safe_load((args.run / "config.yaml").read_text()), args.run / "config.yaml")
    retrain = cfg.retrain.model_copy(update={"train": scaled(cfg.retrain.train, args.iters, args.lr)})
    scratch = retrained(args.run, cfg)
    cfg = cfg.model_copy(update={"retrain": retrain})
    archs = {name: arch for name, arch in candidates(args.run, cfg).items() if not args.only or name in args.only}
    own = supernet_test_ap(args.run, cfg, archs)
    inh = inherited(args.run, cfg, archs, args.seeds, args.out or args.run / "inherit")
    schedule = cfg.retrain.train
    print(f"\nTest AP (%), mean ± std (seeds; minutes per training). Inherited: {schedule.iters} detection steps, "
          f"lr {schedule.lr:g}, from the supernet in {args.run / FINETUNE_DIR}.\n")
    print("| network | architecture | supernet weights, no training | inherited + finetuned | retrained from random |")
    print("|---|---|---:|---:|---:|")
    for name, arch in archs.items():
        print(f"| {name} | `{arch_to_str(arch)}` | {100 * own[name]:.1f} | {cell(inh.get(name))} "
              f"| {cell(scratch.get(name))} |")


if __name__ == "__main__":
    main()
