"""Is a supernet's ranking a property of the architectures or of one training run? Several rank checks
of the same architectures, each scoring another supernet (other recipes, or one recipe with other
seeds), against one or more ground truths (rank checks whose retrainings were made with other
recipes). Prints Kendall's tau of each supernet's fitness with each ground truth, tau between the
fitness of every pair of supernets, the tau of their mean rank (an ensemble of supernets), and the
tau of each ranking with the number of blocks of one choice.

    .venv/bin/python benchmarks/supernet_agreement.py --truth short=RUN/rc --truth long=RUN/rc_long \\
        --supernet "seed 0=RUN/rc" --supernet "seed 1=RUN/rc_seed1" ...

Each ``RUN/...`` is a ``detnas rank-check`` output folder (its ``rank_check.json``); rescore one
supernet on another's retrainings with ``detnas rank-check --resume --supernet ...`` into a folder
whose ``nets`` links to the retrainings.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from _common import print_choice_count_taus
from detnas.config.runs import RANK_CHECK_FILE
from detnas.stages.rank_stats import bootstrap_ci, kendall_tau


def named_folder(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=FOLDER, got {text!r}")
    return name, Path(folder)


def read_archs(folder: Path) -> list[dict]:
    return json.loads((folder / RANK_CHECK_FILE).read_text())["archs"]


def mean_rank(rankings: list[dict[str, float]], archs: list[str]) -> dict[str, float]:
    """Each architecture's rank (1 = lowest score) averaged over the rankings: an ensemble that no one
    supernet's scale dominates."""
    ranks = [np.argsort(np.argsort([r[a] for a in archs])) for r in rankings]
    return dict(zip(archs, np.mean(ranks, axis=0).tolist()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--truth", type=named_folder, action="append", required=True,
                        help="NAME=rank-check folder whose standalone mAPs (seed mean) are a ground truth")
    parser.add_argument("--supernet", type=named_folder, action="append", required=True,
                        help="NAME=rank-check folder whose supernet fitness is one supernet's ranking")
    parser.add_argument("--bootstrap", type=int, default=2000)
    args = parser.parse_args()

    truths = {name: {r["arch"]: r["standalone_map"] for r in read_archs(f)} for name, f in args.truth}
    ceilings = {}
    for name, f in args.truth:
        rows = read_archs(f)
        if min(len(r["standalone_maps"]) for r in rows) >= 2:
            ceilings[name] = kendall_tau([r["standalone_maps"][0] for r in rows], [r["standalone_maps"][1] for r in rows])
    fitness = {name: {r["arch"]: r["supernet_map"] for r in read_archs(f)} for name, f in args.supernet}
    archs = sorted(set.intersection(*(set(r) for r in [*truths.values(), *fitness.values()])))
    if len(fitness) > 1:
        fitness["mean rank of all"] = mean_rank(list(fitness.values()), archs)
    print(f"{len(archs)} architectures common to every rank check\n")

    print("Kendall tau of each supernet's fitness with each ground truth (95% bootstrap interval)\n")
    print("| supernet | " + " | ".join(truths) + " |")
    print("|---|" + "---:|" * len(truths))
    for name, scores in fitness.items():
        cells = []
        for truth in truths.values():
            x, y = [scores[a] for a in archs], [truth[a] for a in archs]
            lo, hi = bootstrap_ci(kendall_tau, x, y, args.bootstrap, seed=0)
            cells.append(f"{kendall_tau(x, y):.2f} ({lo:.2f} to {hi:.2f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if ceilings:
        print("\ntau between two seeds of standalone training (not a ceiling for the seed mean: see rank_stats): "
              + ", ".join(f"{n} {t:.2f}" for n, t in ceilings.items()))

    print("\nKendall tau between the fitness of two supernets\n")
    names = [n for n in fitness if n != "mean rank of all"]
    for a, b in itertools.combinations(names, 2):
        print(f"- {a} / {b}: {kendall_tau([fitness[a][x] for x in archs], [fitness[b][x] for x in archs]):.2f}")

    print_choice_count_taus({**fitness, **truths}, archs)

if __name__ == "__main__":
    main()
