"""Do supernets trained alike agree? One supernet recipe trained with several seeds (the demo's
pretraining and finetuning, each seed's own run), every supernet scoring the same architectures with
the search's fitness (search-split mAP after BN recalibration); then Kendall's tau between every pair
of seeds, and between ensembles (the mean fitness of one half of them against the other half's). No
retraining: this is the cheap loop for supernet recipes.

    .venv/bin/python benchmarks/supernet_seeds.py --recipe grown --seeds 4 --out /tmp/agree
    .venv/bin/python benchmarks/supernet_seeds.py --recipe fair --seeds 4 --out /tmp/agree

Recipes (on top of the packaged demo config): ``grown`` is the demo's own; ``fair`` adds FairNAS's
strict fairness (``sampling.fair``); ``authors`` trains path-wise from the start (no growth, the
authors' recipe); ``long`` doubles both schedules; ``large`` finetunes and scores at 192 px instead
of 128 (the c5 map 6x6 instead of 4x4, anchors scaled alike), about 1.9x the demo's supernet compute;
``bf16`` is the demo's recipe with bf16 autocast in every stage (training and scoring);
``fewshot`` (Zhao et al. 2021) splits each ``grown`` supernet on the first block's choice into 4
sub-supernets, each started from the whole supernet and finetuned a quarter of the finetuning's steps
more on its part of the space (the finetuning budget doubled in all), and scores an architecture on
the sub-supernet that holds it. Runs are kept in ``--out`` and reused: rerunning prints the table
again, and a new recipe adds its rows.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import numpy as np

from _common import demo_settings, max_flops, print_choice_count_taus
from detnas.config.runs import CHECKPOINT, FINETUNE_DIR, PRETRAIN_DIR, is_finished
from detnas.config.schema import PipelineConfig
from detnas.model.flops import sample_arch
from detnas.model.space import NUM_CHOICES, arch_to_str, get_space
from detnas.stages.jobs import finetune_job, pretrain_job, run_stage
from detnas.stages.search import SupernetEvaluator
from detnas.stages.supernet_agreement import pairwise_taus, split_half_taus


def recipe(demo: PipelineConfig, name: str) -> PipelineConfig:
    if name in ("grown", "fewshot"):
        return demo
    if name == "bf16":
        return demo.model_copy(update={"amp": "bf16"})
    if name == "fair":
        return demo.model_copy(update={"sampling": demo.sampling.model_copy(update={"fair": True})})
    if name == "authors":
        return demo.model_copy(update={"pretrain": demo.pretrain.model_copy(update={"grow_iters": 0})})
    if name == "large":
        side = 192
        detector = demo.detector.model_copy(update={
            "min_size": side, "max_size": side, "anchor_size": demo.detector.anchor_size * side // demo.detector.min_size})
        return demo.model_copy(update={"detector": detector})
    if name == "long":
        def doubled(schedule):
            return schedule.model_copy(update={"iters": 2 * schedule.iters,
                                               "milestones": [2 * m for m in schedule.milestones]})
        pretrain = demo.pretrain.model_copy(update={"train": doubled(demo.pretrain.train),
                                                    "grow_iters": 2 * demo.pretrain.grow_iters})
        return demo.model_copy(update={"pretrain": pretrain, "finetune": doubled(demo.finetune)})
    raise SystemExit(f"unknown recipe {name!r}: grown, fair, authors, long, large, fewshot or bf16")


def archs_to_score(demo: PipelineConfig, n: int) -> list[tuple]:
    """ShuffleNetV2 (all 3x3) and ``n - 1`` architectures drawn under the demo's budget (fixed seed)."""
    space = get_space(demo.space, demo.width_mult)
    rng = np.random.default_rng(2026)
    drawn = {(0,) * space.num_blocks}
    while len(drawn) < n:
        drawn.add(sample_arch(space, rng, None, max_flops(demo)))
    return sorted(drawn)


def train_supernet(cfg: PipelineConfig, run: Path) -> Path:
    """Pretraining (if the recipe has one) and finetuning of one supernet in ``run``; resumable."""
    pre_cfg, init = cfg.pretrain_config(), None
    if pre_cfg is not None:
        if not is_finished(run / PRETRAIN_DIR):
            run_stage(pretrain_job(pre_cfg), pre_cfg, run / PRETRAIN_DIR, resume=True)
        init = run / PRETRAIN_DIR / CHECKPOINT
    ft_cfg = cfg.finetune_config(init)
    ft_dir = run / FINETUNE_DIR
    if not is_finished(ft_dir):
        run_stage(finetune_job(ft_cfg, ft_dir), ft_cfg, ft_dir, resume=True)
    return ft_dir


def sub_supernets(cfg: PipelineConfig, supernet: Path, run: Path) -> list[Path]:
    """Few-shot: the finetuned ``supernet`` split on the first block's choice, each part finetuned on
    its own paths for a quarter of the finetuning's steps (a fresh warm-up, the same learning rate)."""
    schedule = cfg.finetune.model_copy(update={"iters": cfg.finetune.iters // NUM_CHOICES, "milestones": [],
                                               "warmup_iters": min(cfg.finetune.warmup_iters, 20)})
    parts = []
    for k in range(NUM_CHOICES):
        part = cfg.model_copy(update={"finetune": schedule,
                                      "sampling": cfg.sampling.model_copy(update={"prefix": [k]})})
        ft_cfg = part.finetune_config(supernet / CHECKPOINT)
        if not is_finished(run / f"part{k}"):
            run_stage(finetune_job(ft_cfg, run / f"part{k}"), ft_cfg, run / f"part{k}", resume=True)
        parts.append(run / f"part{k}")
    return parts


def fitness_of_seed(cfg: PipelineConfig, run: Path, archs: list[tuple], fewshot_of: Path | None = None
                    ) -> dict[str, float]:
    """Each architecture's fitness on the supernet trained in ``run``; with ``fewshot_of`` (the run of
    the whole supernet), on its sub-supernet in ``run``."""
    path = run / "fitness.json"
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    if fewshot_of is None:
        evaluator = SupernetEvaluator(train_supernet(cfg, run), cfg.fitness, workers=0, amp=cfg.amp)
        scores = {arch_to_str(a): evaluator(a)["map"] for a in archs}
    else:
        parts = [SupernetEvaluator(p, cfg.fitness, workers=0)
                 for p in sub_supernets(cfg, train_supernet(cfg, fewshot_of), run)]
        scores = {arch_to_str(a): parts[a[0]](a)["map"] for a in archs}
    path.write_text(json.dumps(scores, indent=1))
    print(f"{run}: trained and scored in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    return scores


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * sd:.1f}"


def print_quality(runs: dict[str, list[Path]], fitness: dict[str, list[list[float]]]) -> None:
    """How good each recipe's supernets are, as mean ± std over seeds: the evaluated paths' top-1 after
    pretraining, their AP after finetuning (search split), and the scored architectures' mean fitness."""
    print("\n| recipe | seeds | top-1 of the evaluated paths after pretraining (%) | their AP after finetuning "
          "(%) | mean fitness of the scored architectures (AP %) |")
    print("|---|---:|---:|---:|---:|")
    for name, folders in runs.items():
        top1, ap = [], []
        for run in folders:
            pre, ft = run / PRETRAIN_DIR / "metrics.json", run / FINETUNE_DIR / "metrics.json"
            if pre.exists():
                top1.append(statistics.fmean(json.loads(pre.read_text())["top1"].values()))
            if ft.exists():
                ap.append(statistics.fmean(m["AP"] for m in json.loads(ft.read_text())["map"].values()))
        cells = [_mean_sd(v) if v else "-" for v in (top1, ap, [statistics.fmean(f) for f in fitness[name]])]
        print(f"| {name} | {len(folders)} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", action="append", required=True, help="grown, fair, authors, long, large, fewshot or bf16 (repeatable)")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--archs", type=int, default=12, help="architectures scored by every supernet")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    demo = demo_settings()
    demo = demo.model_copy(update={"logging": demo.logging.model_copy(update={"progress": False, "log_every": 50})})
    archs = archs_to_score(demo, args.archs)
    names = [arch_to_str(a) for a in archs]
    print("| recipe | seeds | fitness range (AP %) | tau between seeds: mean ± std [min, max] | tau between "
          "halves (2-supernet ensembles of 4 seeds) |")
    print("|---|---:|---:|---:|---:|")
    rankings, runs, fitnesses = {}, {}, {}
    for name in args.recipe:
        cfg = recipe(demo, name)
        scores = [fitness_of_seed(cfg.model_copy(update={"seed": s}), args.out / name / f"seed{s}", archs,
                                  args.out / "grown" / f"seed{s}" if name == "fewshot" else None)
                  for s in range(args.seeds)]
        fitness = fitnesses[name] = [[score[x] for x in names] for score in scores]
        runs[name] = [args.out / name / f"seed{s}" for s in range(args.seeds)]
        matrix = pairwise_taus(fitness)
        single = [matrix[i][j] for i, j in itertools.combinations(range(len(scores)), 2)]
        ensemble = split_half_taus(fitness) if len(scores) >= 4 else []
        lo = min(min(s.values()) for s in scores)
        hi = max(max(s.values()) for s in scores)
        ens = (f"{statistics.fmean(ensemble):.2f} [{min(ensemble):.2f}, {max(ensemble):.2f}]" if ensemble else "-")
        print(f"| {name} | {len(scores)} | {100 * lo:.1f}-{100 * hi:.1f} | {statistics.fmean(single):.2f} ± "
              f"{statistics.stdev(single) if len(single) > 1 else 0:.2f} [{min(single):.2f}, {max(single):.2f}] "
              f"| {ens} |", flush=True)
        rankings.update({f"{name} {s}": score for s, score in enumerate(scores)})
    print_choice_count_taus(rankings, names)
    print_quality(runs, fitnesses)


if __name__ == "__main__":
    main()
