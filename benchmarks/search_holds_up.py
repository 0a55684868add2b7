"""Does the search's choice hold up across supernets? For each supernet of a recipe (trained and kept by
``supernet_seeds.py`` in ``--out/<recipe>/seed<s>``), the demo's evolution search on it, then the searched
architecture and the ShuffleNetV2 baseline deployed the demo's way (``retrain.inherit``: each started from
its path in that supernet and finetuned alone, ``--deploy-seeds`` seeds each), scored on the test split.

One demo run is one draw of this: its verdict flipped with float rounding (BENCHMARKS.md). Here each
supernet seed gives its own searched network and its own lead over the baseline, so the spread of the
lead over supernets says whether the recipe's choice holds up, or only one training run's. With
``--random``, the demo's random search (the same number of candidates) is run and deployed too: a lead
that the random search's best has as well is the search space's, not the evolution's.

    .venv/bin/python benchmarks/search_holds_up.py --recipe large --supernets 4 --out /tmp/agree
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from _common import demo_settings
from detnas.config.runs import BEST_FILE
from detnas.model.space import CHOICE_NAMES, get_space, parse_arch
from detnas.stages.retrain import run_retrain
from detnas.stages.search import run_search_stage
from supernet_seeds import recipe, train_supernet


def deployed_ap(cfg, supernet: Path, arch: str, seeds: int, out: Path) -> list[float]:
    """Test AP of ``arch`` deployed from ``supernet`` with ``seeds`` seeds (the demo's retraining)."""
    space = get_space(cfg.space, cfg.width_mult)
    rt = cfg.retrain_config(supernet)
    return [run_retrain(parse_arch(arch, space), rt.model_copy(update={"seed": cfg.seed + k}), out / f"seed{k}",
                        resume=True, pretrain=False)["test"]["AP"] for k in range(seeds)]


def _mean_sd(values: list[float]) -> str:
    return f"{100 * statistics.fmean(values):.2f} ± {100 * (statistics.stdev(values) if len(values) > 1 else 0):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", required=True, help="a recipe of supernet_seeds.py (grown, large, ...)")
    ap.add_argument("--supernets", type=int, default=4, help="supernet seeds 0 .. N-1")
    ap.add_argument("--deploy-seeds", type=int, default=3, help="deployments of each network per supernet")
    ap.add_argument("--random", action="store_true", help="deploy the random search's best too")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    demo = demo_settings()
    demo = demo.model_copy(update={"logging": demo.logging.model_copy(update={"progress": False, "log_every": 50})})
    rows, leads, random_leads = [], [], []
    for s in range(args.supernets):
        cfg = recipe(demo, args.recipe).model_copy(update={"seed": s})
        run = args.out / args.recipe / f"seed{s}"
        t0 = time.perf_counter()
        supernet = train_supernet(cfg, run)
        found = {}
        for strategy, folder in (("evolution", "search"), ("random", "random_search"))[:1 + args.random]:
            run_search_stage(cfg.search_config(supernet, strategy), run / folder, resume=True)
            found[strategy] = json.loads((run / folder / BEST_FILE).read_text())
        best = found["evolution"]
        baseline = "0" * len(best["arch"])
        fitness = json.loads((run / "fitness.json").read_text()) if (run / "fitness.json").exists() else {}
        searched_ap = deployed_ap(cfg, supernet, best["arch"], args.deploy_seeds, run / "deploy" / "searched")
        baseline_ap = deployed_ap(cfg, supernet, baseline, args.deploy_seeds, run / "deploy" / "baseline")
        lead = statistics.fmean(searched_ap) - statistics.fmean(baseline_ap)
        leads.append(lead)
        counts = " / ".join(str(best["arch"].count(str(c))) for c in range(len(CHOICE_NAMES)))
        base_fit = fitness.get(baseline)
        row = (f"| {s} | `{best['arch']}` ({counts}) | {100 * best['map']:.1f} | "
               f"{'-' if base_fit is None else f'{100 * base_fit:.1f}'} | {_mean_sd(searched_ap)} | "
               f"{_mean_sd(baseline_ap)} | {100 * lead:+.2f} |")
        if args.random:
            rand = found["random"]
            random_ap = deployed_ap(cfg, supernet, rand["arch"], args.deploy_seeds, run / "deploy" / "random")
            random_leads.append(statistics.fmean(searched_ap) - statistics.fmean(random_ap))
            row += (f" `{rand['arch']}` | {100 * rand['map']:.1f} | {_mean_sd(random_ap)} | "
                    f"{100 * random_leads[-1]:+.2f} |")
        rows.append(row)
        print(f"{run}: searched and deployed in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    print(f"\nrecipe {args.recipe}, {args.deploy_seeds} deployments per network, test AP %\n")
    print("| supernet seed | searched architecture (blocks of " + " / ".join(CHOICE_NAMES) + ") | its search mAP | "
          "baseline's search mAP | searched, test AP | baseline, test AP | lead |" +
          (" random search's best | its search mAP | its test AP | searched's lead over it |" if args.random else ""))
    print("|---:|---|---:|---:|---:|---:|---:|" + ("---|---:|---:|---:|" if args.random else ""))
    print("\n".join(rows))
    print()
    for what, values in (("the baseline", leads), ("the random search's best", random_leads)):
        if values:
            print(f"lead of the searched network over {what}, over {len(values)} supernets: mean "
                  f"{100 * statistics.fmean(values):+.2f} AP, std "
                  f"{100 * (statistics.stdev(values) if len(values) > 1 else 0):.2f}, range {100 * min(values):+.2f} "
                  f"to {100 * max(values):+.2f}; ahead on {sum(v > 0 for v in values)} of {len(values)}")


if __name__ == "__main__":
    main()
