"""The single-objective evolution against the Pareto strategy on the demo, with the same budget.

Both searches run the demo's search settings (population, generations, top-k, mutations, crossovers,
body-FLOPs budget, seed) on one finetuned demo supernet with the demo's fitness; only
``search.strategy`` differs. A candidate's fitness does not depend on the search that asks for it
(the same recalibration images, evaluation in eval mode), so the two share a cache of fitnesses: that
saves time and changes no number. Prints each search's best architecture under the budget, its front
(mAP against body FLOPs) and the front's hypervolume (the area it dominates above mAP 0 and left of
the budget: larger is a better spread of trade-offs).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pareto_vs_evolution.py --supernet RUN/finetune [--generations 8 --report-at 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import add_supernet_args, default_supernet, demo_settings, max_flops, prepare_supernet
from detnas.model.space import arch_to_str
from detnas.search.engine import run_search
from detnas.search.pareto import front_records
from detnas.stages.search import SupernetEvaluator


def hypervolume(front: list[dict], budget: float) -> float:
    """Area dominated by ``front`` (sorted by increasing FLOPs) in (FLOPs <= budget, mAP >= 0), in
    mAP x M FLOPs."""
    area, below = 0.0, 0.0
    for p in front:
        if p["map"] > below:
            area += (budget - p["flops"]) / 1e6 * (p["map"] - below)
            below = p["map"]
    return area


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_supernet_args(ap)
    ap.add_argument("--generations", type=int, default=None, help="default: the demo's")
    ap.add_argument("--report-at", type=int, nargs="*", default=[],
                    help="also the result after these many generations (the first generations of a longer search "
                         "are those of a shorter one)")
    ap.add_argument("--out", type=Path, default=None, help="where the two searches write (default: a temp folder)")
    args = ap.parse_args()

    demo = demo_settings()
    supernet = args.supernet or prepare_supernet(default_supernet(args.finetune_iters),
                                                 args.finetune_iters)
    evaluator = SupernetEvaluator(supernet, demo.fitness, workers=0)  # the images decoded in this process
    cache: dict[str, dict] = {}
    calls = {"fitness": 0}

    def evaluate(arch):
        key = arch_to_str(arch)
        if key not in cache:
            calls["fitness"] += 1
            cache[key] = evaluator(arch)
        return cache[key]

    budget = max_flops(demo)
    search_cfg = demo.search if args.generations is None else demo.search.model_copy(
        update={"generations": args.generations})
    out = args.out or Path(tempfile.mkdtemp(prefix="pareto-vs-evolution-"))
    results = {}
    for strategy in ("evolution", "pareto"):
        t0 = time.perf_counter()
        cfg = search_cfg.model_copy(update={"strategy": strategy})
        results[strategy] = run_search(evaluator.space, cfg, evaluate, out / strategy, progress=False)
        print(f"{strategy}: {len(results[strategy].history)} evaluated in {time.perf_counter() - t0:.0f} s",
              flush=True)
    print(f"\n{calls['fitness']} distinct fitness evaluations in all; supernet {supernet}; "
          f"{search_cfg.population} x {search_cfg.generations} candidates per search, top-k {search_cfg.topk}, "
          f"body FLOPs <= {budget / 1e6:.0f}M, seed {search_cfg.seed}\n")
    print("| search | evaluated | best under the budget (mAP %, body FLOPs) | front: points (FLOPs M: mAP %) "
          "| hypervolume |")
    print("|---|---:|---|---|---:|")
    for generations in sorted({*args.report_at, search_cfg.generations}):
        for strategy, res in results.items():
            history = [r for r in res.history if r["generation"] < generations]
            front = front_records(history, "flops")
            points = ", ".join(f"{p['flops'] / 1e6:.0f}: {100 * p['map']:.2f}" for p in front)
            b = min(history, key=lambda r: (-r["map"], r["arch"]))
            print(f"| {strategy} | {len(history)} | `{b['arch']}` {100 * b['map']:.2f}, {b['flops'] / 1e6:.1f}M "
                  f"| {len(front)}: {points} | {hypervolume(front, budget):.3f} |")
    print(f"\nsearch folders: {out}")


if __name__ == "__main__":
    main()
